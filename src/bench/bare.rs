//! The ceiling: a bare HTTP server that does no work, for `bench/compare.sh`.
//!
//! kvlab's read crosses the gateway and asks R followers; a write crosses
//! the gateway, the leader and W followers. How fast could *any* server on
//! this machine answer the same requests from the same generator? This one
//! answers `POST /write` and `GET /read/{key}` (the shapes `kvlab bench`
//! sends to kvlab) with a small JSON body and nothing else: no cluster, no
//! disk, no other process. Its requests per second is the ceiling the
//! issue's percentages are taken of.
//!
//! Invariants, so that the ceiling stays honest:
//! - the same HTTP stack as every kvlab listener (`http::serve`: hyper's
//!   HTTP/1 with keep-alive, the same limits, the same axum router type);
//! - the same runtime as the `kvlab up` process whose gateway the clients
//!   reach: tokio's multi-thread runtime with its default worker count (one
//!   per core), chosen by `main.rs` for every component except a node;
//! - a write's body is read to its end and parsed as the gateway parses it
//!   (`api::WriteRequest`), and each answer is a JSON body the size of
//!   kvlab's (`api::ReadResponse`-like), so neither side is spared the
//!   bytes kvlab moves.

use std::net::{Ipv4Addr, SocketAddr};

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::api::WriteRequest;

/// `kvlab bench-server` (hidden): the bare server's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Port to listen on, on loopback.
    #[arg(long, default_value_t = 8090)]
    pub port: u16,
}

/// The answer to every request: a key, a value and a version, about the
/// size of kvlab's read answer for a 100-byte value.
#[derive(Serialize)]
struct Answer {
    key: String,
    value: &'static str,
    version: u64,
}

/// A 100-byte value, as `kvlab bench` writes by default.
const VALUE: &str = "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuv";

/// The bare server's two routes, the shapes `kvlab bench` sends to kvlab.
pub fn router() -> Router {
    Router::new()
        .route("/read/{key}", get(read))
        .route("/write", post(write))
        .route("/health", get(|| async { "ok" }))
        // For `bench/per-op.sh`: the allocation count, if asked for.
        .route("/metrics", get(metrics))
}

async fn metrics() -> axum::response::Response {
    crate::metrics::render(&crate::metrics::registry("bench-server"))
}

async fn read(Path(key): Path<String>) -> Json<Answer> {
    Json(Answer {
        key,
        value: VALUE,
        version: 1,
    })
}

async fn write(Json(w): Json<WriteRequest>) -> Json<Answer> {
    Json(Answer {
        key: w.key,
        value: VALUE,
        version: 1,
    })
}

/// Serve until Ctrl-C or SIGTERM.
pub async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let listener = crate::http::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    crate::http::serve(listener, router(), crate::http::shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[test]
    fn the_value_is_what_bench_writes_by_default() {
        assert_eq!(VALUE, super::super::target::filler(100));
    }

    async fn ask(req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = router().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn answers_kvlabs_reads_and_writes_with_json() {
        let (status, body) = ask(Request::get("/read/bench-7").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["key"], "bench-7");
        let write = Request::post("/write")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"key":"bench-8","value":"x"}"#))
            .unwrap();
        let (status, body) = ask(write).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["key"], "bench-8");
    }

    #[tokio::test]
    async fn a_write_that_is_not_a_write_is_refused() {
        let write = Request::post("/write")
            .header("content-type", "application/json")
            .body(Body::from("not json"))
            .unwrap();
        let (status, _) = ask(write).await;
        assert!(status.is_client_error(), "{status}");
    }
}
