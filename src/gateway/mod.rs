//! The gateway: the one address a client needs (port 8000).
//!
//! It forwards `/write`, `/read/{key}` and `/cluster-status` to the
//! coordinator, passes the coordinator's answers and errors through, and can
//! limit each client address's request rate (see [`crate::ratelimit`]).
//!
//! The coordinator is reached one of two ways (an `Upstream`):
//! - **Remote** (`kvlab gateway --coordinator URL`): a coordinator in another
//!   process, over pooled keep-alive HTTP connections.
//! - **Local** (`kvlab up`): the coordinator lives in this same process.
//!   Writes and reads, the requests that carry the load, are function calls
//!   with typed values ([`LocalCoordinator`]): the request the gateway has
//!   parsed goes as it is, and the answer is encoded once, for the client.
//!   `/cluster-status` goes through the coordinator's axum `Router`, called
//!   as a tower `Service`. Going through loopback TCP instead (encode the
//!   request, write it to a socket, wake the coordinator's connection task,
//!   parse it, and the same again for the answer) cost a quarter to a half
//!   of the `up` process's CPU per request (measured with `kvlab bench`), to
//!   talk to code a function call away; going through the router cost a
//!   third of the allocations of a request (the body encoded, parsed,
//!   encoded and parsed again; "Where the time goes" in ARCHITECTURE.md).
//!   The coordinator still listens on its port: the client, the registry
//!   and course scripts use it.
//!
//! Given several coordinators (`--coordinator URL1,URL2`, the control
//! plane's active one and its standbys), the gateway **follows the active
//! one** (`follow_loop`): it polls every coordinator's `/status` every
//! 400 ms with a 300 ms timeout (a SIGSTOPped coordinator accepts
//! connections and never answers, so nobody may wait long on one), and
//! forwards to the one whose `control_plane.this` is `active`, the highest
//! epoch winning (a coordinator without a control plane, `mode` "", counts
//! as active).
//!
//! Invariants:
//! - **A request is sent again only if it surely reached no active
//!   coordinator**: the connection could not be made, or a standby answered
//!   503 `api::NOT_ACTIVE_COORDINATOR`. Then the gateway resolves the active
//!   one at once and retries once there. A timeout or a reset proves nothing
//!   (the write may have happened): the client gets 503 saying so.
//! - **Both upstreams are one contract.** A forwarded request is the same
//!   method, percent-encoded path and JSON body either way, and every answer
//!   goes through one relay step (`relay`): a success body is passed through
//!   byte for byte, an error keeps its status and its `detail`, no answer
//!   within `--timeout` is 503 `Coordinator unreachable: ...`, and the
//!   counters move alike. Only that 503's text (and the startup line) says
//!   which way the request went.
//! - **Every answer is JSON with the lab's shapes**, except `/graduate`
//!   (text). Errors of the gateway's own are `{"detail": ...}`; a refused
//!   request is the 429 body of docs/api.md.
//! - **The gateway holds no cluster state.** When a remote coordinator is
//!   down it answers 503 and keeps serving; the next request after the
//!   coordinator is back succeeds, with no restart (the pooled client simply
//!   reconnects).
//! - **Rate limiting covers every path, `/health` included**, as in the
//!   original: a health check is a request like any other, and exempting one
//!   path would give a flooder a free endpoint. Probes should come from an
//!   address of their own (each address has its own quota).
//! - **The client is the TCP peer address.** `X-Forwarded-For` is not
//!   trusted: the gateway is the edge, and a header a client writes would let
//!   it pick its own key and dodge the limit.

pub mod metrics;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{HeaderName, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures::future::BoxFuture;
use serde_json::json;
use tower::ServiceExt;
use url::Url;

use crate::api::{
    ports, GatewayInfo, GatewayMetrics, GatewayStats, ReadResponse, ServiceHealth, TooManyRequests,
    WriteRequest, WriteResponse,
};
use crate::http::{describe_reqwest_error, detail_of, validate_key_value, ApiError, ApiJson};
use crate::ratelimit::{
    ceil_secs, Decision, LimitError, Limits, RateLimiter, Strategy, DEFAULT_MAX_CLIENTS,
};

/// Rate-limiting flags, shared by `kvlab gateway` and `kvlab up`.
#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitArgs {
    /// Limit the requests of each client address.
    #[arg(long)]
    pub rate_limit: bool,
    /// Requests a client may make per window.
    #[arg(long, default_value_t = 10)]
    pub rate_limit_max: u32,
    /// Length of the window, in seconds (fractions allowed).
    #[arg(long, allow_negative_numbers = true, default_value_t = 60.0)]
    pub rate_limit_window: f64,
    /// How requests are counted against the limit.
    #[arg(long, value_enum, default_value_t = Strategy::FixedWindow)]
    pub rate_limit_strategy: Strategy,
}

/// Flags of `kvlab gateway`.
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// Port to listen on: the one clients use.
    #[arg(long, default_value_t = ports::GATEWAY)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The coordinator to forward to; several (comma-separated or the flag
    /// repeated): the gateway follows whichever is active.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    pub coordinator: Vec<String>,
    #[command(flatten)]
    pub rate: RateLimitArgs,
    /// Seconds to wait for the coordinator's answer to one request.
    #[arg(long, allow_negative_numbers = true, default_value_t = 30.0)]
    pub timeout: f64,
    /// TLS: the gateway's listener follows `--tls` like every other, and
    /// an https coordinator is trusted through `--tls-ca`.
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

/// A setting the gateway cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    BadCoordinator(#[from] crate::http::BadEndpoints),
    #[error(
        "an in-process coordinator is served at the root of its URL; \
         the URL must have no path, got '{0}'"
    )]
    InProcessPath(String),
    #[error("inside `kvlab up` the gateway has one coordinator, its own; got {0}")]
    InProcessSeveral(usize),
    #[error("--timeout must be between 0.001 and 3600 seconds, got {0}")]
    BadTimeout(f64),
    #[error(transparent)]
    RateLimit(#[from] LimitError),
}

/// The limiter's settings, once checked.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub strategy: Strategy,
    pub limits: Limits,
    pub max_clients: usize,
}

/// Everything the gateway needs, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// At least one; the first is followed until a poll says otherwise.
    pub coordinators: Vec<Url>,
    /// `None` when rate limiting is off.
    pub rate_limit: Option<RateLimitConfig>,
    pub timeout: Duration,
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config, ConfigError> {
        let listed = crate::http::Endpoints::parse("--coordinator", &args.coordinator)?;
        // `Endpoints::parse` accepted each, so each parses.
        let coordinators = listed
            .urls()
            .iter()
            .filter_map(|u| Url::parse(u).ok())
            .collect();
        if !args.timeout.is_finite() || !(0.001..=3600.0).contains(&args.timeout) {
            return Err(ConfigError::BadTimeout(args.timeout));
        }
        // The limits are checked even when off, so a typo is caught early.
        let limits = Limits::new(args.rate.rate_limit_max, args.rate.rate_limit_window)?;
        let rate_limit = args.rate.rate_limit.then_some(RateLimitConfig {
            strategy: args.rate.rate_limit_strategy,
            limits,
            max_clients: DEFAULT_MAX_CLIENTS,
        });
        Ok(Config {
            addr: SocketAddr::new(args.host, args.port),
            coordinators,
            rate_limit,
            timeout: Duration::from_secs_f64(args.timeout),
        })
    }

    /// The first coordinator's URL as people write it (no trailing slash).
    pub fn coordinator_str(&self) -> &str {
        self.coordinators[0].as_str().trim_end_matches('/')
    }
}

/// The four counters of `/stats` and `/` (see [`GatewayMetrics`]).
#[derive(Default)]
struct Metrics {
    total: AtomicU64,
    forwarded: AtomicU64,
    /// `/cluster-status` requests forwarded (not in `forwarded`).
    forwarded_status: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
    /// Answers by status code, for `/metrics`.
    by_code: metrics::ByCode,
}

impl Metrics {
    fn view(&self) -> GatewayMetrics {
        GatewayMetrics {
            total_requests: self.total.load(Ordering::Relaxed),
            forwarded_requests: self.forwarded.load(Ordering::Relaxed),
            rate_limited_requests: self.rate_limited.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            forwarded_status_requests: self.forwarded_status.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where the gateway forwards to (see the module's doc). Either way the
/// coordinator's address is `Config::coordinator`.
enum Upstream {
    /// A coordinator in another process (`kvlab gateway --coordinator URL`):
    /// pooled keep-alive HTTP.
    Remote(reqwest::Client),
    /// The coordinator in this process (`kvlab up`): writes and reads as
    /// typed calls, the rest through its axum Router, called as a tower
    /// Service. No socket in between either way.
    Local {
        router: Router,
        direct: Arc<dyn LocalCoordinator>,
    },
}

/// The coordinator of this process, as `kvlab up`'s gateway calls it for
/// writes and reads: typed values in and out, so the request the gateway
/// has parsed is not encoded and parsed again, and the answer is encoded
/// once, for the client. The composition (`up`) implements it over the
/// coordinator; the gateway does not use the coordinator's code
/// (ARCHITECTURE.md, "Layers"). Each call must behave exactly as the
/// coordinator's `POST /write` and `GET /read/{key}` do (checks, metrics,
/// narration): only the encoding is skipped.
pub trait LocalCoordinator: Send + Sync {
    fn write(&self, req: WriteRequest) -> BoxFuture<'static, Result<WriteResponse, ApiError>>;
    fn read(&self, key: String) -> BoxFuture<'static, Result<ReadResponse, ApiError>>;
}

pub struct Gateway {
    config: Config,
    upstream: Upstream,
    /// Which coordinator requests go to, and what the last poll said of it.
    follow: Follow,
    limiter: Option<RateLimiter>,
    metrics: Metrics,
}

impl Gateway {
    /// A gateway for a coordinator in another process, reached over HTTP at
    /// `config.coordinator` (`kvlab gateway`).
    pub fn new(config: Config) -> Result<Arc<Gateway>, ConfigError> {
        Gateway::with_upstream(config, Upstream::Remote(crate::http::client()))
    }

    /// A gateway for the coordinator in this process (`kvlab up`), given its
    /// router ([`crate::coordinator::router`]) and its typed entry points
    /// ([`LocalCoordinator`]), which it calls directly.
    /// `config.coordinator` is the URL that coordinator also listens on: the
    /// gateway shows it and names it in errors. The router answers at its
    /// root, as on its port, so that URL must have no path.
    pub fn in_process(
        config: Config,
        coordinator: Router,
        direct: Arc<dyn LocalCoordinator>,
    ) -> Result<Arc<Gateway>, ConfigError> {
        if config.coordinators.len() != 1 {
            return Err(ConfigError::InProcessSeveral(config.coordinators.len()));
        }
        if config.coordinators[0].path() != "/" {
            return Err(ConfigError::InProcessPath(
                config.coordinators[0].to_string(),
            ));
        }
        // The same input limits as requests reaching it over TCP get.
        let router = crate::http::limited(coordinator);
        Gateway::with_upstream(config, Upstream::Local { router, direct })
    }

    fn with_upstream(config: Config, upstream: Upstream) -> Result<Arc<Gateway>, ConfigError> {
        let limiter = match &config.rate_limit {
            Some(rl) => Some(RateLimiter::new(rl.strategy, rl.limits, rl.max_clients)?),
            None => None,
        };
        let urls: Vec<String> = config
            .coordinators
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect();
        Ok(Arc::new(Gateway {
            follow: Follow::new(&urls),
            upstream,
            limiter,
            metrics: Metrics::default(),
            config,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the coordinator is called in-process rather than over HTTP.
    pub fn is_in_process(&self) -> bool {
        matches!(self.upstream, Upstream::Local { .. })
    }

    /// `", in-process"` when it is, to follow the coordinator's URL in
    /// messages: a person debugging should know no socket was involved.
    fn in_process_note(&self) -> &'static str {
        if self.is_in_process() {
            ", in-process"
        } else {
            ""
        }
    }

    /// The coordinator's URL for a path of segments, each percent-encoded
    /// byte for byte (`api::key_segment`: a key may contain `/`, `?`, `#`,
    /// spaces, control characters, which `path_segments_mut` would strip).
    fn endpoint(&self, coordinator: usize, segments: &[&str]) -> Url {
        let mut url = self.config.coordinators[coordinator].clone();
        let mut path = url.path().trim_end_matches('/').to_string();
        for segment in segments {
            path.push('/');
            path.push_str(&crate::api::key_segment(segment));
        }
        url.set_path(&path);
        url
    }
}

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

/// Runs a gateway until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::tls::install(&args.tls, &[("the gateway", args.host)])?;
    let config = Config::from_args(&args)?;
    let listener = crate::http::bind(config.addr).await?;
    let gateway = Gateway::new(config)?;
    println!("kvlab gateway: {}", describe(&gateway));
    if gateway.config.coordinators.len() > 1 {
        // Known before the first request, so it goes to the active one.
        gateway.resolve(None).await;
    }
    serve(gateway, listener, crate::http::shutdown_signal()).await
}

/// One line saying where the gateway listens, where it forwards and how it limits.
pub fn describe(gateway: &Gateway) -> String {
    let limiting = match &gateway.config.rate_limit {
        Some(rl) => format!(
            "rate limit {} requests per {} s per client ({})",
            rl.limits.max,
            rl.limits.window.as_secs_f64(),
            rl.strategy
        ),
        None => "no rate limit".to_string(),
    };
    let how = if gateway.is_in_process() {
        " (in-process)"
    } else {
        ""
    };
    let coordinators = match gateway.config.coordinators.len() {
        1 => format!("coordinator {}", gateway.config.coordinator_str()),
        _ => format!(
            "the active one of coordinators {}",
            gateway.follow.endpoints.urls().join(", ")
        ),
    };
    format!(
        "{}://{} -> {coordinators}{how}, {limiting}",
        crate::tls::scheme(gateway.config.addr.ip()),
        gateway.config.addr,
    )
}

/// Serves the gateway until `shutdown`; idle limiter entries are swept meanwhile.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sweeper = tokio::spawn(sweep_loop(gateway.clone()));
    let follower = tokio::spawn(follow_loop(gateway.clone()));
    let result = crate::http::serve(listener, router(gateway), shutdown).await;
    sweeper.abort();
    follower.abort();
    result
}

/// Forgets idle clients about once a window (between 1 s and a minute), so
/// the table holds only clients seen recently.
async fn sweep_loop(gateway: Arc<Gateway>) {
    let Some(limiter) = &gateway.limiter else {
        return;
    };
    let every = limiter
        .limits()
        .window
        .clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        limiter.sweep();
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let routes = Router::new()
        .route("/", get(info))
        .route("/write", post(write))
        .route("/read/{*key}", get(read))
        .route("/cluster-status", get(cluster_status))
        .route("/stats", get(stats))
        .route("/health", get(health))
        .route("/graduate", get(graduate))
        .route("/metrics", get(metrics));
    // Web pages write nothing through the gateway either (see `auth`).
    crate::auth::guard(routes, crate::auth::gateway_access, None)
        .fallback(no_such_endpoint)
        .layer(crate::gate::GateLayer(Admission(gateway.clone())))
        .with_state(gateway)
}

type Shared = State<Arc<Gateway>>;

// ---------------------------------------------------------------------------
// Admission: counting and rate limiting, in front of every path
// ---------------------------------------------------------------------------

/// The client's address: the TCP peer, with IPv4-mapped IPv6 addresses
/// (`::ffff:10.0.0.1`, seen on dual-stack sockets) folded into IPv4 so one
/// client has one key. Without connection info (a router driven directly, in
/// tests) every request counts as one unknown client.
fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ci| {
            ci.0.ip().to_canonical()
        })
}

/// Counting and rate limiting, in front of every path: a
/// [`crate::gate::Gate`], so that it costs no allocation per request.
#[derive(Clone)]
struct Admission(Arc<Gateway>);

impl crate::gate::Gate for Admission {
    /// The limiter's decision, whose figures go into the answer's headers.
    type Ticket = Option<Decision>;

    fn before(&self, req: &Request) -> Result<Option<Decision>, Response> {
        let gw = &self.0;
        bump(&gw.metrics.total);
        let Some(limiter) = &gw.limiter else {
            return Ok(None);
        };
        let decision = limiter.check(client_ip(req));
        if !decision.allowed {
            bump(&gw.metrics.rate_limited);
            return Err(too_many_requests(limiter, &decision));
        }
        Ok(Some(decision))
    }

    fn after(&self, ticket: Option<Option<Decision>>, answer: &mut Response) {
        let gw = &self.0;
        if let (Some(Some(decision)), Some(limiter)) = (ticket, &gw.limiter) {
            add_limit_headers(answer.headers_mut(), limiter, &decision);
        }
        gw.metrics.by_code.count(answer.status());
    }
}

/// The 429 of docs/api.md, with the headers a client needs to back off.
fn too_many_requests(limiter: &RateLimiter, d: &Decision) -> Response {
    let limits = limiter.limits();
    let body = TooManyRequests {
        error: "Too Many Requests".into(),
        retry_after: d.retry_after_secs,
        message: format!(
            "Rate limit exceeded: at most {} requests per {} s per client ({}). \
             Try again in {} s.",
            limits.max,
            limits.window.as_secs_f64(),
            limiter.strategy(),
            d.retry_after_secs
        ),
    };
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    let headers = resp.headers_mut();
    headers.insert(RETRY_AFTER, HeaderValue::from(d.retry_after_secs));
    add_limit_headers(headers, limiter, d);
    resp
}

/// `X-RateLimit-Limit` and `-Remaining` (docs/api.md), and the IETF draft's
/// `RateLimit-Policy: 10;w=60` and `RateLimit: limit=10, remaining=3, reset=42`.
fn add_limit_headers(headers: &mut HeaderMap, limiter: &RateLimiter, d: &Decision) {
    let window = ceil_secs(limiter.limits().window);
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set(headers, "x-ratelimit-limit", d.limit.to_string());
    set(headers, "x-ratelimit-remaining", d.remaining.to_string());
    set(
        headers,
        "ratelimit-policy",
        format!("{};w={window}", d.limit),
    );
    set(
        headers,
        "ratelimit",
        format!(
            "limit={}, remaining={}, reset={}",
            d.limit, d.remaining, d.reset_secs
        ),
    );
}

// ---------------------------------------------------------------------------
// Following the active coordinator
// ---------------------------------------------------------------------------

/// How often the coordinators' `/status` is polled, and how long one poll
/// may take: a paused coordinator must not hold the gateway up.
const FOLLOW_EVERY: Duration = Duration::from_millis(400);
const POLL_TIMEOUT: Duration = Duration::from_millis(300);

/// The coordinators and which one requests go to.
struct Follow {
    endpoints: crate::http::Endpoints,
    /// What the last poll said of the followed one: its id and epoch
    /// (empty and 0 until a poll found an active one).
    seen: std::sync::Mutex<(String, u64)>,
    /// One resolution at a time: a burst of failed requests polls once.
    resolving: tokio::sync::Mutex<()>,
}

impl Follow {
    fn new(urls: &[String]) -> Follow {
        Follow {
            // Already checked by `Config::from_args`.
            endpoints: crate::http::Endpoints::parse("--coordinator", urls)
                .expect("URLs checked by Config::from_args"),
            seen: std::sync::Mutex::new((String::new(), 0)),
            resolving: tokio::sync::Mutex::new(()),
        }
    }
}

/// What one coordinator's `/status` says of itself.
#[derive(Debug, Clone, PartialEq)]
struct Claim {
    index: usize,
    id: String,
    epoch: u64,
}

/// Only the part of `/status` the gateway needs.
#[derive(serde::Deserialize)]
struct StatusControlPlane {
    #[serde(default)]
    control_plane: crate::api::ControlPlaneView,
}

/// Whether a coordinator's control plane makes it the one to follow:
/// `this: active`, or no control plane at all (`mode` "", a coordinator
/// without HA, which is active by being the only one).
fn claims_active(cp: &crate::api::ControlPlaneView) -> bool {
    cp.this == "active" || cp.mode.is_empty()
}

/// Among the coordinators that claim to be active, the one to follow: the
/// highest epoch (a deposed one that has not noticed yet has a lower one);
/// on a tie the one followed now, then the first listed.
fn pick(claims: &[Claim], current: usize) -> Option<&Claim> {
    claims
        .iter()
        .max_by_key(|c| (c.epoch, c.index == current, std::cmp::Reverse(c.index)))
}

impl Gateway {
    /// Polls every coordinator at once and follows the active one; returns
    /// the one followed afterwards. `failed`: the coordinator a request just
    /// failed on. If another resolution already moved away from it, nothing
    /// is polled again; if nobody claims to be active, the next one in the
    /// list is tried.
    async fn resolve(&self, failed: Option<usize>) -> usize {
        let _one_at_a_time = self.follow.resolving.lock().await;
        let (current, _) = self.follow.endpoints.current();
        if failed.is_some_and(|f| f != current) {
            return current;
        }
        let polls = (0..self.config.coordinators.len()).map(|i| self.poll(i));
        let claims: Vec<Claim> = futures::future::join_all(polls)
            .await
            .into_iter()
            .flatten()
            .collect();
        match pick(&claims, current) {
            Some(best) => {
                self.follow.endpoints.set_current(best.index);
                self.note_followed(best, current);
                best.index
            }
            None => match failed {
                Some(f) => self.follow.endpoints.move_past(f).0,
                None => current,
            },
        }
    }

    /// One coordinator's claim, if it answers in time and says it is active.
    async fn poll(&self, index: usize) -> Option<Claim> {
        let Upstream::Remote(http) = &self.upstream else {
            return None;
        };
        let url = self.endpoint(index, &["status"]);
        let resp = http.get(url).timeout(POLL_TIMEOUT).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let status: StatusControlPlane = resp.json().await.ok()?;
        let cp = status.control_plane;
        claims_active(&cp).then(|| Claim {
            index,
            id: cp.active.map(|a| a.id).unwrap_or_default(),
            epoch: cp.epoch,
        })
    }

    /// Records the followed coordinator's id and epoch, and narrates a change.
    fn note_followed(&self, now: &Claim, before: usize) {
        let mut seen = self.follow.seen.lock().unwrap_or_else(|p| p.into_inner());
        let changed = now.index != before || seen.1 != now.epoch || seen.0 != now.id;
        *seen = (now.id.clone(), now.epoch);
        drop(seen);
        if changed {
            let url = &self.follow.endpoints.urls()[now.index];
            let name = if now.id.is_empty() { url } else { &now.id };
            println!(
                "↪ now following coordinator {name} (epoch {}) at {url}",
                now.epoch
            );
        }
    }

    /// `/stats`' and `/`'s `following`: only with several coordinators.
    fn following(&self) -> Option<crate::api::FollowedCoordinator> {
        if self.config.coordinators.len() < 2 {
            return None;
        }
        let (id, epoch) = self
            .follow
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(crate::api::FollowedCoordinator {
            url: self.follow.endpoints.current().1.to_string(),
            id,
            epoch,
            coordinators: self.follow.endpoints.urls().to_vec(),
        })
    }
}

/// Polls the coordinators every [`FOLLOW_EVERY`], for as long as the gateway
/// serves (only with several of them).
async fn follow_loop(gateway: Arc<Gateway>) {
    if gateway.config.coordinators.len() < 2 || gateway.is_in_process() {
        return;
    }
    let mut ticker = tokio::time::interval(FOLLOW_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        gateway.resolve(None).await;
    }
}

// ---------------------------------------------------------------------------
// Forwarding
// ---------------------------------------------------------------------------

/// The coordinator's answer, read in full: its status and its body.
type Answer = (StatusCode, Bytes);

/// Why no answer came, and whether the request surely never reached the
/// coordinator (the connection could not be made): only then may it be sent
/// to another.
#[derive(Debug)]
struct NoAnswer {
    why: String,
    never_reached: bool,
}

impl NoAnswer {
    fn maybe_reached(why: String) -> NoAnswer {
        NoAnswer {
            why,
            never_reached: false,
        }
    }
}

/// Which coordinator's answer (an index into `Config::coordinators`), and
/// the answer.
type Called = (usize, Result<Answer, NoAnswer>);

impl Gateway {
    /// Sends one request to the coordinator followed now, whichever the
    /// upstream, and returns its answer, or why none came ("timed out",
    /// "cannot connect: ..."). `body`, if any, is JSON. With several
    /// coordinators, a request that reached no active one (see the
    /// module's invariants) is sent once more, to the active one found
    /// meanwhile.
    async fn call(&self, method: Method, segments: &[&str], body: Option<Bytes>) -> Called {
        let (first, _) = self.follow.endpoints.current();
        let answer = self
            .call_one(first, method.clone(), segments, body.clone())
            .await;
        if self.config.coordinators.len() < 2 || !reached_no_active(&answer) {
            return (first, answer);
        }
        let next = self.resolve(Some(first)).await;
        if next == first {
            return (first, answer);
        }
        (next, self.call_one(next, method, segments, body).await)
    }

    /// One request to one coordinator.
    async fn call_one(
        &self,
        coordinator: usize,
        method: Method,
        segments: &[&str],
        body: Option<Bytes>,
    ) -> Result<Answer, NoAnswer> {
        let url = self.endpoint(coordinator, segments);
        let timeout = self.config.timeout;
        match &self.upstream {
            Upstream::Remote(http) => call_remote(http, method, url, body, timeout).await,
            Upstream::Local { router, .. } => call_local(router, method, &url, body, timeout)
                .await
                .map_err(NoAnswer::maybe_reached),
        }
    }
}

/// In-process and typed (see [`LocalCoordinator`]): the coordinator's answer
/// as the router would have given it, a success encoded as its `Json` would
/// be and an error as its `{"detail": ...}`, so `relay` treats both
/// upstreams alike. No answer within `timeout` is "timed out", as over HTTP,
/// and giving up drops the coordinator's work where it waits, as its server
/// does to a handler whose client has hung up.
async fn call_direct<T: serde::Serialize>(
    answer: BoxFuture<'static, Result<T, ApiError>>,
    timeout: Duration,
) -> Result<Answer, NoAnswer> {
    let encoded = match tokio::time::timeout(timeout, answer).await {
        Err(_) => return Err(NoAnswer::maybe_reached("timed out".into())),
        Ok(Ok(value)) => (StatusCode::OK, serde_json::to_vec(&value)),
        Ok(Err(e)) => (e.status, serde_json::to_vec(&json!({ "detail": e.detail }))),
    };
    match encoded {
        (status, Ok(body)) => Ok((status, body.into())),
        (_, Err(e)) => Err(NoAnswer::maybe_reached(format!("unencodable answer: {e}"))),
    }
}

/// Whether an answer proves the request reached no active coordinator: the
/// connection was never made, or a standby said it is not the active one.
fn reached_no_active(answer: &Result<Answer, NoAnswer>) -> bool {
    match answer {
        Err(no) => no.never_reached,
        Ok((status, body)) => {
            crate::http::not_active_coordinator(*status, &detail_of(*status, body))
        }
    }
}

/// Over HTTP, on one of the pool's keep-alive connections.
async fn call_remote(
    http: &reqwest::Client,
    method: Method,
    url: Url,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<Answer, NoAnswer> {
    // The timeout covers the whole exchange, the body included.
    let mut request = http.request(method, url).timeout(timeout);
    if let Some(body) = body {
        request = request.header(CONTENT_TYPE, "application/json").body(body);
    }
    let resp = request.send().await.map_err(|e| NoAnswer {
        why: describe_reqwest_error(&e),
        never_reached: crate::http::never_reached(&e),
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| NoAnswer::maybe_reached(describe_reqwest_error(&e)))?;
    Ok((status, body))
}

/// In-process: the coordinator's router handles the request as its server
/// would, minus the socket. No answer within `timeout` is "timed out", as
/// over HTTP. Giving up drops the coordinator's handler where it waits,
/// exactly what its server does to a handler whose client has hung up.
async fn call_local(
    router: &Router,
    method: Method,
    url: &Url,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<Answer, String> {
    let request = local_request(method, url, body)?;
    let answer = async {
        // A Router never fails as a Service (its error is `Infallible`):
        // everything that goes wrong in a handler is an HTTP answer.
        let Ok(resp) = router.clone().oneshot(request).await;
        let status = resp.status();
        // No size limit: it is our own coordinator's answer, and its body is
        // already in memory (a JSON value it serialized).
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .map_err(|e| format!("unreadable answer: {e}"))?;
        Ok((status, body))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The request a client would send the coordinator's port: the same method,
/// the same percent-encoded path (the router decodes it, as its server
/// would), and the JSON body with its content type.
fn local_request(
    method: Method,
    url: &Url,
    body: Option<Bytes>,
) -> Result<axum::http::Request<Body>, String> {
    let builder = axum::http::Request::builder()
        .method(method)
        .uri(url.path());
    let request = match body {
        Some(body) => builder
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body)),
        None => builder.body(Body::empty()),
    };
    request.map_err(|e| format!("cannot build the request: {e}"))
}

/// 503 for a coordinator that did not answer (refused, timed out, reset).
/// A write that may have reached it says its outcome is unknown.
fn unreachable(gw: &Gateway, coordinator: usize, no: &NoAnswer, write: bool) -> ApiError {
    bump(&gw.metrics.errors);
    let url = gw.follow.endpoints.urls()[coordinator].as_str();
    let unknown = if write && !no.never_reached {
        "; the write may or may not have been applied: read the key to know"
    } else {
        ""
    };
    ApiError::unavailable(format!(
        "Coordinator unreachable: {} ({url}{}){unknown}",
        no.why,
        gw.in_process_note()
    ))
}

/// Turns the coordinator's answer into the gateway's, whichever upstream it
/// came from: a success body is passed through byte for byte; an error keeps
/// its status and its `detail`.
fn relay(gw: &Gateway, called: Called, write: bool) -> Result<Response, ApiError> {
    relay_counted(gw, called, &gw.metrics.forwarded, write)
}

/// [`relay`], counting the answer in `forwarded` (writes and reads, as the
/// original counts them) or another counter.
fn relay_counted(
    gw: &Gateway,
    (coordinator, answer): Called,
    forwarded: &AtomicU64,
    write: bool,
) -> Result<Response, ApiError> {
    let (status, body) = answer.map_err(|no| unreachable(gw, coordinator, &no, write))?;
    bump(forwarded);
    if status.is_success() {
        // `from_static`: a `&str` header value is copied for each answer.
        let json = HeaderValue::from_static("application/json");
        return Ok((status, [(CONTENT_TYPE, json)], body).into_response());
    }
    if status.is_server_error() {
        bump(&gw.metrics.errors);
    }
    Err(ApiError::new(status, detail_of(status, &body)))
}

/// Forwards one request and relays the answer.
async fn forward(
    gw: &Gateway,
    method: Method,
    segments: &[&str],
    body: Option<Bytes>,
) -> Result<Response, ApiError> {
    let write = method == Method::POST;
    let called = gw.call(method, segments, body).await;
    relay(gw, called, write)
}

/// `POST /write`: checked here too, so bad input never costs a round trip.
async fn write(
    State(gw): Shared,
    ApiJson(req): ApiJson<WriteRequest>,
) -> Result<Response, ApiError> {
    validate_key_value(&req.key, Some(&req.value))?;
    if let Upstream::Local { direct, .. } = &gw.upstream {
        let answer = call_direct(direct.write(req), gw.config.timeout).await;
        return relay(&gw, (0, answer), true);
    }
    // Encoded once, and sent as is to whichever coordinator is followed.
    let body = serde_json::to_vec(&req)
        .map_err(|e| ApiError::internal(format!("cannot encode the write: {e}")))?;
    forward(&gw, Method::POST, &["write"], Some(body.into())).await
}

/// `GET /read/{key}`: the key may contain anything, `/` included.
async fn read(
    State(gw): Shared,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(key) = key.map_err(|e| {
        ApiError::bad_request(json!({"error": "invalid key", "reason": e.body_text()}))
    })?;
    validate_key_value(&key, None)?;
    let relayed = match &gw.upstream {
        Upstream::Local { direct, .. } => {
            let answer = call_direct(direct.read(key.clone()), gw.config.timeout).await;
            relay(&gw, (0, answer), false)
        }
        Upstream::Remote(_) => forward(&gw, Method::GET, &["read", &key], None).await,
    };
    relayed.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::not_found(format!("Key '{key}' not found"))
        } else {
            e
        }
    })
}

/// `GET /cluster-status`: the coordinator's `/status`.
async fn cluster_status(State(gw): Shared) -> Result<Response, ApiError> {
    let called = gw.call(Method::GET, &["status"], None).await;
    relay_counted(&gw, called, &gw.metrics.forwarded_status, false)
}

// ---------------------------------------------------------------------------
// The gateway's own endpoints
// ---------------------------------------------------------------------------

async fn stats(State(gw): Shared) -> Json<GatewayStats> {
    Json(GatewayStats {
        gateway: gw.metrics.view(),
        rate_limiter: gw.limiter.as_ref().map(RateLimiter::stats),
        load_balancer: None,
        following: gw.following(),
    })
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics(State(gw): Shared) -> Response {
    let limiter = gw.limiter.as_ref().map(RateLimiter::stats);
    metrics::render(&gw.metrics.by_code, &gw.metrics.view(), limiter.as_ref())
}

async fn health() -> Json<ServiceHealth> {
    Json(ServiceHealth {
        status: "ok".into(),
        service: "gateway".into(),
    })
}

async fn info(State(gw): Shared) -> Json<GatewayInfo> {
    Json(GatewayInfo {
        service: "gateway".into(),
        coordinator: gw.follow.endpoints.current().1.to_string(),
        rate_limiting: gw.limiter.is_some(),
        metrics: gw.metrics.view(),
        following: gw.following(),
    })
}

async fn no_such_endpoint(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "No endpoint {method} {}. The gateway serves POST /write, GET /read/{{key}}, \
         GET /cluster-status, GET /stats, GET /health, GET /metrics, GET / and GET /graduate.",
        uri.path()
    ))
}

/// The course ends with a banner. This one is kvlab's own.
const GRADUATION: &str = r#"
   .-----------------------------------------------------------.
   |                                                           |
   |        kvlab  *  certificate of distributed survival      |
   |                                                           |
   |   You wrote to a leader, read from followers, and lived.  |
   |   You killed nodes on purpose and watched quorums fail    |
   |   honestly instead of lying to you.                       |
   |                                                           |
   |   You know why W + R > N means never stale, and why       |
   |   W + R <= N means "eventually", which is a long word.    |
   |                                                           |
   |   You met a client that tried 25 times in 2 seconds, and  |
   |   you said 429. Politely. With a Retry-After header.      |
   |                                                           |
   |   This certificate has been acknowledged by a quorum      |
   |   of 2 out of 3 examiners (the third was partitioned).    |
   |                                                           |
   '-----------------------------------------------------------'
                 \o/   Congratulations, graduate!   \o/
"#;

async fn graduate() -> Response {
    (
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        GRADUATION.trim_start_matches('\n'),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["gateway"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn defaults_are_the_labs() {
        let a = args(&[]);
        assert_eq!(a.port, 8000);
        assert_eq!(a.coordinator, ["http://127.0.0.1:7000"]);
        assert!(!a.rate.rate_limit);
        assert_eq!(a.rate.rate_limit_max, 10);
        assert_eq!(a.rate.rate_limit_window, 60.0);
        assert_eq!(a.rate.rate_limit_strategy, Strategy::FixedWindow);
        let c = Config::from_args(&a).unwrap();
        assert!(c.rate_limit.is_none());
        assert_eq!(c.coordinator_str(), "http://127.0.0.1:7000");
    }

    #[test]
    fn strategies_parse_by_name() {
        for (name, s) in [
            ("fixed-window", Strategy::FixedWindow),
            ("fixed_window", Strategy::FixedWindow),
            ("sliding-window", Strategy::SlidingWindow),
            ("sliding_window", Strategy::SlidingWindow),
            ("token-bucket", Strategy::TokenBucket),
            ("token_bucket", Strategy::TokenBucket),
        ] {
            let a = args(&["--rate-limit", "--rate-limit-strategy", name]);
            let c = Config::from_args(&a).unwrap();
            assert_eq!(c.rate_limit.unwrap().strategy, s);
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        for (flags, needle) in [
            (vec!["--coordinator", "localhost:7000"], "--coordinator"),
            (vec!["--coordinator", "ftp://x"], "--coordinator"),
            (vec!["--rate-limit-max", "0"], "--rate-limit-max"),
            (vec!["--rate-limit-window", "0"], "--rate-limit-window"),
            (vec!["--timeout=-1"], "--timeout"),
        ] {
            let err = Config::from_args(&args(&flags)).unwrap_err().to_string();
            assert!(err.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn several_coordinators_are_listed_and_checked() {
        let a = args(&[
            "--coordinator",
            "http://a:1,http://b:2",
            "--coordinator",
            "http://c:3/",
        ]);
        let c = Config::from_args(&a).unwrap();
        let urls: Vec<&str> = c.coordinators.iter().map(Url::as_str).collect();
        assert_eq!(urls, ["http://a:1/", "http://b:2/", "http://c:3/"]);
        for (flag, needle) in [
            ("http://a:1,b:2", "'b:2'"),
            ("http://a:1,http://a:1", "twice"),
            (",", "at least one"),
        ] {
            let err = Config::from_args(&args(&["--coordinator", flag])).unwrap_err();
            let err = err.to_string();
            assert!(
                err.contains("--coordinator") && err.contains(needle),
                "{err}"
            );
        }
        let (router, direct) = stub();
        let err = Gateway::in_process(c, router, direct).err().unwrap();
        assert!(err.to_string().contains("one coordinator"), "{err}");
    }

    #[test]
    fn the_highest_epoch_is_followed_and_ties_keep_the_current_one() {
        let claim = |index, epoch| Claim {
            index,
            id: format!("c{index}"),
            epoch,
        };
        assert_eq!(pick(&[], 0), None);
        // A deposed coordinator that still says active has the lower epoch.
        let claims = [claim(0, 4), claim(2, 5)];
        assert_eq!(pick(&claims, 0).unwrap().index, 2);
        // Coordinators without a control plane (epoch 0): stay, else the first.
        let claims = [claim(0, 0), claim(1, 0)];
        assert_eq!(pick(&claims, 1).unwrap().index, 1);
        assert_eq!(pick(&claims, 2).unwrap().index, 0);
    }

    #[test]
    fn a_coordinator_without_a_control_plane_is_active_and_a_standby_is_not() {
        use crate::api::ControlPlaneView;
        let view = |mode: &str, this: &str| ControlPlaneView {
            mode: mode.into(),
            this: this.into(),
            ..Default::default()
        };
        assert!(claims_active(&view("", "")));
        assert!(claims_active(&view("etcd", "active")));
        assert!(claims_active(&view("embedded", "active")));
        assert!(!claims_active(&view("etcd", "standby")));
        assert!(!claims_active(&view("etcd", "deposed")));
        let not_active =
            |detail| crate::http::not_active_coordinator(StatusCode::SERVICE_UNAVAILABLE, &detail);
        assert!(not_active(json!(crate::api::NOT_ACTIVE_COORDINATOR)));
        assert!(not_active(
            json!({"error": crate::api::NOT_ACTIVE_COORDINATOR})
        ));
        assert!(!not_active(json!("Write quorum not available")));
    }

    #[test]
    fn keys_are_percent_encoded_for_the_coordinator() {
        let gw = Gateway::new(Config::from_args(&args(&[])).unwrap()).unwrap();
        let url = gw.endpoint(0, &["read", "a/b c?d#e%"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7000/read/a%2Fb%20c%3Fd%23e%25"
        );
        // Control characters too: the URL standard strips a raw tab, LF or CR.
        let url = gw.endpoint(0, &["read", "a\nb\tc\r\0%2e%2e"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7000/read/a%0Ab%09c%0D%00%252e%252e"
        );
        let prefixed = Config::from_args(&args(&["--coordinator", "http://h:1/kv/"])).unwrap();
        let gw = Gateway::new(prefixed).unwrap();
        assert_eq!(gw.endpoint(0, &["write"]).as_str(), "http://h:1/kv/write");
    }

    // -- In-process: a stand-in coordinator router, the gateway's router
    // -- driven directly (no sockets at all).

    /// The bytes of the stand-in's `/status`: valid JSON, oddly spaced, so a
    /// re-encoding on the way would show.
    const STATUS_BYTES: &str = "{ \"leader\" : null,\n  \"followers\": [] }";

    /// A stand-in coordinator: writes fail their quorum; reading "missing"
    /// is its 404, "slow" never answers in time, any other key is echoed.
    fn stub_coordinator() -> Router {
        let write = |Json(w): Json<WriteRequest>| async move {
            let detail = json!({"error": "Write quorum not met", "sync_acks": 1, "key": w.key});
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "detail": detail })),
            )
        };
        let read = |Path(key): Path<String>| async move {
            match key.as_str() {
                "missing" => {
                    let detail = format!("Key '{key}' not found in quorum");
                    (StatusCode::NOT_FOUND, Json(json!({ "detail": detail }))).into_response()
                }
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    StatusCode::OK.into_response()
                }
                _ => Json(json!({ "key": key })).into_response(),
            }
        };
        let status = || async { ([(CONTENT_TYPE, "application/json")], STATUS_BYTES) };
        Router::new()
            .route("/write", post(write))
            .route("/read/{*key}", get(read))
            .route("/status", get(status))
    }

    /// The typed half of the stub: the same answers as its router.
    struct StubDirect;

    impl LocalCoordinator for StubDirect {
        fn write(&self, w: WriteRequest) -> BoxFuture<'static, Result<WriteResponse, ApiError>> {
            let detail = json!({"error": "Write quorum not met", "sync_acks": 1, "key": w.key});
            Box::pin(async move { Err(ApiError::unavailable(detail)) })
        }

        fn read(&self, key: String) -> BoxFuture<'static, Result<ReadResponse, ApiError>> {
            Box::pin(async move {
                match key.as_str() {
                    "missing" => Err(ApiError::not_found(format!(
                        "Key '{key}' not found in quorum"
                    ))),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Err(ApiError::internal("too late"))
                    }
                    _ => Ok(ReadResponse {
                        key,
                        value: "v".into(),
                        version: 1,
                        served_by: "follower-1".into(),
                        quorum_responses: 1,
                        seq: 1,
                        answered_by: vec![],
                        substitutes: vec![],
                        consistency: "linearizable".into(),
                        waited_for_commit_ms: None,
                    }),
                }
            })
        }
    }

    fn stub() -> (Router, Arc<dyn LocalCoordinator>) {
        (stub_coordinator(), Arc::new(StubDirect))
    }

    fn in_process(extra: &[&str]) -> Arc<Gateway> {
        let config = Config::from_args(&args(extra)).unwrap();
        let (router, direct) = stub();
        Gateway::in_process(config, router, direct).unwrap()
    }

    /// One request to the gateway, as a client would send it: the status,
    /// the content type and the body.
    async fn ask(gw: &Arc<Gateway>, method: Method, uri: &str) -> (StatusCode, String, Bytes) {
        let builder = axum::http::Request::builder().method(method).uri(uri);
        let request = if uri == "/write" {
            let body = json!({"key": "k", "value": "v"}).to_string();
            builder
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(body))
        } else {
            builder.body(Body::empty())
        };
        let Ok(resp) = router(gw.clone()).oneshot(request.unwrap()).await;
        let status = resp.status();
        let content_type = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, content_type, body)
    }

    fn json_of(body: &Bytes) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[tokio::test]
    async fn in_process_gateway_relays_the_coordinators_errors() {
        let gw = in_process(&[]);
        let (status, _, body) = ask(&gw, Method::POST, "/write").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            json_of(&body),
            json!({"detail": {"error": "Write quorum not met", "sync_acks": 1, "key": "k"}}),
            "the coordinator's detail, fields and all"
        );
        let (status, _, body) = ask(&gw, Method::GET, "/read/missing").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json_of(&body), json!({"detail": "Key 'missing' not found"}));
        let m = gw.metrics.view();
        assert_eq!(
            (m.forwarded_requests, m.errors),
            (2, 1),
            "only the 503 is an error"
        );
    }

    #[tokio::test]
    async fn in_process_gateway_passes_answers_through() {
        let gw = in_process(&[]);
        let (status, content_type, body) = ask(&gw, Method::GET, "/cluster-status").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        assert_eq!(body, STATUS_BYTES.as_bytes(), "byte for byte");
        // The key reaches the coordinator decoded, as over HTTP.
        let odd = "a/b c?d#e%";
        let (status, _, body) = ask(&gw, Method::GET, "/read/a%2Fb%20c%3Fd%23e%25").await;
        assert_eq!(
            (status, &json_of(&body)["key"]),
            (StatusCode::OK, &json!(odd))
        );
    }

    #[tokio::test]
    async fn in_process_gateway_times_out_like_a_remote_one() {
        let gw = in_process(&["--timeout", "0.2"]);
        let (status, _, body) = ask(&gw, Method::GET, "/read/slow").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            json_of(&body),
            json!({"detail":
                "Coordinator unreachable: timed out (http://127.0.0.1:7000, in-process)"})
        );
        let m = gw.metrics.view();
        assert_eq!((m.forwarded_requests, m.errors), (0, 1));
    }

    #[test]
    fn in_process_gateway_says_so_and_needs_a_root_url() {
        let gw = in_process(&[]);
        assert!(describe(&gw).contains("coordinator http://127.0.0.1:7000 (in-process),"));
        let prefixed = Config::from_args(&args(&["--coordinator", "http://h:1/kv/"])).unwrap();
        let (router, direct) = stub();
        let err = Gateway::in_process(prefixed, router, direct).err().unwrap();
        assert!(err.to_string().contains("no path"), "{err}");
    }
}
