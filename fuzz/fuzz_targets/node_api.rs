//! Fuzz target: JSON bodies through the real handlers of a node and of the
//! registry, in process (no sockets), with their state.
//!
//! `json_bodies` checks that every body parses or is refused; this target
//! checks what the handlers then do with a body that parses: a follower's
//! replication endpoints, promotion, the leader's write and read paths,
//! heartbeats and deregistration. Each input gets a fresh node, registry and
//! runtime, so an input replays the same way every time.
//!
//! Input: byte 0 picks the node's role (bit 0: leader). Then requests, each
//! a route byte (low 4 bits: the route; bit 6: leave out the cluster
//! secret, so internal routes must answer 401; bit 7: send an `X-Kvlab-Term`
//! header, the term being the next byte, 255 meaning `u64::MAX`), a length
//! byte and that many bytes of body. Every request must get an answer
//! without a panic, and no answer may be a 500.
//!
//! Left out on purpose: the routes that start work against other machines
//! (`PUT /replication/peers` starts replication streams to the URLs it is
//! given) or change process-wide state that would leak into the next input
//! (`/admin/partition`, `/admin/slow-disk`).

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use clap::Parser;
use kvlab::api::HEADER_TERM;
use kvlab::node::{self, term::TermFile, NodeState};
use kvlab::registry::{self, Registry};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// Which router a route belongs to.
enum To {
    Node,
    Registry,
}

const ROUTES: &[(To, &str, &str)] = &[
    (To::Node, "POST", "/replicate"),
    (To::Node, "POST", "/replicate/snapshot"),
    (To::Node, "POST", "/replicate/truncate"),
    (To::Node, "POST", "/admin/promote"),
    (To::Node, "POST", "/data"),
    (To::Node, "POST", "/batch/write"),
    (To::Node, "POST", "/batch/read"),
    (To::Node, "POST", "/replication/wait"),
    (To::Node, "POST", "/admin/pause-heartbeats"),
    (To::Node, "GET", "/replicate"),
    (To::Node, "GET", "/snapshot"),
    (To::Node, "GET", "/stats"),
    (To::Registry, "POST", "/heartbeat"),
    (To::Registry, "POST", "/deregister"),
    (To::Registry, "GET", "/nodes"),
    (To::Node, "GET", "/data"),
];

fn node(leader: bool) -> Arc<NodeState> {
    let role = if leader { "leader" } else { "follower" };
    let args = node::Args::parse_from(["node", "--id", role, "--port", "1", "--role", role]);
    NodeState::new(&args, None, TermFile::default())
}

fn registry() -> Arc<Registry> {
    Registry::new(registry::Config {
        coordinators: Arc::new(kvlab::http::Endpoints::one("http://127.0.0.1:1")),
        auto_spawn: false,
        spawn_delay: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
    })
}

async fn run(data: &[u8]) {
    let Some((&role, mut rest)) = data.split_first() else {
        return;
    };
    // Internal routes need the cluster secret (see `kvlab::auth`); the
    // process has one, as every process of a cluster does.
    kvlab::auth::install(
        kvlab::auth::Secret::parse("fuzzing-secret-0123456789", "the fuzz secret").unwrap(),
    );
    let node = node::router(node(role & 1 != 0));
    let registry = registry::router(registry());
    while rest.len() >= 2 {
        let (route, mut len) = (rest[0], rest[1] as usize);
        rest = &rest[2..];
        let mut term = None;
        if route & 0x80 != 0 && !rest.is_empty() {
            term = Some(match rest[0] {
                255 => u64::MAX,
                t => t as u64,
            });
            rest = &rest[1..];
        }
        len = len.min(rest.len());
        let (body, tail) = rest.split_at(len);
        rest = tail;

        let (to, method, path) = &ROUTES[(route & 0x0f) as usize % ROUTES.len()];
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(*path)
            .header("content-type", "application/json");
        if let Some(t) = term {
            req = req.header(HEADER_TERM, t);
        }
        if route & 0x40 == 0 {
            let secret = kvlab::auth::installed().expect("installed above");
            req = req.header(kvlab::auth::HEADER_SECRET, secret.expose());
        }
        let req = req.body(Body::from(body.to_vec())).unwrap();
        let router = match to {
            To::Node => node.clone(),
            To::Registry => registry.clone(),
        };
        // No handler here has anyone to wait for (the node has no peers),
        // so a request still pending after a few seconds is a hang.
        let answer = tokio::time::timeout(Duration::from_secs(5), router.oneshot(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} did not answer"))
            .unwrap();
        assert_ne!(
            answer.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {path} failed"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(data));
});
