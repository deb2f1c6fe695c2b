//! A do-nothing key-value server, to measure `kvlab bench` itself.
//!
//! It answers kvlab's `POST /write` and `GET /read/{key}` from an in-memory
//! map, as fast as axum can. Pointing the generator at it shows the most the
//! generator can push on this machine and what that costs it in CPU: the
//! figure that says whether the generator is small next to a real cluster.
//!
//!     cargo run --release --example bench_stub -- 127.0.0.1:18080
//!     kvlab bench --url http://127.0.0.1:18080 -c 64 --duration 10

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use kvlab::api::WriteRequest;
use serde_json::{json, Value};

type Store = Arc<Mutex<HashMap<String, String>>>;

async fn write(State(store): State<Store>, Json(req): Json<WriteRequest>) -> Json<Value> {
    let body = json!({"status": "success", "key": req.key, "value": req.value});
    store.lock().unwrap().insert(req.key, req.value);
    Json(body)
}

async fn read(State(store): State<Store>, Path(key): Path<String>) -> (StatusCode, Json<Value>) {
    match store.lock().unwrap().get(&key) {
        Some(value) => (StatusCode::OK, Json(json!({"key": key, "value": value}))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": format!("Key '{key}' not found")})),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let app = Router::new()
        .route("/write", post(write))
        .route("/read/{*key}", get(read))
        .with_state(Store::default());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench_stub listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
