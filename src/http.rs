//! HTTP plumbing shared by every component.
//!
//! - [`ApiError`]: an error answer, always `{"detail": ...}` with a status, so
//!   every component fails the same way and never with a bare text body.
//! - [`ApiJson`]: a JSON body extractor whose rejections (malformed JSON, a
//!   missing field, a wrong content type) are turned into a clear `ApiError`.
//! - [`client`]: the one pooled keep-alive HTTP client a component uses to talk
//!   to the others.
//! - [`bind`] and [`serve`]: listening with an error that names the port;
//!   [`limited`]: the input limits a served router gets.
//! - [`error_detail`] and [`detail_of`]: the `detail` of another component's
//!   error answer, whatever shape its body has.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Largest request body any component accepts. Larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

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
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
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
    let status = if status == StatusCode::PAYLOAD_TOO_LARGE
        || rejection.body_text().contains("length limit")
    {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        status
    };
    let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body is larger than {MAX_BODY_BYTES} bytes")
    } else {
        rejection.body_text()
    };
    ApiError::new(status, json!({ "error": error, "reason": reason }))
}

/// Limits on what a client may store, checked at every entry point.
pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

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

/// The client of a node: as [`client`], and every request names the node
/// in `X-Kvlab-From`, so that a peer's fault hooks can tell who sent it
/// (see `node::faults`).
pub fn client_from(node_id: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(id) = reqwest::header::HeaderValue::from_str(node_id) {
        headers.insert(crate::node::faults::HEADER_FROM, id);
    }
    builder(headers).build().expect("building the HTTP client")
}

/// Every request of kvlab's own clients carries the cluster secret, when
/// this process has one (see `auth`): no call site can forget it.
fn builder(mut headers: reqwest::header::HeaderMap) -> reqwest::ClientBuilder {
    if let Some(secret) = crate::auth::installed() {
        if let Ok(mut value) = reqwest::header::HeaderValue::from_str(secret.expose()) {
            value.set_sensitive(true);
            headers.insert(crate::auth::HEADER_SECRET, value);
        }
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
}

/// Binds a listener, with an error that says which address was taken.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "port {} is already in use (is another kvlab still running? \
                 pick other ports with the --port flags)",
                addr.port()
            )
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {e}")
        }
    })
}

/// Serves a router until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        limited(router).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}

/// A router with the input limits every component applies to its requests
/// ([`MAX_BODY_BYTES`]), whether they come over TCP ([`serve`]) or are handed
/// to it in-process (the gateway of `kvlab up`).
pub fn limited(router: Router) -> Router {
    router.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
