//! `kvlab client` against a stub gateway: one-shot forms, exit codes, the
//! interactive mode driven through stdin, and the prompt on a real terminal.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tty::{self, Tty};

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Starts a stub gateway on an ephemeral port; it lives as long as the test.
fn stub_gateway() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/write", post(write))
                .route("/read/{*key}", get(read))
                .route("/cluster-status", get(|| async {
                    Json(json!({"leader": {"node_id": "leader", "url": "http://l", "status": "alive"},
                        "followers": [{"node_id": "follower-1", "url": "http://f1", "status": "dead"}],
                        "quorum": {"W": 1, "R": 1, "total_alive": 0, "can_write": false, "can_read": false}}))
                }))
                .route("/stats", get(|| async {
                    Json(json!({"gateway": {"total_requests": 5, "forwarded_requests": 4,
                        "rate_limited_requests": 1, "errors": 0}, "rate_limiter": null}))
                }))
                .route("/graduate", get(|| async { "CONGRATULATIONS" }));
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    url
}

async fn write(Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if body["key"] == "busy" {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"detail": {
            "error": "Write quorum not available", "alive_followers": 1, "required": 2}})),
        );
    }
    (
        StatusCode::OK,
        Json(
            json!({"status": "success", "key": body["key"], "value": body["value"],
        "version": 1, "sync_acks": 2, "quorum": 2, "sync_replicated_to": ["http://f1", "http://f2"]}),
        ),
    )
}

async fn read(Path(key): Path<String>) -> (StatusCode, Json<Value>) {
    if key == "missing" {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"detail": format!("Key '{key}' not found")})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"key": key, "value": "v", "version": 4,
        "served_by": "follower-2", "quorum_responses": 2})),
    )
}

fn client(gateway: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvlab"))
        .args(["client", "--gateway", gateway])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn one_shot_commands_and_exit_codes() {
    let gw = stub_gateway();
    let (code, out) = client(&gw, &["write", "name", "distributed", "systems"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("wrote name = distributed systems"), "{out}");
    assert!(out.contains("acks 2/2"), "{out}");
    let (code, out) = client(&gw, &["write", "--key", "k", "--value", "v"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("wrote k = v"), "{out}");
    let (code, out) = client(&gw, &["read", "name"]);
    assert_eq!(code, 0);
    assert!(out.contains("served by follower-2"), "{out}");
    let (code, out) = client(&gw, &["read", "--key", "name"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = client(&gw, &["read", "missing"]);
    assert_eq!(code, 1);
    assert!(out.contains("404 Key 'missing' not found"), "{out}");
    let (code, out) = client(&gw, &["write", "busy", "x"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("Alive Followers: 1") && out.contains("Required: 2"),
        "{out}"
    );
    let (code, out) = client(&gw, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("follower-1") && out.contains("dead"), "{out}");
    let (code, out) = client(&gw, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.contains("rate limited 1"), "{out}");
    let (code, out) = client(&gw, &["--json", "read", "name"]);
    assert_eq!(code, 0);
    let raw: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(raw["version"], 4);
    let (code, out) = client(&gw, &["graduate"]);
    assert_eq!(code, 0);
    assert!(out.contains("CONGRATULATIONS"));
    let (code, out) = client(&gw, &["write", "lonely"]);
    assert_ne!(code, 0);
    assert!(out.contains("needs a key and a value"), "{out}");
}

#[test]
fn unreachable_gateway_is_explained() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, out) = client(&url, &["read", "x"]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("cannot reach the gateway at {url}")),
        "{out}"
    );
}

#[test]
fn interactive_mode_through_stdin() {
    let gw = stub_gateway();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvlab"))
        .args(["client", "--gateway", &gw])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"write cart three items\nread cart\nstatus\nbogus\nread\nhelp\nquit\nread never\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("wrote cart = three items"), "{text}");
    assert!(text.contains("served by follower-2"), "{text}");
    assert!(text.contains("Cluster status"), "{text}");
    assert!(text.contains("unknown command 'bogus'"), "{text}");
    assert!(text.contains("usage: read <key>"), "{text}");
    assert!(text.contains("write <key> <value...>"), "{text}");
    assert!(!text.contains("never"), "nothing runs after quit: {text}");
    assert!(text.trim_end().ends_with("bye"));
}

/// The prompt as a person meets it: a pseudo-terminal, line editing, the
/// history file in `$HOME`, and Ctrl-D or Ctrl-C to leave.
#[test]
fn prompt_on_a_real_terminal() {
    if !tty::available() {
        return;
    }
    let gw = stub_gateway();
    let home = tempfile::Builder::new()
        .prefix("kvlab-home-")
        .tempdir()
        .unwrap();
    let home_path = home.path().to_str().unwrap();
    let t = Tty::spawn(
        env!("CARGO_BIN_EXE_kvlab"),
        &["client", "--gateway", &gw],
        &[("HOME", home_path), ("NO_COLOR", "1"), ("TERM", "xterm")],
    );
    let wait = Duration::from_secs(20);
    t.wait_for(&format!("talking to {gw}. Type help."), wait);
    t.wait_for(">>> ", wait);

    t.type_line("help");
    t.wait_for("quit | exit | q", wait);
    t.type_line("write cart three items");
    t.wait_for("wrote cart = three items", wait);
    t.type_line("read cart");
    t.wait_for_n("served by follower-2", 1, wait);
    // Up recalls the last line from the history: the read runs again.
    t.key("Up");
    t.key("Enter");
    t.wait_for_n("served by follower-2", 2, wait);
    t.type_line("status");
    t.wait_for("Cluster status", wait);
    t.type_line("read missing");
    t.wait_for("404 Key 'missing' not found", wait);
    t.type_line("dance");
    t.wait_for("unknown command 'dance' (type help)", wait);
    t.type_line("stats");
    t.wait_for("rate limited 1", wait);
    t.key("C-d");
    let screen = t.wait_for("[exit 0]", wait);
    assert!(screen.contains("bye"), "{screen}");
    assert!(!screen.contains("panicked"), "{screen}");

    let history = std::fs::read_to_string(home.path().join(".kvlab_history")).unwrap();
    assert!(history.contains("write cart three items"), "{history}");
    assert!(history.contains("dance"), "{history}");

    // A second session starts with that history: Up finds the last line.
    let t = Tty::spawn(
        env!("CARGO_BIN_EXE_kvlab"),
        &["client", "--gateway", &gw],
        &[("HOME", home_path), ("NO_COLOR", "1"), ("TERM", "xterm")],
    );
    t.wait_for(">>> ", wait);
    t.key("Up");
    t.key("Enter");
    t.wait_for("rate limited 1", wait);
    // Ctrl-C leaves too, and a half-typed line is not run.
    t.type_text("write half done");
    t.key("C-c");
    let screen = t.wait_for("[exit 0]", wait);
    assert!(!screen.contains("wrote half"), "{screen}");
    assert!(screen.contains("bye"), "{screen}");
}

/// Without a home directory the prompt still works (the history is just
/// not kept), and on a terminal without NO_COLOR the answers are coloured.
#[test]
fn prompt_without_a_home_directory() {
    if !tty::available() {
        return;
    }
    let gw = stub_gateway();
    let t = Tty::spawn(
        "/usr/bin/env",
        &[
            "-u",
            "HOME",
            env!("CARGO_BIN_EXE_kvlab"),
            "client",
            "--gateway",
            &gw,
        ],
        &[("NO_COLOR", "1"), ("TERM", "xterm")],
    );
    let wait = Duration::from_secs(20);
    t.wait_for(">>> ", wait);
    t.type_line("read cart");
    t.wait_for("served by follower-2", wait);
    t.key("C-d");
    let screen = t.wait_for("[exit 0]", wait);
    assert!(!screen.contains("panicked"), "{screen}");
}

/// A port nothing listens on.
fn dead_gateway() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Several gateways, the first dead: one-shot commands go to the next one
/// (the list comma-separated or the flag repeated); an application error
/// (503) is the cluster's answer and moves nothing; bad lists are named.
#[test]
fn a_dead_first_gateway_is_skipped() {
    let (gw, dead) = (stub_gateway(), dead_gateway());
    let (code, out) = client(&format!("{dead},{gw}"), &["write", "k", "v"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("wrote k = v"), "{out}");
    assert!(out.contains(&format!("↪ {dead} does not answer")), "{out}");
    let (code, out) = client(&dead, &["--gateway", &gw, "read", "name"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("served by follower-2"), "{out}");
    // Interactive, with the live gateway first: a 503 keeps the client there.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvlab"))
        .args(["client", "--gateway", &format!("{gw},{dead}")])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"write busy x\nread name\nquit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Write quorum not available"), "{text}");
    assert!(text.contains("served by follower-2"), "{text}");
    assert!(
        !text.contains("does not answer"),
        "an error answer moves nothing: {text}"
    );
    for (list, needle) in [
        (format!("{gw},localhost:1"), "'localhost:1'"),
        (",".into(), "at least one"),
    ] {
        let (code, out) = client(&list, &["status"]);
        assert_ne!(code, 0, "{list}");
        assert!(
            out.contains("--gateway") && out.contains(needle),
            "{list}: {out}"
        );
    }
}
