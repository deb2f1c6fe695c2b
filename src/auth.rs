//! Who may speak to whom: the cluster secret and the admin token.
//!
//! - **The cluster secret** authenticates kvlab's own traffic: heartbeats,
//!   replication, snapshots, catch-up, the coordinator's batches, node
//!   `/admin/*` hooks, `/node-died`. Every process of a cluster holds the same
//!   secret ([`install`], once, at start); the shared HTTP client
//!   ([`crate::http::client`]) sends it in [`HEADER_SECRET`] on every request,
//!   and [`guard`] refuses an [`Access::Internal`] route without it (401).
//!   The secret travels to child processes in the environment
//!   ([`ENV_SECRET`]), never on a command line (which `ps` shows to everyone).
//! - **The lab's routes stay open on loopback** ([`Access::Open`] and
//!   [`Access::Admin`]): students `curl` `/kill`, `/spawn`, `/write`, a node's
//!   `/data/{key}`, exactly as docs/api.md gives them.
//! - **Off loopback, admin needs a token.** A coordinator bound to a
//!   non-loopback address answers [`Access::Admin`] routes only to a request
//!   with `Authorization: Bearer <token>` (or the cluster secret, which is how
//!   the registry's auto-spawn gets through).
//!
//! - **Web pages press no buttons.** A page in the user's browser can send
//!   "simple" requests to any address, and a DNS-rebound name can reach
//!   loopback. So [`guard`] refuses, before any rule, a state-changing
//!   request (any method but GET and HEAD) or an admin one that comes from a
//!   page of another origin (`Origin` not this server's: 403), that names
//!   this server by a name a rebinding could have pointed here (a loopback
//!   client's `Host` not an IP address or `localhost`, without credentials:
//!   403), or whose body is not JSON (415: a page can send `text/plain` or a
//!   form without asking first, never `application/json`). curl, scripts and
//!   kvlab's own clients send no `Origin` and name the server as they reach
//!   it, so the lab's commands work as before ([`browser_refusal`]).
//!
//! Which route is which is decided in this file alone ([`node_access`],
//! [`registry_access`], [`coordinator_access`], [`gateway_access`]), by the
//! route's template (the path as registered, not as sent, so no spelling of a
//! path slips through), and anything not named is open. Invariant: a process
//! with no secret installed serves no internal route (it fails closed).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

/// The header every internal request carries the cluster secret in.
pub const HEADER_SECRET: &str = "x-kvlab-secret";
/// The environment variable a process reads its cluster secret from.
pub const ENV_SECRET: &str = "KVLAB_CLUSTER_SECRET";
/// Shorter secrets are refused: they could be guessed.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is {len} characters long; it must have at least {MIN_SECRET_LEN} (for example 64 random hex digits)")]
    TooShort { what: String, len: usize },
    #[error("{what} may only hold printable ASCII without spaces (it is sent in an HTTP header)")]
    NotPrintable { what: String },
    #[error("refusing to use {path}: {reason}; remove it and start again")]
    NotPrivate { path: PathBuf, reason: String },
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

/// A shared secret: the cluster secret or an admin token. Its `Debug` never
/// shows the value, so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// 32 random bytes from the operating system, as 64 hex digits.
    pub fn random() -> Result<Secret, AuthError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Secret(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A secret given by a person (a file, the environment): surrounding
    /// whitespace is dropped, and it must be long and printable.
    pub fn parse(text: &str, what: &str) -> Result<Secret, AuthError> {
        let text = text.trim();
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::NotPrintable { what: what.into() });
        }
        if text.len() < MIN_SECRET_LEN {
            return Err(AuthError::TooShort {
                what: what.into(),
                len: text.len(),
            });
        }
        Ok(Secret(text.to_string()))
    }

    /// The value, for the header or the environment of a child.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Does `given` equal the secret? In constant time: how long the
    /// comparison takes says nothing about how much of a guess was right.
    pub fn matches(&self, given: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        let diff = ours
            .iter()
            .zip(given)
            .fold(ours.len() ^ given.len(), |acc, (a, b)| {
                acc | usize::from(a ^ b)
            });
        std::hint::black_box(diff) == 0
    }
}

/// `--cluster-secret-file`, flattened into the flags of every component
/// that takes part in the cluster's internal traffic.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecretArgs {
    /// Read the cluster secret (which authenticates kvlab's internal
    /// requests) from this file, instead of $KVLAB_CLUSTER_SECRET or the default.
    #[arg(long, value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,
}

/// Where a process gets its secret when neither the flag nor the
/// environment gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// A new random secret: `assess` and `check` start every
    /// process of their cluster themselves and hand it down.
    Fresh,
    /// The user's own secret file, [`user_secret_file`], created on first
    /// use: components started one by one (the course's way) all find it
    /// without being told.
    UserFile,
    /// The cluster's own secret file, created on first use and kept
    /// (`kvlab up`: [`CLUSTER_SECRET_DIR`] in the coordinator's state
    /// directory). The nodes outlive a killed `up` (see
    /// `coordinator::adopt`); the next `up` must speak to them with the
    /// secret they were started with, or it could not adopt them.
    ClusterFile(PathBuf),
}

/// The private folder, in a `kvlab up` cluster's state directory, that
/// holds its secret (`cluster-secret`); `--fresh` keeps it.
pub const CLUSTER_SECRET_DIR: &str = ".secret";

/// The secret this process should use: `--cluster-secret-file`, else
/// `$KVLAB_CLUSTER_SECRET`, else the fallback.
pub fn load(args: &SecretArgs, fallback: Fallback) -> Result<Secret, AuthError> {
    if let Some(path) = &args.cluster_secret_file {
        return read_secret_file(path);
    }
    if let Ok(value) = std::env::var(ENV_SECRET) {
        return Secret::parse(&value, &format!("${ENV_SECRET}"));
    }
    match fallback {
        Fallback::Fresh => Secret::random(),
        Fallback::UserFile => user_secret(&user_secret_file()),
        Fallback::ClusterFile(path) => {
            // The folder's parent (the state directory) may not exist yet;
            // the private folder itself is made by `user_secret`.
            if let Some(state_dir) = path.parent().and_then(Path::parent) {
                std::fs::create_dir_all(state_dir).map_err(|source| AuthError::Create {
                    path: state_dir.into(),
                    source,
                })?;
            }
            user_secret(&path)
        }
    }
}

/// `$TMPDIR/kvlab-<uid>/cluster-secret`: one per user and temporary
/// directory, in a folder only that user may enter (as tmux does for its
/// sockets).
pub fn user_secret_file() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir()
        .join(format!("kvlab-{uid}"))
        .join("cluster-secret")
}

/// [`load`], then [`install`]: what each component does first thing.
pub fn load_and_install(args: &SecretArgs, fallback: Fallback) -> Result<(), AuthError> {
    install(load(args, fallback)?);
    Ok(())
}

fn read_secret_file(path: &Path) -> Result<Secret, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.into(),
        source,
    })?;
    Secret::parse(&text, &path.display().to_string())
}

/// Reads the user's secret file, creating it (and its private folder) with
/// a random secret if there is none yet. Two processes starting at once
/// agree: the file appears whole or not at all (written aside, then
/// hard-linked into place, which fails if another got there first).
fn user_secret(path: &Path) -> Result<Secret, AuthError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let created = std::fs::DirBuilder::new().mode(0o700).create(dir);
    if let Err(source) = created {
        if source.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(AuthError::Create {
                path: dir.into(),
                source,
            });
        }
    }
    check_private(dir, true)?;
    if path.exists() {
        check_private(path, false)?;
        return read_secret_file(path);
    }
    let secret = Secret::random()?;
    let aside = dir.join(format!(".cluster-secret-{}", std::process::id()));
    // Left behind by an earlier process with our pid that died right here.
    let _ = std::fs::remove_file(&aside);
    let create_err = |source| AuthError::Create {
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .map_err(create_err)?;
    file.write_all(secret.expose().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(create_err)?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_secret_file(path),
        Err(source) => Err(AuthError::Create {
            path: path.into(),
            source,
        }),
    }
}

/// A secret's file or folder must be this user's, not a link, and closed to
/// everyone else: in a shared temporary directory another user could have
/// made it first, to know (or choose) the secret.
fn check_private(path: &Path, is_dir: bool) -> Result<(), AuthError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).map_err(|source| AuthError::Read {
        path: path.into(),
        source,
    })?;
    let refuse = |reason: String| AuthError::NotPrivate {
        path: path.into(),
        reason,
    };
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() || meta.is_dir() != is_dir {
        return Err(refuse("it is not a plain file or folder".into()));
    }
    if meta.uid() != uid {
        return Err(refuse(format!(
            "it belongs to uid {}, not to you",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "others may access it (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

static CLUSTER_SECRET: OnceLock<Secret> = OnceLock::new();

/// Makes `secret` this process's cluster secret. A process belongs to one
/// cluster: the first secret installed stays (a second call with another is
/// ignored, and said so in the log).
pub fn install(secret: Secret) {
    if let Err(other) = CLUSTER_SECRET.set(secret) {
        if Some(&other) != CLUSTER_SECRET.get() {
            tracing::warn!("a cluster secret is already installed; keeping the first one");
        }
    }
}

/// This process's cluster secret, if one was installed.
pub fn installed() -> Option<&'static Secret> {
    CLUSTER_SECRET.get()
}

/// Does the request carry this process's cluster secret?
pub fn carries_secret(headers: &HeaderMap) -> bool {
    match (installed(), headers.get(HEADER_SECRET)) {
        (Some(secret), Some(given)) => secret.matches(given.as_bytes()),
        _ => false,
    }
}

/// `--admin-token-file`: for the coordinator (alone or in `kvlab up`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminArgs {
    /// Require this admin token (`Authorization: Bearer <token>`) for
    /// /kill, /spawn, /catchup and /admin/*. Bound off loopback without it,
    /// a token is generated and printed.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
}

/// The admin token a coordinator bound to `host` requires: the file's if
/// given; else, off loopback, a new random one; else (loopback) none, and
/// admin routes stay open as the lab has them.
pub fn admin_token(host: IpAddr, args: &AdminArgs) -> Result<Option<Secret>, AuthError> {
    if let Some(path) = &args.admin_token_file {
        return read_secret_file(path).map(Some);
    }
    if host.is_loopback() {
        return Ok(None);
    }
    Secret::random().map(Some)
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can connect: the lab's own routes.
    Open,
    /// The cluster secret: kvlab's processes talking among themselves.
    Internal,
    /// Open on loopback; off loopback the admin token (or the secret).
    Admin,
}

/// A node's routes: replication, batches, membership and fault hooks are
/// the cluster's own; reads, stats, health and `POST /data` are the lab's.
pub fn node_access(_method: &Method, route: &str) -> Access {
    let internal = ["/batch/", "/replicate", "/replication/", "/admin/", "/wire"];
    if internal.iter().any(|p| route.starts_with(p)) {
        Access::Internal
    } else {
        Access::Open
    }
}

/// The registry's: heartbeats and deregistrations come from nodes only,
/// `/forget` and `/missing` from the coordinator only.
pub fn registry_access(_method: &Method, route: &str) -> Access {
    match route {
        "/heartbeat" | "/deregister" | "/forget" | "/missing" => Access::Internal,
        _ => Access::Open,
    }
}

/// The coordinator's: the registry's notices are internal; the membership
/// and fault actions a student curls (and the live view's buttons) are admin.
pub fn coordinator_access(_method: &Method, route: &str) -> Access {
    match route {
        // A node that joins becomes a member: it must hold the secret.
        "/node-died" | "/node-revived" | "/join" => Access::Internal,
        "/spawn" | "/kill/{node_id}" | "/catchup" => Access::Admin,
        r if r.starts_with("/admin/") || r.starts_with("/ui/pause/") => Access::Admin,
        _ => Access::Open,
    }
}

/// The gateway's: every route is the lab's (it forwards no admin route);
/// the guard still keeps web pages from writing through it.
pub fn gateway_access(_method: &Method, _route: &str) -> Access {
    Access::Open
}

/// Which rule a router's routes follow.
pub type Rules = fn(&Method, &str) -> Access;

#[derive(Clone)]
struct Guard {
    rules: Rules,
    /// Shared: the guard is cloned for every request it checks.
    admin_token: Option<Arc<Secret>>,
}

/// Puts `router`'s routes behind `rules`. Apply it after the last route is
/// added: it covers the routes that exist when it is called.
pub fn guard<S>(router: Router<S>, rules: Rules, admin_token: Option<Secret>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let guard = Guard {
        rules,
        admin_token: admin_token.map(Arc::new),
    };
    router.route_layer(crate::gate::GateLayer(guard))
}

impl crate::gate::Gate for Guard {
    type Ticket = ();

    fn before(&self, req: &Request) -> Result<(), Response> {
        let route = match req.extensions().get::<MatchedPath>() {
            Some(m) => m.as_str(),
            None => req.uri().path(),
        };
        let access = (self.rules)(req.method(), route);
        let token = self.admin_token.as_deref();
        if let Some(refusal) = browser_refusal(req, access, token) {
            return Err(refusal);
        }
        let allowed = match access {
            Access::Open => Ok(()),
            Access::Internal => internal_allowed(req.headers()),
            Access::Admin => admin_allowed(req.headers(), token),
        };
        allowed.map_err(unauthorized)
    }
}

/// What a web page in the user's browser could send, refused: 403 for a
/// foreign `Origin` or an unexpected `Host`, 415 for a body that is not
/// JSON. Applies to state-changing requests (any method but GET and HEAD)
/// and admin routes; internal routes need the secret, which no page has.
fn browser_refusal(req: &Request, access: Access, token: Option<&Secret>) -> Option<Response> {
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
    if access == Access::Internal || !(changes_state || access == Access::Admin) {
        return None;
    }
    let headers = req.headers();
    // Borrowed (a `Cow`), as every check below: this runs for every write.
    let host = headers
        .get(axum::http::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()));
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        if !same_origin(&origin, host.as_deref()) {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "cross-origin request refused",
                format!(
                    "this request comes from a page of another origin ({origin}, this server \
                     is {}): web pages may not change a kvlab cluster; use curl, a script or \
                     the live view at this server's own address",
                    host.as_deref().unwrap_or("unnamed")
                ),
            ));
        }
    }
    let from_loopback = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    if from_loopback && !has_credentials(headers, token) {
        if let Some(host) = host.as_deref().filter(|h| !is_local_name(h)) {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "unexpected Host",
                format!(
                    "this server was reached as {host:?}, a name that could point anywhere \
                     (a web page can make a name of its own point at 127.0.0.1): name it by \
                     address (127.0.0.1) or as localhost"
                ),
            ));
        }
    }
    // A body with no type at all is read as JSON, as the original lab read
    // it (Python's `requests.post(url, data=json.dumps(...))` sends none);
    // a browser sending one from another page carries its `Origin`, and a
    // rebound name its `Host`, both refused above.
    let typed = headers.contains_key(axum::http::header::CONTENT_TYPE);
    if changes_state && has_body(headers) && typed && !is_json(headers) {
        let given = headers
            .get(axum::http::header::CONTENT_TYPE)
            .map_or("none".into(), |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            });
        return Some(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
            format!(
                "this route takes a JSON body (Content-Type: application/json, or no type), or none; \
                 the request's Content-Type is {given} (curl: -H 'Content-Type: \
                 application/json'; Python requests: json=... rather than data=...)"
            ),
        ));
    }
    None
}

/// Does `origin` (`scheme://host[:port]`) name the server the request was
/// sent to (its `Host`)? `null` (a sandboxed page, a file) never does.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, host) {
        (Some(authority), Some(host)) => authority
            .trim_end_matches('/')
            .eq_ignore_ascii_case(host.trim()),
        _ => false,
    }
}

/// A `Host` no DNS rebinding can produce: an IP address (v4, or v6 in
/// brackets), `localhost` or a name under `.localhost` (which browsers
/// resolve to loopback themselves), with or without a port.
fn is_local_name(host: &str) -> bool {
    let host = host.trim();
    if host.starts_with('[') {
        return host
            .split_once(']')
            .is_some_and(|(v6, _)| v6[1..].parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.split(':').next().unwrap_or_default();
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || ends_with_ignoring_case(name, ".localhost")
}

/// `text.ends_with(suffix)`, ASCII case ignored; compared as bytes, so no
/// cut can fall inside a character.
fn ends_with_ignoring_case(text: &str, suffix: &str) -> bool {
    let (text, suffix) = (text.as_bytes(), suffix.as_bytes());
    text.len() >= suffix.len() && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// `text.starts_with(prefix)`, ASCII case ignored, as bytes.
fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    let (text, prefix) = (text.as_bytes(), prefix.as_bytes());
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The cluster secret or the admin token: what no web page holds.
fn has_credentials(headers: &HeaderMap, token: Option<&Secret>) -> bool {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    carries_secret(headers) || token.zip(bearer).is_some_and(|(t, given)| t.matches(given))
}

/// Does the request announce a body (a length above 0, or chunks)?
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(axum::http::header::TRANSFER_ENCODING)
}

/// `application/json` (any parameters, any case) or a `+json` type.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return false;
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (starts_with_ignoring_case(essence, "application/")
            && ends_with_ignoring_case(essence, "+json"))
}

/// `Err`: why the request is refused (401).
fn internal_allowed(headers: &HeaderMap) -> Result<(), &'static str> {
    if carries_secret(headers) {
        return Ok(());
    }
    let reason = match (installed(), headers.get(HEADER_SECRET)) {
        (None, _) => "this process has no cluster secret, so it serves no internal route",
        (Some(_), None) => "internal route: the request has no X-Kvlab-Secret header",
        (Some(_), Some(_)) => "internal route: the X-Kvlab-Secret header is wrong",
    };
    Err(reason)
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// matched without regard to case (RFC 7235: `bearer` and `BEARER` are
/// `Bearer`), and spaces before the token are skipped.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii_start())
}

/// `Err`: why the request is refused (401).
fn admin_allowed(headers: &HeaderMap, token: Option<&Secret>) -> Result<(), &'static str> {
    let Some(token) = token else {
        return Ok(());
    };
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    if bearer.is_some_and(|given| token.matches(given)) || carries_secret(headers) {
        return Ok(());
    }
    Err(if bearer.is_some() {
        "admin route: the admin token is wrong"
    } else {
        "admin route: this coordinator listens off loopback, so /kill, /spawn, /catchup and \
         /admin/* need its admin token (printed at start) as `Authorization: Bearer <token>`"
    })
}

/// The 401, in the `{"detail": ...}` shape of every error answer (what
/// `http::ApiError` writes; `auth` sits below `http`, see ARCHITECTURE.md).
fn unauthorized(reason: &str) -> Response {
    refuse(StatusCode::UNAUTHORIZED, "unauthorized", reason.to_string())
}

/// A refusal in the `{"detail": {"error", "reason"}}` shape.
fn refuse(status: StatusCode, error: &str, reason: String) -> Response {
    let detail = json!({"error": error, "reason": reason});
    (status, axum::Json(json!({ "detail": detail }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        let token = Secret::parse("0123456789abcdef", "test").unwrap();
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let mut headers = HeaderMap::new();
            let value = format!("{scheme} 0123456789abcdef");
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            assert_eq!(admin_allowed(&headers, Some(&token)), Ok(()), "{scheme}");
        }
        assert_eq!(bearer_token(b"Basic 0123"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearerx 1"), None);
        assert_eq!(bearer_token(b"bearer  tok"), Some(&b"tok"[..]));
    }

    #[test]
    fn secrets_compare_whole_and_refuse_short_or_odd_values() {
        let s = Secret::parse("  0123456789abcdef\n", "test").unwrap();
        assert!(s.matches(b"0123456789abcdef"));
        for wrong in [
            &b"0123456789abcdeF"[..],
            b"0123456789abcde",
            b"",
            b"0123456789abcdef0",
        ] {
            assert!(!s.matches(wrong), "{wrong:?}");
        }
        assert!(matches!(
            Secret::parse("short", "x"),
            Err(AuthError::TooShort { len: 5, .. })
        ));
        assert!(matches!(
            Secret::parse("0123456789 abcdef", "x"),
            Err(AuthError::NotPrintable { .. })
        ));
        let r = Secret::random().unwrap();
        assert_eq!(r.expose().len(), 64);
        assert_ne!(r, Secret::random().unwrap());
        assert_eq!(format!("{r:?}"), "Secret(..)");
    }

    #[test]
    fn routes_are_sorted_into_open_internal_and_admin() {
        let get = Method::GET;
        for route in [
            "/data/{*key}",
            "/data",
            "/health",
            "/stats",
            "/",
            "/snapshot",
        ] {
            assert_eq!(node_access(&get, route), Access::Open, "{route}");
        }
        for route in [
            "/replicate",
            "/replicate/snapshot",
            "/replication/peers",
            "/batch/read",
            "/admin/shutdown",
        ] {
            assert_eq!(node_access(&get, route), Access::Internal, "{route}");
        }
        assert_eq!(registry_access(&get, "/heartbeat"), Access::Internal);
        assert_eq!(registry_access(&Method::POST, "/missing"), Access::Internal);
        assert_eq!(registry_access(&get, "/nodes"), Access::Open);
        assert_eq!(coordinator_access(&get, "/node-died"), Access::Internal);
        assert_eq!(coordinator_access(&get, "/kill/{node_id}"), Access::Admin);
        assert_eq!(
            coordinator_access(&get, "/admin/partition/{node_id}"),
            Access::Admin
        );
        for route in ["/write", "/read/{*key}", "/status", "/events", "/ui"] {
            assert_eq!(coordinator_access(&get, route), Access::Open, "{route}");
        }
    }

    #[test]
    fn pages_of_other_origins_and_rebound_names_are_told_apart() {
        assert!(same_origin("http://127.0.0.1:7000", Some("127.0.0.1:7000")));
        assert!(same_origin("http://LOCALHOST:7000", Some("localhost:7000")));
        assert!(!same_origin(
            "http://127.0.0.1:8000",
            Some("127.0.0.1:7000")
        ));
        assert!(!same_origin("null", Some("127.0.0.1:7000")));
        assert!(!same_origin("http://evil.example", None));
        for host in [
            "127.0.0.1:7000",
            "localhost",
            "LocalHost:7000",
            "localhost.:1",
            "ui.localhost:7000",
            "UI.LOCALHOST",
            "[::1]:7000",
            "10.0.0.5",
        ] {
            assert!(is_local_name(host), "{host}");
        }
        for host in [
            "evil.example:7000",
            "localhost.evil.example",
            "[nope]:1",
            "coordinator",
            "é.localhosté",
            "éé",
        ] {
            assert!(!is_local_name(host), "{host}");
        }
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (ct, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            h.insert(axum::http::header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_json(&h), json, "{ct}");
        }
    }

    /// The three refusals a page can meet read as sentences: no run of
    /// spaces left by a string broken over lines without its `\`.
    #[tokio::test]
    async fn browser_refusals_read_as_sentences() {
        let loopback: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let cases = [
            ("localhost:7000", Some("http://evil.example"), None, 403),
            ("evil.example:7000", None, None, 403),
            ("localhost:7000", None, Some("text/plain"), 415),
        ];
        for (host, origin, content_type, status) in cases {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri("/kill/follower-1")
                .header(axum::http::header::HOST, host);
            if let Some(origin) = origin {
                req = req.header(axum::http::header::ORIGIN, origin);
            }
            if let Some(ct) = content_type {
                req = req
                    .header(axum::http::header::CONTENT_TYPE, ct)
                    .header(axum::http::header::CONTENT_LENGTH, "2");
            }
            let mut req = req.body(axum::body::Body::empty()).unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(loopback));
            let answer = browser_refusal(&req, Access::Admin, None).expect("refused");
            assert_eq!(answer.status().as_u16(), status, "{host} {origin:?}");
            let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
                .await
                .unwrap();
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert!(!body.contains("  "), "a run of spaces in {body}");
        }
    }

    #[test]
    fn the_user_file_is_created_once_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvlab-1").join("cluster-secret");
        let first = user_secret(&path).unwrap();
        assert_eq!(user_secret(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = user_secret(&path).unwrap_err();
        assert!(e.to_string().contains("others may access it"), "{e}");
    }

    #[test]
    fn loopback_needs_no_admin_token_and_other_addresses_get_one() {
        let none = AdminArgs::default();
        assert_eq!(
            admin_token("127.0.0.1".parse().unwrap(), &none).unwrap(),
            None
        );
        assert_eq!(
            admin_token("127.3.4.5".parse().unwrap(), &none).unwrap(),
            None
        );
        assert!(admin_token("0.0.0.0".parse().unwrap(), &none)
            .unwrap()
            .is_some());
    }
}
