//! The framed wire: kvlab's internal calls without HTTP/1.1's cost per call.
//!
//! Between kvlab's own processes (the coordinator and its leader, the leader
//! and its followers) most of a call's cost was never the work: it was the
//! HTTP client's pool and connection task, the request and answer encoded
//! and parsed as HTTP/1.1, a hand-off to another task each way. Here a
//! connection is opened once, as HTTP (`GET /wire` with `Upgrade:
//! kvlab-frames/1`, so the cluster secret, TLS and a partition's hold apply
//! to it as to any request), and the server switches it (101) to frames:
//!
//! ```text
//! request:  u32 length | u8 method | u16 path length, path | u8 header count,
//!           (u8 name length, name, u16 value length, value)* | body
//! answer:   u32 length | u16 status | u8 header count, headers as above | body
//! ```
//!
//! (all integers big-endian; `length` counts what follows it). A call is
//! one frame each way, on a connection the caller owns for the call, so
//! nothing is handed to another task: the caller's task writes the frame
//! and reads the answer.
//!
//! The server does not answer frames itself: it turns each into the HTTP
//! request it stands for and hands it to the router that served the
//! upgrade, *through every layer of it*: the secret check, a partition's
//! hold, the term and epoch checks, the body limits, the handler. So a
//! call means exactly what the same request means in HTTP/JSON, and the
//! bodies are the same JSON (the leader encodes its entries once for all
//! its followers; see "Where the time goes" in ARCHITECTURE.md).
//!
//! Invariants:
//! - **The wire is offered, never required.** [`Client::call`] dials the
//!   wire on first use; a server that answers the upgrade with anything but
//!   101 (a student's node: 404) is spoken to in HTTP/JSON from then on,
//!   except after a 503 (a partition's hold), which sends only that one
//!   call over HTTP. [`Mode::Http`] (`--internal-wire
//!   http`) never dials it: every call is a plain request, for a person
//!   watching the traffic.
//! - **A connection carries one call at a time**, and is reused only after
//!   a whole answer was read: a call that fails or times out half-way
//!   drops its connection, so no answer is ever read for the wrong call.
//! - **A frame is bounded** ([`WIRE_MAX_FRAME`]) on both sides before it
//!   is read; a frame that breaks the format gets 400 (the connection goes
//!   on), a length past the bound or a connection lost mid-frame ends the
//!   connection.
//! - **Idle connections are closed** by the server after
//!   [`super::HEADER_READ_TIMEOUT`] and dropped by the client after
//!   [`super::CLIENT_POOL_IDLE`] (shorter), as kept-alive HTTP connections
//!   are; a frame, once begun, must arrive whole within
//!   [`super::BODY_READ_TIMEOUT`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::sync::watch;

use super::{describe_reqwest_error, detail_of, ApiError};
use crate::api::{WIRE_MAX_FRAME, WIRE_PATH, WIRE_PROTOCOL};

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// Why a frame could not be read as one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the frame ends inside its {0}")]
    Truncated(&'static str),
    #[error("unknown method code {0}")]
    Method(u8),
    #[error("the path is not a valid request path")]
    Path,
    #[error("header {0} is not a valid HTTP header")]
    Header(String),
    #[error("more than 255 headers")]
    TooManyHeaders,
    #[error("method {0} is not carried by the wire")]
    Unsupported(Method),
}

/// The methods the wire carries, and their codes.
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

fn method_code(method: &Method) -> Result<u8, FrameError> {
    (1..)
        .zip(METHODS.iter())
        .find_map(|(code, m)| (m == method).then_some(code))
        .ok_or_else(|| FrameError::Unsupported(method.clone()))
}

/// A request as it travels in a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestFrame {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// An answer as it travels in a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct AnswerFrame {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The frame of a request, its length prefix included.
pub fn encode_request<'a>(
    method: &Method,
    path: &str,
    headers: impl ExactSizeIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body: &[u8],
) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::with_capacity(64 + path.len() + body.len());
    frame.put_u32(0); // the length, filled in last
    frame.put_u8(method_code(method)?);
    put_short(&mut frame, path.as_bytes()).map_err(|_| FrameError::Path)?;
    put_headers(&mut frame, headers.len(), headers)?;
    frame.extend_from_slice(body);
    seal(frame)
}

/// The frame of an answer, its length prefix included.
/// The body must leave room for the status and headers under
/// [`MAX_ANSWER`] (see [`answer`]).
pub fn encode_answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64 + body.len());
    frame.put_u32(0);
    frame.put_u16(status.as_u16());
    // A router's answers carry a handful of short headers. One the format
    // cannot hold (a name over 255 bytes, a value over 64 KiB, past the
    // 255th) is left out rather than failing an answer already made.
    let fits = |(name, value): &(&HeaderName, &HeaderValue)| {
        name.as_str().len() <= u8::MAX as usize && value.len() <= u16::MAX as usize
    };
    let count = headers.iter().filter(fits).count().min(255);
    put_headers(&mut frame, count, headers.iter().filter(fits).take(count))
        .expect("only headers that fit");
    frame.extend_from_slice(body);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// The largest answer frame: the most its `u32` length can say. Answers are
/// not bounded like requests (a batch of reads of large values can be far
/// larger than any request), and come from a server the caller chose.
pub const MAX_ANSWER: usize = u32::MAX as usize;

fn seal(mut frame: Vec<u8>) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(frame.len() - 4).map_err(|_| FrameError::Truncated("length"))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

fn put_short(frame: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ()> {
    let len = u16::try_from(bytes.len()).map_err(|_| ())?;
    frame.put_u16(len);
    frame.extend_from_slice(bytes);
    Ok(())
}

/// `count` headers from `headers` (which must hold that many).
fn put_headers<'a>(
    frame: &mut Vec<u8>,
    count: usize,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> Result<(), FrameError> {
    let count = u8::try_from(count).map_err(|_| FrameError::TooManyHeaders)?;
    frame.put_u8(count);
    for (name, value) in headers {
        let name_len =
            u8::try_from(name.as_str().len()).map_err(|_| FrameError::Header(name.to_string()))?;
        frame.put_u8(name_len);
        frame.extend_from_slice(name.as_str().as_bytes());
        put_short(frame, value.as_bytes()).map_err(|_| FrameError::Header(name.to_string()))?;
    }
    Ok(())
}

/// Reads a request frame's content (what follows the length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<RequestFrame, FrameError> {
    let code = take_u8(&mut frame, "method")?;
    let method = code
        .checked_sub(1)
        .and_then(|i| METHODS.get(i as usize))
        .cloned()
        .ok_or(FrameError::Method(code))?;
    let path = take_short(&mut frame, "path")?;
    let path = String::from_utf8(path.to_vec()).map_err(|_| FrameError::Path)?;
    if !path.starts_with('/') || path.parse::<axum::http::Uri>().is_err() {
        return Err(FrameError::Path);
    }
    let headers = take_headers(&mut frame)?;
    Ok(RequestFrame {
        method,
        path,
        headers,
        body: frame,
    })
}

/// Reads an answer frame's content (what follows the length prefix).
pub fn decode_answer(mut frame: Bytes) -> Result<AnswerFrame, FrameError> {
    if frame.len() < 2 {
        return Err(FrameError::Truncated("status"));
    }
    let status =
        StatusCode::from_u16(frame.get_u16()).map_err(|_| FrameError::Truncated("status"))?;
    let headers = take_headers(&mut frame)?.into_iter().collect();
    Ok(AnswerFrame {
        status,
        headers,
        body: frame,
    })
}

fn take_u8(frame: &mut Bytes, what: &'static str) -> Result<u8, FrameError> {
    if frame.is_empty() {
        return Err(FrameError::Truncated(what));
    }
    Ok(frame.get_u8())
}

fn take_short(frame: &mut Bytes, what: &'static str) -> Result<Bytes, FrameError> {
    if frame.len() < 2 {
        return Err(FrameError::Truncated(what));
    }
    let len = frame.get_u16() as usize;
    if frame.len() < len {
        return Err(FrameError::Truncated(what));
    }
    Ok(frame.split_to(len))
}

fn take_headers(frame: &mut Bytes) -> Result<Vec<(HeaderName, HeaderValue)>, FrameError> {
    let count = take_u8(frame, "header count")?;
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = take_u8(frame, "headers")? as usize;
        if frame.len() < len {
            return Err(FrameError::Truncated("headers"));
        }
        let name = frame.split_to(len);
        let value = take_short(frame, "headers")?;
        let shown = String::from_utf8_lossy(&name).into_owned();
        let name = HeaderName::from_bytes(&name).map_err(|_| FrameError::Header(shown.clone()))?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| FrameError::Header(shown))?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Reads one frame's content from `io`, `limit` bytes at most. `Ok(None)`:
/// the connection ended cleanly before a frame began. Waits for the first
/// byte as long as it takes (the caller bounds that wait); once it is in,
/// the rest must come within `deadline`.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: usize,
    deadline: Duration,
) -> std::io::Result<Option<Bytes>> {
    match first_byte(io).await? {
        Some(first) => read_rest(io, first, limit, deadline).await.map(Some),
        None => Ok(None),
    }
}

/// The first byte of the next frame; `None` if the connection ended first.
/// (One byte, so a wait for it can be abandoned without losing any.)
async fn first_byte<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Option<u8>> {
    let mut first = [0u8; 1];
    Ok((io.read(&mut first).await? == 1).then_some(first[0]))
}

/// The rest of a frame whose first byte is in. The length is checked
/// against `limit` before any of the content is read.
async fn read_rest<R: AsyncRead + Unpin>(
    io: &mut R,
    first: u8,
    limit: usize,
    deadline: Duration,
) -> std::io::Result<Bytes> {
    let rest = async {
        let mut len = [first, 0, 0, 0];
        io.read_exact(&mut len[1..]).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes, over the limit of {limit}"),
            ));
        }
        let mut content = vec![0u8; len];
        io.read_exact(&mut content).await?;
        Ok(Bytes::from(content))
    };
    tokio::time::timeout(deadline, rest)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "a frame did not arrive whole in time",
            ))
        })
}

// ---------------------------------------------------------------------------
// The server side
// ---------------------------------------------------------------------------

/// Calls this process has answered on the wire (one process is one node).
static CALLS_SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many calls this process has answered on the wire.
pub fn calls_served() -> u64 {
    CALLS_SERVED.load(Ordering::Relaxed)
}

/// What [`super::serve`] gives every request it serves, so that a router can
/// offer the wire with [`upgrade`]: the router itself (frames are answered
/// through it), the signal to stop, and the connection's place in the
/// listener's caps (the wire keeps it, as the HTTP connection did).
#[derive(Clone)]
pub struct Offer {
    pub(super) router: Router,
    pub(super) stopping: watch::Receiver<bool>,
    pub(super) hold: Hold,
}

/// What a served connection holds while it is open (see [`super::serve`]),
/// taken over by the wire task if the connection switches.
pub(super) type Hold = Arc<Mutex<Option<Box<dyn std::any::Any + Send>>>>;

/// `GET /wire`: switches the connection to frames (see the module's notes).
/// Everything in front of this handler (the secret, a partition's hold)
/// has already let the request through.
pub async fn upgrade(mut req: Request) -> Response {
    let asks_for_wire = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(WIRE_PROTOCOL.as_bytes()));
    if !asks_for_wire {
        return ApiError::bad_request(format!(
            "{WIRE_PATH} switches a connection to kvlab's framed wire: send `Upgrade: \
             {WIRE_PROTOCOL}` and `Connection: upgrade` (kvlab's own processes do this; \
             everything is also served as plain HTTP/JSON)"
        ))
        .into_response();
    }
    let Some(offer) = req.extensions_mut().remove::<Offer>() else {
        // A frame asking for the wire again, or a router not served by `serve`.
        return ApiError::bad_request("this connection cannot switch to the framed wire")
            .into_response();
    };
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().cloned();
    let base = base_headers(req.headers());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // The connection's place under the caps is the wire's now:
                // the HTTP connection has ended by handing it over.
                let _hold = offer.hold.lock().unwrap().take();
                let io = hyper_util::rt::TokioIo::new(upgraded);
                serve_frames(io, offer, base, peer).await;
            }
            Err(e) => tracing::debug!(error = %e, "framed wire: the upgrade did not complete"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::UPGRADE, WIRE_PROTOCOL),
            (header::CONNECTION, "upgrade"),
        ],
    )
        .into_response()
}

/// The upgrade request's headers, minus those about that one request or
/// the switch: every call on the connection starts from them, so a call
/// carries the secret and the sender's name its connection was opened with.
fn base_headers(headers: &HeaderMap) -> HeaderMap {
    let mut base = headers.clone();
    for name in [
        header::HOST,
        header::UPGRADE,
        header::CONNECTION,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ] {
        base.remove(name);
    }
    base
}

/// Answers frames on an upgraded connection, one at a time, until the
/// client hangs up, sends something that is not a frame, stays idle too
/// long, or the server stops.
async fn serve_frames<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    mut offer: Offer,
    base: HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
) {
    let mut io = BufStream::new(io);
    loop {
        // Between frames the server may stop, or give up on an idle
        // client; a frame once begun is read, answered and sent whole.
        let first = tokio::select! {
            first = tokio::time::timeout(super::HEADER_READ_TIMEOUT, first_byte(&mut io)) => first,
            () = super::stopped(&mut offer.stopping) => return,
        };
        let Ok(Ok(Some(first))) = first else {
            return; // gone, broken, or idle too long
        };
        let Ok(content) = read_rest(&mut io, first, WIRE_MAX_FRAME, super::BODY_READ_TIMEOUT).await
        else {
            return; // too long, cut off, or too slow
        };
        CALLS_SERVED.fetch_add(1, Ordering::Relaxed);
        let answer = match decode_request(content) {
            Ok(frame) => answer(&offer.router, frame, &base, peer).await,
            Err(e) => {
                let refused = ApiError::bad_request(format!("not a kvlab-frames/1 request: {e}"));
                encode_answer(refused.status, &HeaderMap::new(), &refused_body(&refused))
            }
        };
        if io.write_all(&answer).await.is_err() || io.flush().await.is_err() {
            return;
        }
    }
}

fn refused_body(e: &ApiError) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "detail": e.detail })).unwrap_or_default()
}

/// One call: the frame made the request it stands for, sent through the
/// router, and its answer made a frame.
async fn answer(
    router: &Router,
    frame: RequestFrame,
    base: &HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
) -> Vec<u8> {
    use tower::ServiceExt;

    let mut req = Request::new(Body::from(frame.body.clone()));
    *req.method_mut() = frame.method;
    // Checked by `decode_request`.
    *req.uri_mut() = frame.path.parse().unwrap_or_default();
    let headers = req.headers_mut();
    headers.clone_from(base);
    for (name, value) in frame.headers {
        headers.insert(name, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(frame.body.len()));
    if let Some(peer) = peer {
        req.extensions_mut().insert(peer);
    }
    let resp = match router.clone().oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    };
    let (mut parts, body) = resp.into_parts();
    // The frame says the length; the answer's own would only take room.
    parts.headers.remove(header::CONTENT_LENGTH);
    // Room for the status and the headers (at most 255 of 64 KiB and a bit).
    let room = MAX_ANSWER - 2 - 1 - 255 * (1 + 255 + 2 + u16::MAX as usize);
    match axum::body::to_bytes(body, room).await {
        Ok(body) => encode_answer(parts.status, &parts.headers, &body),
        Err(e) => {
            // Still the node's headers (its term, its incarnation), so the
            // caller reads the failure for what it is.
            let failed = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the answer is too large for a frame: {e}"),
            );
            encode_answer(failed.status, &parts.headers, &refused_body(&failed))
        }
    }
}

// ---------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------

/// How a process speaks to kvlab's nodes (`--internal-wire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// The framed wire wherever a node offers it (kvlab's own nodes do).
    #[default]
    Frames,
    /// Plain HTTP/JSON for every call: slower, and readable with tcpdump.
    Http,
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plain-HTTP path failed; already described ("timed out", ...).
    #[error("{0}")]
    Http(String),
    #[error("timed out")]
    TimedOut,
    #[error("connection lost: {0}")]
    Lost(std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// An answer, from either path: what the caller reads of a response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The `detail` of an error answer (see [`detail_of`]).
    pub fn detail(&self) -> serde_json::Value {
        detail_of(self.status, &self.body)
    }

    /// A header holding a number (the term an answer was given in, say).
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }
}

/// Does a destination offer the wire? Learnt at the first dial (0: not
/// known yet).
const OFFERED: u8 = 1;
const NOT_OFFERED: u8 = 2;

/// The connections to one destination.
#[derive(Default)]
struct Pool {
    offered: AtomicU8,
    idle: Mutex<Vec<(Connection, Instant)>>,
}

type Connection = BufStream<reqwest::Upgraded>;

/// Idle connections kept per destination, as the HTTP client keeps.
const MAX_IDLE: usize = 256;

impl Pool {
    /// Keeps a connection whose call is over for the next call, and lets go
    /// of those idle too long (the oldest are first), so that none holds a
    /// place in the server's caps for nothing.
    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap();
        let stale = idle
            .iter()
            .take_while(|(_, since)| since.elapsed() >= super::CLIENT_POOL_IDLE)
            .count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }
}

/// kvlab's client for calls between its processes: the framed wire where
/// the destination offers it, plain HTTP/JSON otherwise. A clone shares the
/// connections (keep one per process, next to its `reqwest::Client`).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    mode: Mode,
    pools: Arc<Mutex<HashMap<String, Arc<Pool>>>>,
}

impl Client {
    /// Calls go through `http` (its secret, TLS and headers) when they are
    /// plain HTTP, and so does the upgrade that opens a wire connection.
    pub fn new(http: reqwest::Client, mode: Mode) -> Self {
        Client {
            http,
            mode,
            pools: Arc::default(),
        }
    }

    /// A call with a JSON body (`Content-Type: application/json`).
    pub async fn call_json(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: &impl serde::Serialize,
        timeout: Option<Duration>,
    ) -> Result<Answer, CallError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CallError::Http(format!("the request could not be encoded: {e}")))?;
        let mut all = Vec::with_capacity(headers.len() + 1);
        all.push((
            header::CONTENT_TYPE.as_str(),
            "application/json".to_string(),
        ));
        all.extend(headers.iter().cloned());
        self.call(base, method, path, &all, Bytes::from(body), timeout)
            .await
    }

    /// One call to `base` (`http://host:port`), framed if the destination
    /// offers the wire, else in HTTP; within `timeout` if one is given.
    pub async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Answer, CallError> {
        let call = self.call_untimed(base, method, path, headers, body);
        match timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(CallError::TimedOut)),
            None => call.await,
        }
    }

    async fn call_untimed(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, CallError> {
        if self.mode == Mode::Frames {
            let pool = self.pool(base);
            if pool.offered.load(Ordering::Relaxed) != NOT_OFFERED {
                if let Some(conn) = self.connection(base, &pool).await? {
                    return framed(&pool, conn, &method, path, headers, &body).await;
                }
            }
        }
        self.plain(base, method, path, headers, body).await
    }

    fn pool(&self, base: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap();
        match pools.get(base) {
            Some(pool) => pool.clone(),
            None => pools.entry(base.to_string()).or_default().clone(),
        }
    }

    /// An idle connection still open, or a new one; `None` if the
    /// destination does not switch to the wire (this time, or ever).
    async fn connection(&self, base: &str, pool: &Pool) -> Result<Option<Connection>, CallError> {
        while let Some((mut conn, since)) = pool.idle.lock().unwrap().pop() {
            if since.elapsed() < super::CLIENT_POOL_IDLE && still_open(&mut conn) {
                return Ok(Some(conn));
            }
        }
        self.dial(base, pool).await
    }

    async fn dial(&self, base: &str, pool: &Pool) -> Result<Option<Connection>, CallError> {
        let resp = self
            .http
            .get(format!("{base}{WIRE_PATH}"))
            .header(header::UPGRADE, WIRE_PROTOCOL)
            .header(header::CONNECTION, "upgrade")
            .send()
            .await;
        let resp = match resp {
            Ok(resp) => resp,
            // Nothing reached the node: the call cannot either.
            Err(e) if e.is_connect() => return Err(CallError::Http(describe_reqwest_error(&e))),
            // The node took the connection and dropped it (a server that
            // hangs up on an `Upgrade` it does not know): nothing was
            // sent yet, so this call goes as plain HTTP.
            Err(_) => return Ok(None),
        };
        match resp.status() {
            StatusCode::SWITCHING_PROTOCOLS => match resp.upgrade().await {
                Ok(upgraded) => {
                    pool.offered.store(OFFERED, Ordering::Relaxed);
                    Ok(Some(BufStream::new(upgraded)))
                }
                Err(_) => Ok(None),
            },
            // Refused for now (a partition's hold ends in 503; a busy or
            // confused node; a secret or an epoch the node refuses): this
            // call goes as plain HTTP, meets the same refusal there, and
            // the next one asks again.
            status
                if status.is_server_error()
                    || matches!(status.as_u16(), 401 | 403 | 408 | 409 | 429) =>
            {
                Ok(None)
            }
            // Anything else (a student's node: 404) means the wire is not
            // offered there: plain HTTP/JSON from now on.
            status => {
                if pool.offered.swap(NOT_OFFERED, Ordering::Relaxed) != NOT_OFFERED {
                    tracing::info!(
                        destination = base,
                        %status,
                        "does not offer the framed wire: speaking plain HTTP/JSON to it"
                    );
                }
                Ok(None)
            }
        }
    }

    async fn plain(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, CallError> {
        let mut req = self.http.request(method, format!("{base}{path}"));
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Http(describe_reqwest_error(&e)))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CallError::Http(describe_reqwest_error(&e)))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// Has the server closed an idle connection (or sent something unasked)?
/// One read that does not wait: a connection that is still open has
/// nothing to read.
fn still_open(conn: &mut Connection) -> bool {
    let mut byte = [0u8; 1];
    let read = conn.read(&mut byte);
    futures::FutureExt::now_or_never(read).is_none()
}

/// One call on a wire connection, which goes back to the pool only once its
/// answer was read whole.
async fn framed(
    pool: &Pool,
    mut conn: Connection,
    method: &Method,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Answer, CallError> {
    let headers: Vec<(HeaderName, HeaderValue)> = headers
        .iter()
        .map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FrameError::Header(name.to_string()))?;
            let value =
                HeaderValue::from_str(value).map_err(|_| FrameError::Header(name.to_string()))?;
            Ok((name, value))
        })
        .collect::<Result<_, FrameError>>()?;
    let frame = encode_request(method, path, headers.iter().map(|(n, v)| (n, v)), body)?;
    conn.write_all(&frame).await.map_err(CallError::Lost)?;
    conn.flush().await.map_err(CallError::Lost)?;
    let content = match read_frame(&mut conn, MAX_ANSWER, super::BODY_READ_TIMEOUT).await {
        Ok(Some(content)) => content,
        Ok(None) => {
            return Err(CallError::Lost(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed by the server before it answered",
            )))
        }
        Err(e) => return Err(CallError::Lost(e)),
    };
    let answer = decode_answer(content)?;
    pool.put_back(conn);
    Ok(Answer {
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> (
        Method,
        &'static str,
        Vec<(HeaderName, HeaderValue)>,
        &'static [u8],
    ) {
        (
            Method::POST,
            "/replicate?x=1",
            vec![
                (
                    HeaderName::from_static("x-kvlab-term"),
                    HeaderValue::from(7u64),
                ),
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
            ],
            br#"{"entries":[]}"#,
        )
    }

    fn encoded() -> Vec<u8> {
        let (method, path, headers, body) = request();
        encode_request(&method, path, headers.iter().map(|(n, v)| (n, v)), body).unwrap()
    }

    #[test]
    fn a_request_comes_back_as_it_was_sent() {
        let frame = encoded();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        let decoded = decode_request(Bytes::from(frame[4..].to_vec())).unwrap();
        let (method, path, headers, body) = request();
        assert_eq!(
            decoded,
            RequestFrame {
                method,
                path: path.to_string(),
                headers,
                body: Bytes::from_static(body),
            }
        );
    }

    #[test]
    fn an_answer_comes_back_as_it_was_sent() {
        let mut headers = HeaderMap::new();
        headers.insert("x-node-role", HeaderValue::from_static("leader"));
        let frame = encode_answer(
            StatusCode::CONFLICT,
            &headers,
            b"{\"detail\":\"stale term\"}",
        );
        let decoded = decode_answer(Bytes::from(frame[4..].to_vec())).unwrap();
        assert_eq!(decoded.status, StatusCode::CONFLICT);
        assert_eq!(decoded.headers, headers);
        assert_eq!(&decoded.body[..], b"{\"detail\":\"stale term\"}");
    }

    #[test]
    fn every_cut_of_a_request_is_refused_or_read_as_a_shorter_body() {
        let frame = encoded();
        let content = &frame[4..];
        // The body is the rest of the frame: a cut inside it is a shorter
        // body (the length prefix protects it), a cut before it an error.
        let body_start = content.len() - request().3.len();
        for cut in 0..content.len() {
            let decoded = decode_request(Bytes::from(content[..cut].to_vec()));
            if cut < body_start {
                assert!(
                    decoded.is_err(),
                    "a cut at {cut} of {} was read",
                    content.len()
                );
            } else {
                assert_eq!(decoded.unwrap().body.len(), cut - body_start);
            }
        }
    }

    #[test]
    fn bad_frames_are_named() {
        assert_eq!(
            decode_request(Bytes::from_static(&[9, 0, 1, b'/', 0])),
            Err(FrameError::Method(9))
        );
        assert_eq!(
            decode_request(Bytes::from_static(&[2, 0, 3, b'a', b'b', b'c', 0])),
            Err(FrameError::Path)
        );
        assert!(matches!(
            decode_request(Bytes::from_static(&[2, 0, 1, b'/', 1, 2, b'a', b' ', 0, 0])),
            Err(FrameError::Header(_))
        ));
        assert!(decode_answer(Bytes::from_static(&[0])).is_err());
        assert!(
            decode_answer(Bytes::from_static(&[0, 99, 0])).is_err(),
            "status 99"
        );
        assert!(matches!(
            encode_request(&Method::PATCH, "/", std::iter::empty(), b""),
            Err(FrameError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn a_frame_longer_than_the_limit_is_refused_before_it_is_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let len = (WIRE_MAX_FRAME as u32 + 1).to_be_bytes();
        client.write_all(&len).await.unwrap();
        let read = read_frame(&mut server, WIRE_MAX_FRAME, Duration::from_secs(5)).await;
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_frame_that_stalls_half_way_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        let read = read_frame(&mut server, WIRE_MAX_FRAME, Duration::from_millis(50)).await;
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        drop(client);
        let (_client, mut server) = tokio::io::duplex(64);
        drop(_client);
        assert!(
            read_frame(&mut server, WIRE_MAX_FRAME, Duration::from_secs(1))
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Serves `router` as every kvlab listener is served; its base URL.
    async fn served(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(super::super::serve(
            listener,
            router,
            std::future::pending(),
        ));
        base
    }

    fn echo() -> Router {
        use axum::routing::{get, post};
        Router::new()
            .route("/echo", post(|body: Bytes| async move { body }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            )
    }

    #[tokio::test]
    async fn a_client_speaks_frames_where_offered_and_plain_http_elsewhere() {
        let offered = served(echo().route(WIRE_PATH, axum::routing::get(upgrade))).await;
        let plain = served(echo()).await;
        let client = Client::new(super::super::client(), Mode::Frames);
        let call = |base: &str, path: &str, body: &'static str, timeout| {
            let (client, base, path) = (client.clone(), base.to_string(), path.to_string());
            async move {
                let method = if body.is_empty() {
                    Method::GET
                } else {
                    Method::POST
                };
                let body = Bytes::from_static(body.as_bytes());
                client.call(&base, method, &path, &[], body, timeout).await
            }
        };

        let before = calls_served();
        let answer = call(&offered, "/echo", "one", None).await.unwrap();
        assert_eq!(
            (answer.status, &answer.body[..]),
            (StatusCode::OK, &b"one"[..])
        );
        assert!(calls_served() > before, "answered on the wire");
        assert_eq!(
            client.pool(&offered).offered.load(Ordering::Relaxed),
            OFFERED
        );

        // A call given up half-way takes its connection with it: the next
        // call's answer is its own, not the late one.
        let late = call(&offered, "/slow", "", Some(Duration::from_millis(50))).await;
        assert!(matches!(late, Err(CallError::TimedOut)), "{late:?}");
        let answer = call(&offered, "/echo", "two", None).await.unwrap();
        assert_eq!(&answer.body[..], b"two");

        // No wire there (404): plain HTTP, remembered, same answers.
        let answer = call(&plain, "/echo", "three", None).await.unwrap();
        assert_eq!(&answer.body[..], b"three");
        assert_eq!(
            client.pool(&plain).offered.load(Ordering::Relaxed),
            NOT_OFFERED
        );
        let answer = call(&plain, "/nowhere", "", None).await.unwrap();
        assert_eq!(answer.status, StatusCode::NOT_FOUND);

        // `--internal-wire http` never asks.
        let http = Client::new(super::super::client(), Mode::Http);
        let answer = http
            .call(
                &offered,
                Method::POST,
                "/echo",
                &[],
                Bytes::from_static(b"four"),
                None,
            )
            .await
            .unwrap();
        assert_eq!(&answer.body[..], b"four");
        assert!(http.pools.lock().unwrap().is_empty());

        // Nobody there: the dial's own error, as plain HTTP would say it.
        let gone = call("http://127.0.0.1:1", "/echo", "five", None).await;
        assert!(
            matches!(&gone, Err(CallError::Http(e)) if e.starts_with("cannot connect")),
            "{gone:?}"
        );
    }
}
