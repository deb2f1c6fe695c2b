//! HTTP plumbing shared by every component.
//!
//! - [`ApiError`]: an error answer, always `{"detail": ...}` with a status, so
//!   every component fails the same way and never with a bare text body.
//! - [`ApiJson`]: a JSON body extractor whose rejections (malformed JSON, a
//!   missing field, a wrong content type) are turned into a clear `ApiError`;
//!   [`ApiPath`], the same for path parameters.
//! - [`client`]: the one pooled keep-alive HTTP client a component uses to talk
//!   to the others.
//! - [`bind`] and [`serve`]: listening with an error that names the port;
//!   [`limited`]: the input limits a served router gets; [`serve`] also
//!   gives every request a deadline to arrive whole (headers, then body),
//!   caps how many connections a listener serves at once and how many of
//!   them one client address holds, and [`raise_open_file_limit`] lifts the
//!   soft file limit. A listener that must speak TLS (see `tls`) does its
//!   handshake first.
//! - [`error_detail`] and [`detail_of`]: the `detail` of another component's
//!   error answer, whatever shape its body has.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

pub mod wire;

use crate::api::{BATCH_BODY_BYTES, HEADER_FROM, MAX_BODY_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// An error answer: a status and the `detail` of `{"detail": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<Value>) -> Self {
        ApiError {
            status,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<Value>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn not_found(detail: impl Into<Value>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    pub fn conflict(detail: impl Into<Value>) -> Self {
        Self::new(StatusCode::CONFLICT, detail)
    }

    pub fn unavailable(detail: impl Into<Value>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }

    pub fn internal(detail: impl Into<Value>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

/// `Json<T>` with errors a person can act on.
///
/// axum's own rejection answers with a plain-text body; course scripts and the
/// client expect `{"detail": ...}` everywhere, so we translate.
///
/// A body that parses is parsed by `serde_json` alone. axum's `Json` goes
/// through `serde_path_to_error`, which copies every object key it reads
/// into a `String` of its own so that an error can name the field: one
/// allocation per key, on every request, for the rare one that fails. A
/// follower's batch of 30 entries has 150 keys, and those copies were most
/// of its allocations ("Where the time goes" in ARCHITECTURE.md). So only a
/// body that fails is parsed again by axum, for the rejection that names the
/// field: the same answer as before, paid for by the request that is wrong.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(mut req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // No Content-Type at all: read the body as JSON, as the original lab
        // did. A wrong type is still refused (`auth::guard` says why).
        let headers = req.headers_mut();
        let Some(content_type) = headers.get(axum::http::header::CONTENT_TYPE) else {
            headers.insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            );
            return parse_body(req, state).await;
        };
        // Anything but the plain type (a charset, `application/*+json`, a
        // type that is not JSON at all) is judged by axum, as before.
        if content_type.as_bytes() != b"application/json" {
            return match Json::<T>::from_request(req, state).await {
                Ok(Json(value)) => Ok(ApiJson(value)),
                Err(rejection) => Err(json_rejection(rejection)),
            };
        }
        parse_body(req, state).await
    }
}

/// Reads a body already known to be JSON and parses it; see [`ApiJson`].
async fn parse_body<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<ApiJson<T>, ApiError> {
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| json_rejection(JsonRejection::from(e)))?;
    if let Ok(value) = serde_json::from_slice(&bytes) {
        return Ok(ApiJson(value));
    }
    match Json::<T>::from_bytes(&bytes) {
        Ok(Json(value)) => Ok(ApiJson(value)),
        Err(rejection) => Err(json_rejection(rejection)),
    }
}

/// `Path<T>` with errors a person can act on, in the `{"detail": ...}`
/// shape: a segment that is not UTF-8 once decoded (`/read/%ff`) gets a 400
/// that says so, where axum's own rejection is a plain-text body.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                json!({"error": "invalid path", "reason": rejection.body_text()}),
            )),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let error = match &rejection {
        JsonRejection::JsonSyntaxError(_) => "malformed JSON body",
        JsonRejection::JsonDataError(_) => "JSON body does not have the expected fields",
        JsonRejection::MissingJsonContentType(_) => "expected Content-Type: application/json",
        JsonRejection::BytesRejection(_) => "could not read the request body",
        _ => "invalid JSON body",
    };
    if rejection.body_text().contains(BODY_DEADLINE_ERROR) {
        return body_too_slow();
    }
    let status = if status == StatusCode::PAYLOAD_TOO_LARGE
        || rejection.body_text().contains("length limit")
    {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        status
    };
    let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
        // The limit depends on the route: say both.
        format!(
            "the request body is larger than this route accepts ({MAX_BODY_BYTES} bytes \
             for a client's request; {} for a batch or a snapshot chunk between components)",
            BATCH_BODY_BYTES
        )
    } else {
        rejection.body_text()
    };
    ApiError::new(status, json!({ "error": error, "reason": reason }))
}

/// A body that could not be read (cut off by its deadline, too large,
/// broken), as an `ApiError`: for handlers that take the raw bytes.
pub fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    let text = rejection.body_text();
    if text.contains(BODY_DEADLINE_ERROR) {
        return body_too_slow();
    }
    ApiError::new(
        rejection.status(),
        json!({"error": "could not read the request body", "reason": text}),
    )
}

/// The 408 of a body that did not arrive within [`BODY_READ_TIMEOUT`].
fn body_too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        json!({"error": "request body too slow", "reason": format!(
            "{BODY_DEADLINE_ERROR}: a request's body must arrive within {} s of its headers",
            BODY_READ_TIMEOUT.as_secs()
        )}),
    )
}

/// Refuses keys and values the store will not hold, with the reason.
pub fn validate_key_value(key: &str, value: Option<&str>) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request(
            json!({"error": "invalid key", "reason": "the key is empty"}),
        ));
    }
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        // HTTP clients resolve dot segments before sending (RFC 3986,
        // 5.2.4): `GET /read/a/../b` asks for `b`, and `/read/.` for nothing.
        // Such a key could be written but never read back, so it is refused.
        return Err(ApiError::bad_request(json!({
            "error": "invalid key",
            "reason": format!(
                "the key {key:?} has a `.` or `..` path segment, which HTTP clients \
                 resolve away in a URL, so it could never be read back; choose another key"
            ),
        })));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "key too large", "reason":
                format!("the key is {} bytes; at most {MAX_KEY_BYTES} are allowed", key.len())}),
        ));
    }
    if let Some(value) = value {
        if value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "value too large", "reason":
                    format!("the value is {} bytes; at most {MAX_VALUE_BYTES} are allowed", value.len())}),
            ));
        }
    }
    Ok(())
}

/// The HTTP client every component uses: pooled keep-alive connections, no
/// proxy (everything is on the cluster's own network), a connect timeout so a
/// dead peer is noticed quickly.
pub fn client() -> reqwest::Client {
    builder(reqwest::header::HeaderMap::new())
        .build()
        .expect("building the HTTP client")
}

/// As [`client`], with more headers on every request (the coordinator's
/// epoch, say).
pub fn client_with(headers: reqwest::header::HeaderMap) -> reqwest::Client {
    builder(headers).build().expect("building the HTTP client")
}

/// The client of a node: as [`client`], and every request names the node
/// in `X-Kvlab-From`, so that a peer's fault hooks can tell who sent it
/// (see `api::HEADER_FROM`). `connect_timeout`: how long a connection may take
/// to open (2 s elsewhere).
pub fn client_from(node_id: &str, connect_timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(id) = reqwest::header::HeaderValue::from_str(node_id) {
        headers.insert(HEADER_FROM, id);
    }
    builder(headers)
        .connect_timeout(connect_timeout)
        .build()
        .expect("building the HTTP client")
}

/// How long a pooled connection may sit idle before the client drops it:
/// below the servers' [`HEADER_READ_TIMEOUT`], so a request never goes out on
/// a connection the server is closing at that very moment.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

/// Every request of kvlab's own clients carries the cluster secret, when
/// this process has one (see `auth`): no call site can forget it.
fn builder(mut headers: reqwest::header::HeaderMap) -> reqwest::ClientBuilder {
    if let Some(secret) = crate::auth::installed() {
        if let Ok(mut value) = reqwest::header::HeaderValue::from_str(secret.expose()) {
            value.set_sensitive(true);
            headers.insert(crate::auth::HEADER_SECRET, value);
        }
    }
    let builder = reqwest::Client::builder();
    // https: the cluster CA is the only root (see `tls`).
    let builder = match crate::tls::client_config() {
        Some(config) => builder.use_preconfigured_tls(config),
        None => builder,
    };
    builder
        .default_headers(headers)
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(CLIENT_POOL_IDLE)
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
}

/// Resolves once `stopping` says so (or its sender is gone).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// What a served connection reads and writes: a TCP stream, or TLS over one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Binds a listener, with an error that says which address was taken and
/// names `--port`, the flag of a component run alone.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    bind_flag(addr, "--port").await
}

/// [`bind`], naming the flag that chose the port (`kvlab up` has one per
/// component: `--gateway-port`, ...).
pub async fn bind_flag(addr: SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "port {} ({flag}) is already in use by another process \
                 (is another kvlab still running?): pick another with {flag}",
                addr.port()
            )
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {e}")
        }
    })
}

/// How long a connection may take to send a request's headers, counted from
/// the moment the server starts waiting for them. hyper starts that wait on
/// a new connection *and* after every answer on a kept-alive one, so this is
/// also the idle (keep-alive) timeout: a connection that sends nothing for
/// this long is closed. Our own clients drop pooled connections sooner
/// ([`CLIENT_POOL_IDLE`]), so they never reuse one the server is closing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request's body may take to arrive, counted from the moment
/// its headers did. With [`HEADER_READ_TIMEOUT`] before it, a request is
/// read whole within 20 s of the server starting to wait for it, or its
/// connection is answered 408 and closed: a client that sends the headers
/// and one byte of a body no longer holds a connection forever. Far more
/// than the largest body (a 64 MiB batch between components) needs.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one listener serves at once, whatever the open-file limit:
/// far more than a lab cluster ever opens.
const MAX_CONNECTIONS: usize = 16_384;

/// Serves a router until `shutdown` resolves, with the limits every listener
/// has: the body limit ([`limited`]), the header-read and idle timeout
/// ([`HEADER_READ_TIMEOUT`]), the body's deadline ([`BODY_READ_TIMEOUT`]),
/// a cap on connections served at once ([`connection_cap`]) and a cap on
/// those of one client address ([`per_address_cap`]). Once `shutdown`
/// resolves, requests in flight get [`SHUTDOWN_GRACE`] to finish. Past the
/// cap, new connections wait in the kernel's accept queue until a served one
/// closes (or times out), so idle or slow clients can hold a listener's
/// slots for at most the timeouts, and never take the process's last file
/// descriptors. A connection past its address's cap is answered 503 and
/// closed at once: one client address never holds more than its share,
/// and the others are still served.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    // `with_state(())` turns every handler into a service once, here: a
    // router whose handlers were added without state would otherwise box
    // each one into a service anew on every request it routes.
    let router: Router = limited(router).with_state(());
    let cap = connection_cap();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    let per_address = PerAddress::new(per_address_cap(cap));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connections are told to stop through this (a connection that may
    // switch to the framed wire cannot be handed to `graceful`'s watcher);
    // each holds one of `graceful`'s watchers until it ends, so the wait
    // for open requests below still counts it.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    // Off loopback (or with `--tls on`), this listener speaks TLS only.
    let tls = listener
        .local_addr()
        .ok()
        .and_then(|addr| crate::tls::acceptor_for(addr.ip()));
    tokio::pin!(shutdown);
    loop {
        // A slot first, then a connection: past the cap, clients wait.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(held) = per_address.take(peer.ip()) else {
            refuse_over_address_cap(stream, per_address.cap);
            continue;
        };
        // What the connection holds (its slot under the caps, its place in
        // the shutdown's wait) goes to the framed wire if it switches to it
        // (`wire::upgrade` takes it), else is let go when it closes.
        let hold: wire::Hold = std::sync::Arc::new(std::sync::Mutex::new(Some(Box::new((
            slot,
            held,
            graceful.watcher(),
        )))));
        let offer = wire::Offer {
            router: router.clone(),
            stopping: stopping.clone(),
            hold: hold.clone(),
        };
        // Handlers see the peer's address as axum's `ConnectInfo` (the
        // gateway's rate limiter keys clients by it), the body comes with
        // its deadline, and a router may offer the framed wire.
        let service = router.clone().map_request(
            move |req: axum::extract::Request<hyper::body::Incoming>| {
                let mut req = req.map(with_deadline);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(offer.clone());
                req
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let (http1, mut stopping, tls) = (http1.clone(), stopping.clone(), tls.clone());
        tokio::spawn(async move {
            // An error here is the client's (gone, timed out, malformed).
            let io = match tls {
                None => Box::new(stream) as Box<dyn Io>,
                // A TLS listener: the handshake first (plain HTTP refused).
                Some(acceptor) => match crate::tls::handshake(&acceptor, stream).await {
                    Some(stream) => Box::new(stream),
                    None => return,
                },
            };
            let conn = http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped(&mut stopping) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(hold);
        });
    }
    let _ = stop.send(true);
    // Open requests get a while to finish, not forever: a handler stuck on
    // a peer that no longer answers must not keep a component (and, in
    // `kvlab up`, the removal of its nodes) from stopping.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "requests still open after the shutdown grace: stopping without them"
        );
    }
    Ok(())
}

/// What a body cut off by [`BODY_READ_TIMEOUT`] fails with; [`ApiJson`]
/// turns it into a 408.
const BODY_DEADLINE_ERROR: &str = "the request body did not arrive in time";

/// A request body that fails once [`BODY_READ_TIMEOUT`] has passed since
/// the request's headers arrived (now), however it trickles in. A handler
/// reading it gets an error and answers; hyper then closes the connection,
/// since the body was not read to its end.
fn with_deadline(body: hyper::body::Incoming) -> axum::body::Body {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let chunks = axum::body::Body::new(body).into_data_stream();
    let timed = futures::stream::unfold(Some(chunks), move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(chunks))),
            Ok(None) => None,
            // Fail once, then end.
            Err(_) => Some((Err(axum::Error::new(BODY_DEADLINE_ERROR)), None)),
        }
    });
    axum::body::Body::from_stream(timed)
}

/// How many connections each client address holds on one listener.
struct PerAddress {
    cap: usize,
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One connection counted against its address; uncounted when dropped.
struct AddressHold {
    ip: std::net::IpAddr,
    held: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl PerAddress {
    fn new(cap: usize) -> PerAddress {
        PerAddress {
            cap,
            held: Default::default(),
        }
    }

    /// Counts one more connection of `ip`, unless it holds its cap already.
    /// (An IPv4 address seen through IPv6 counts as itself.)
    fn take(&self, ip: std::net::IpAddr) -> Option<AddressHold> {
        let ip = ip.to_canonical();
        let mut held = self.held.lock().unwrap();
        let n = held.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressHold {
            ip,
            held: self.held.clone(),
        })
    }
}

impl Drop for AddressHold {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // The map holds only addresses with connections open.
                held.remove(&self.ip);
            }
        }
    }
}

/// A connection past its address's cap: a 503 that says why, if the socket
/// takes it at once (never waiting on the client), then closed.
fn refuse_over_address_cap(stream: tokio::net::TcpStream, cap: usize) {
    let body = json!({"detail": {
        "error": "too many connections from your address",
        "reason": format!("one client address may hold at most {cap} connections to this \
                           listener at once; close some, or reuse them (keep-alive)"),
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Written by a task, not `try_write`: a socket just accepted may not be
    // known writable to the reactor yet, and `try_write` would then send
    // nothing. The answer fits in any send buffer, so the task ends at
    // once; the bound is for a peer that vanished.
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = stream;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    });
}

/// How long [`serve`] waits, once told to stop, for the requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// An `accept` that failed. A connection reset before it was accepted is
/// the client's business; anything else (out of file descriptors) is
/// logged, and the listener retries shortly instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "cannot accept a connection; retrying in 50 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Connections each listener serves at once: a quarter of the open-file
/// limit (a process may have several listeners, plus its own outgoing
/// connections, log and data files), at least 32, at most [`MAX_CONNECTIONS`].
pub fn connection_cap() -> usize {
    let (soft, _) = open_file_limit();
    ((soft / 4) as usize).clamp(32, MAX_CONNECTIONS)
}

/// Connections one client address may hold on a listener whose cap is
/// `cap`: half of it (at least 16), so a single address (one attacker, one
/// runaway script) never takes a listener's last slot, and the other
/// addresses always have half. kvlab's own processes on one machine all
/// connect from one address, and hold a few pooled connections each.
pub fn per_address_cap(cap: usize) -> usize {
    (cap / 2).max(16)
}

/// The open-file limit: (soft, hard).
fn open_file_limit() -> (libc::rlim_t, libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft open-file limit to the hard one, for every subcommand at
/// start. The soft limit is often 1,024, which a thousand idle connections
/// exhaust; the hard limit is what the administrator allows. Capped at
/// 1,048,576 (Linux refuses an unlimited one). Returns the soft limit now in
/// force.
pub fn raise_open_file_limit() -> libc::rlim_t {
    let (soft, hard) = open_file_limit();
    let target = hard.min(1 << 20);
    if soft >= target {
        return soft;
    }
    let lim = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return soft;
    }
    target
}

/// A router with the input limits every component applies to its requests
/// ([`MAX_BODY_BYTES`]), whether they come over TCP ([`serve`]) or are handed
/// to it in-process (the gateway of `kvlab up`).
pub fn limited(router: Router) -> Router {
    router
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(crate::gate::GateLayer(RefuseAnnouncedOversize))
}

/// A body that announces (`Content-Length`) more than any route accepts is
/// refused with 413 before a byte of it is read. (The per-route limits
/// still apply to bodies of unannounced length, as they are read.)
#[derive(Clone, Copy)]
struct RefuseAnnouncedOversize;

impl crate::gate::Gate for RefuseAnnouncedOversize {
    type Ticket = ();

    fn before(&self, req: &Request) -> Result<(), Response> {
        let largest = BATCH_BODY_BYTES as u64;
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        match announced {
            Some(n) if n > largest => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "request body too large", "reason": format!(
                    "the request body announces {n} bytes; no route accepts more than {largest}"
                )}),
            )
            .into_response()),
            _ => Ok(()),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: the signals that mean "stop cleanly".
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Reads an error answer's `detail`, whatever shape the body has.
pub async fn error_detail(resp: reqwest::Response) -> Value {
    let status = resp.status();
    // A body that cannot be read is treated like one that is not JSON.
    let body = resp.bytes().await.unwrap_or_default();
    detail_of(status, &body)
}

/// The `detail` of an error answer already read: the `detail` field of a
/// JSON object, else the whole JSON value, else (not JSON at all) the status.
pub fn detail_of(status: StatusCode, body: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => match map.remove("detail") {
            Some(detail) => detail,
            None => Value::Object(map),
        },
        Ok(other) => other,
        Err(_) => Value::String(format!("HTTP {status}")),
    }
}

/// Describes a failed request briefly: "connection refused", "timed out", ...
pub fn describe_reqwest_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    if e.is_connect() {
        // The innermost cause says why ("Connection refused (os error 111)").
        let mut source: Option<&dyn std::error::Error> = Some(e);
        let mut last = e.to_string();
        while let Some(s) = source {
            last = s.to_string();
            source = s.source();
        }
        return format!("cannot connect: {last}");
    }
    e.to_string()
}

/// The incarnation a node's answer says it came from (`X-Node-Incarnation`),
/// so a caller can refuse an answer from a process other than the one it meant.
pub fn answering_incarnation(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(crate::api::HEADER_NODE_INCARNATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------
// Several base URLs, one current
// ---------------------------------------------------------------------------

/// A flag's list of base URLs that did not parse.
#[derive(Debug, thiserror::Error)]
pub enum BadEndpoints {
    #[error("{flag} needs at least one URL")]
    Empty { flag: String },
    #[error("{flag} must list http:// or https:// URLs, got '{url}'")]
    NotHttp { flag: String, url: String },
    #[error("{flag} lists '{url}' twice")]
    Duplicate { flag: String, url: String },
}

/// Several base URLs of interchangeable servers (gateways, coordinators),
/// one of them current: what `--gateway URL1,URL2` and `--coordinator
/// URL1,URL2` give. The list never changes; only which one is current does.
///
/// Invariants:
/// - **Moving on is a compare-and-swap.** Many requests fail at once when a
///   server dies; [`Endpoints::move_past`] moves the current index only if
///   it still is the one that failed, so ten failures move it once, not ten
///   times round the list.
/// - **Whether to move on is the caller's call.** This type never decides
///   that an answer is a failure; [`never_reached`] says which transport
///   errors prove the request was never delivered.
#[derive(Debug)]
pub struct Endpoints {
    urls: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
}

impl Endpoints {
    /// Parses a flag's values: each may itself be a comma-separated list
    /// (`--gateway a,b --gateway c`). URLs keep no trailing slash.
    pub fn parse(flag: &str, values: &[String]) -> Result<Endpoints, BadEndpoints> {
        let mut urls: Vec<String> = Vec::new();
        for raw in values.iter().flat_map(|v| v.split(',')) {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let ok = reqwest::Url::parse(raw)
                .ok()
                .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                let (flag, url) = (flag.to_string(), raw.to_string());
                return Err(BadEndpoints::NotHttp { flag, url });
            }
            let url = raw.trim_end_matches('/').to_string();
            if urls.contains(&url) {
                return Err(BadEndpoints::Duplicate {
                    flag: flag.to_string(),
                    url,
                });
            }
            urls.push(url);
        }
        if urls.is_empty() {
            return Err(BadEndpoints::Empty {
                flag: flag.to_string(),
            });
        }
        Ok(Endpoints {
            urls,
            current: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// One URL taken as it is, unchecked: for a caller whose URL a request
    /// will check (its error then names it).
    pub fn one(url: &str) -> Endpoints {
        Endpoints {
            urls: vec![url.trim_end_matches('/').to_string()],
            current: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The current one: its index (to hand back to [`Endpoints::move_past`])
    /// and its URL.
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.urls.len();
        (i, &self.urls[i])
    }

    /// Makes `i` current (a caller that found out which one to use).
    pub fn set_current(&self, i: usize) {
        let i = i % self.urls.len();
        self.current.store(i, std::sync::atomic::Ordering::Relaxed);
    }

    /// `failed` stopped answering: the next one becomes current, unless
    /// another caller already moved on. Returns the current one afterwards.
    pub fn move_past(&self, failed: usize) -> (usize, &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let next = (failed + 1) % self.urls.len();
        let _ = self
            .current
            .compare_exchange(failed, next, Relaxed, Relaxed);
        self.current()
    }

    /// Every index once, the current one first: the order to try them in.
    pub fn from_current(&self) -> impl Iterator<Item = (usize, &str)> {
        let start = self.current().0;
        (0..self.urls.len()).map(move |k| {
            let i = (start + k) % self.urls.len();
            (i, self.urls[i].as_str())
        })
    }
}

/// Whether an answer is a standby coordinator's refusal (503 whose detail is
/// `api::NOT_ACTIVE_COORDINATOR`, or an object whose `error` it is): the
/// request did nothing, and belongs to the active coordinator.
pub fn not_active_coordinator(status: StatusCode, detail: &Value) -> bool {
    let not_active = crate::api::NOT_ACTIVE_COORDINATOR;
    status == StatusCode::SERVICE_UNAVAILABLE
        && (detail.as_str() == Some(not_active) || detail["error"].as_str() == Some(not_active))
}

/// Whether a failed request surely never reached the server: the
/// connection could not be made (refused, no route, connect timeout). Then
/// sending it elsewhere cannot do it twice. A reset or a timeout after the
/// request went out proves nothing: a write may have happened.
pub fn never_reached(e: &reqwest::Error) -> bool {
    e.is_connect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path (plain `serde_json`) answers exactly as axum's `Json`
    /// did: the same values, and for a body that fails, the same rejection,
    /// naming the field that is wrong.
    #[tokio::test]
    async fn json_bodies_parse_alike_on_every_path_and_errors_name_the_field() {
        use tower::ServiceExt;
        #[derive(serde::Deserialize)]
        struct Body {
            key: String,
            n: u64,
        }
        let router: Router = Router::new().route(
            "/w",
            axum::routing::post(
                |ApiJson(b): ApiJson<Body>| async move { format!("{}={}", b.key, b.n) },
            ),
        );
        let ask = |content_type: Option<&str>, body: &'static str| {
            let mut req = Request::builder().method("POST").uri("/w");
            if let Some(t) = content_type {
                req = req.header("content-type", t);
            }
            let router = router.clone();
            async move {
                let req = req.body(axum::body::Body::from(body)).unwrap();
                let answer = router.oneshot(req).await.unwrap();
                let status = answer.status();
                let body = axum::body::to_bytes(answer.into_body(), 4096)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let good = r#"{"key": "a", "n": 7}"#;
        for content_type in [
            None,
            Some("application/json"),
            Some("application/json; charset=utf-8"),
        ] {
            assert_eq!(
                ask(content_type, good).await,
                (StatusCode::OK, "a=7".into()),
                "{content_type:?}"
            );
        }
        let (status, body) = ask(Some("application/json"), r#"{"key": "a", "n": "seven"}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body.contains("expected fields") && body.contains("n:"),
            "{body}"
        );
        let (status, body) = ask(Some("application/json"), r#"{"key": "a""#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("malformed JSON"), "{body}");
        let (status, body) =
            ask(Some("application/json"), r#"{"key": "a", "n": 1} trailing"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = ask(Some("text/plain"), good).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body.contains("Content-Type"), "{body}");
    }

    /// `/read/%ff` once got axum's plain text from the coordinator and a node.
    #[tokio::test]
    async fn a_path_that_is_not_utf8_gets_a_json_400() {
        use tower::ServiceExt;
        let router: Router = Router::new().route(
            "/read/{*key}",
            axum::routing::get(|ApiPath(key): ApiPath<String>| async move { key }),
        );
        let ask = |uri: &str| {
            let req = Request::builder().uri(uri).body(axum::body::Body::empty());
            router.clone().oneshot(req.unwrap())
        };
        let answer = ask("/read/a%2Fb%09c").await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body = axum::body::to_bytes(answer.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"a/b\tc");
        let answer = ask("/read/%ff").await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(answer.into_body(), 1024)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(body["detail"]["error"], "invalid path", "{body}");
        assert!(
            body["detail"]["reason"].as_str().unwrap().contains("UTF-8"),
            "{body}"
        );
    }

    #[test]
    fn keys_with_dot_segments_are_refused_and_dots_elsewhere_are_fine() {
        for key in [".", "..", "a/../b", "./x", "x/.", "a//./b"] {
            let e = validate_key_value(key, Some("v")).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{key}");
        }
        for key in ["a.b", "...", ".hidden", "a/.b/c", "a/b."] {
            assert!(validate_key_value(key, Some("v")).is_ok(), "{key}");
        }
    }

    #[test]
    fn detail_of_takes_the_detail_else_the_body_else_the_status() {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let of = |body: &str| detail_of(status, body.as_bytes());
        assert_eq!(of(r#"{"detail": {"error": "x"}}"#), json!({"error": "x"}));
        assert_eq!(of(r#"{"error": "y"}"#), json!({"error": "y"}));
        assert_eq!(of(r#""just text""#), json!("just text"));
        assert_eq!(of("<html>"), json!("HTTP 503 Service Unavailable"));
        assert_eq!(of(""), json!("HTTP 503 Service Unavailable"));
    }

    #[test]
    fn endpoints_parse_lists_and_refuse_bad_urls() {
        let e = Endpoints::parse(
            "--gateway",
            &[
                "http://a:1/, http://b:2".to_string(),
                "https://c:3".to_string(),
            ],
        )
        .unwrap();
        assert_eq!(e.urls(), ["http://a:1", "http://b:2", "https://c:3"]);
        for (values, needle) in [
            (vec![""], "at least one"),
            (vec![" , "], "at least one"),
            (vec!["localhost:8000"], "'localhost:8000'"),
            (vec!["ftp://x"], "'ftp://x'"),
            (vec!["http://a:1", "http://a:1/"], "twice"),
        ] {
            let values: Vec<String> = values.into_iter().map(String::from).collect();
            let err = Endpoints::parse("--gateway", &values)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--gateway") && err.contains(needle), "{err}");
        }
    }

    #[test]
    fn endpoints_move_on_once_per_failure() {
        let values = ["http://a:1,http://b:2,http://c:3".to_string()];
        let e = Endpoints::parse("--gateway", &values).unwrap();
        assert_eq!(e.current(), (0, "http://a:1"));
        // Two requests saw a fail: the list moves once.
        assert_eq!(e.move_past(0), (1, "http://b:2"));
        assert_eq!(e.move_past(0), (1, "http://b:2"));
        assert_eq!(e.move_past(1), (2, "http://c:3"));
        assert_eq!(e.move_past(2), (0, "http://a:1"), "round the list");
        e.set_current(2);
        let order: Vec<usize> = e.from_current().map(|(i, _)| i).collect();
        assert_eq!(order, [2, 0, 1]);
    }
}
