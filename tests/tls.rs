//! TLS off loopback (see `src/tls.rs`): a cluster started with `--host
//! 0.0.0.0` speaks TLS between all its components and to its clients,
//! refuses plain HTTP on every listener, and makes its own cluster CA; a
//! component that would listen off loopback without certificates refuses
//! to start.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

/// A plain-HTTP request to `url` (with the cluster secret, which must not
/// help): the listener's answer, status and body.
fn plain(method: reqwest::Method, url: &str) -> (u16, Value) {
    let resp = http()
        .secret()
        .timeout(secs(5))
        .build()
        .request(method, url)
        .json(&json!({}))
        .send()
        .unwrap_or_else(|e| panic!("plain HTTP to {url}: {e}"));
    (resp.status().as_u16(), resp.json().unwrap_or(Value::Null))
}

#[test]
fn a_cluster_on_every_address_talks_tls_and_refuses_plain_http() {
    let scratch = scratch();
    let c = Cluster::start_tls(&scratch, FAST_IN_MEMORY);
    let tls = c.tls_dir(&scratch);

    // The cluster works, over TLS: a write and a read through the gateway,
    // whose client trusts the CA `up` made (and checks the 127.0.0.1 name).
    let gateway = http().ca(&tls.join("ca.pem")).build();
    let written: Value = gateway
        .post(format!("{}/write", c.gateway))
        .json(&json!({"key": "k", "value": "sealed"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(written["sync_acks"], 2, "{written}");
    // The leader replicated to the followers at https URLs.
    for url in written["sync_replicated_to"].as_array().unwrap() {
        assert!(url.as_str().unwrap().starts_with("https://"), "{written}");
    }
    let read: Value = gateway
        .get(format!("{}/read/k", c.gateway))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(read["value"], "sealed", "{read}");
    let status = c.status();
    assert!(
        status["leader"]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{status}"
    );

    // Plain HTTP is refused on every listener, internal routes first, the
    // secret notwithstanding: it never reaches a handler.
    let http_of = |url: &str| url.replacen("https://", "http://", 1);
    let internal = [
        (
            reqwest::Method::POST,
            format!("{}/heartbeat", http_of(&c.registry)),
        ),
        (
            reqwest::Method::POST,
            format!("{}/node-died", http_of(&c.coordinator)),
        ),
        (
            reqwest::Method::GET,
            format!("{}/replication/peers", http_of(&c.node_url(0))),
        ),
        (
            reqwest::Method::POST,
            format!("{}/replicate", http_of(&c.node_url(1))),
        ),
        (
            reqwest::Method::POST,
            format!("{}/kill/follower-1", http_of(&c.coordinator)),
        ),
        (
            reqwest::Method::POST,
            format!("{}/write", http_of(&c.gateway)),
        ),
    ];
    for (method, url) in internal {
        let (code, body) = plain(method, &url);
        assert_eq!(code, 400, "{url}: {body}");
        assert_eq!(body["detail"]["error"], "TLS required", "{url}: {body}");
        assert!(
            body["detail"]["reason"]
                .as_str()
                .unwrap()
                .contains("https://"),
            "{body}"
        );
    }
    // The refused /kill did nothing.
    assert_eq!(
        c.follower("follower-1")["status"],
        "alive",
        "{}",
        c.status()
    );

    // A TLS client that does not trust the cluster CA gets no answer.
    let stranger = http().timeout(secs(5)).build();
    let e = stranger
        .get(format!("{}/status", c.coordinator))
        .send()
        .unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");

    // What `up` made: a CA and one certificate, the key private; no CA key.
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("key.pem"), 0o600);
    let mut files: Vec<String> = std::fs::read_dir(&tls)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca.pem", "cert.pem", "key.pem"]);
}

#[test]
fn a_component_off_loopback_without_certificates_refuses_to_start() {
    let scratch = scratch();
    let port = free_port_block();
    for args in [
        vec![
            "node",
            "--id",
            "follower-1",
            "--port",
            &port.to_string(),
            "--host",
            "0.0.0.0",
        ],
        vec!["registry", "--port", &port.to_string(), "--host", "0.0.0.0"],
        vec!["gateway", "--port", &port.to_string(), "--host", "0.0.0.0"],
    ] {
        let out = kvlab_in(&scratch)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("off loopback, where TLS is on by default")
                && err.contains("--tls-ca, --tls-cert and --tls-key"),
            "{args:?}: {err}"
        );
    }
    // A certificate without the CA, or a key without a certificate: named.
    let out = kvlab_in(&scratch)
        .args([
            "registry",
            "--port",
            &port.to_string(),
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need --tls-ca too"), "{err}");
    let out = kvlab_in(&scratch)
        .args([
            "registry",
            "--port",
            &port.to_string(),
            "--tls-key",
            "k.pem",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-cert"), "{err}");
}

/// Components started one by one, as the course does, but off loopback:
/// `kvlab certs` makes the files, and a registry given them answers https
/// (to a client that trusts the CA) and refuses plain HTTP.
#[test]
fn certs_made_by_hand_serve_a_component_started_alone() {
    let scratch = scratch();
    let dir = scratch.path().join("tls");
    let out = kvlab_in(&scratch)
        .args(["certs"])
        .arg(&dir)
        .args(["--name", "localhost", "--name", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port_block();
    let registry = kvlab_in(&scratch)
        .args(["registry", "--port", &port.to_string(), "--host", "0.0.0.0"])
        .arg("--tls-ca")
        .arg(dir.join("ca.pem"))
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _registry = StopOnDrop(registry);
    let client = http().ca(&dir.join("ca.pem")).timeout(secs(2)).build();
    wait("the registry to answer over TLS", secs(20)).until(|| {
        client
            .get(format!("https://127.0.0.1:{port}/nodes"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    let (code, body) = plain(
        reqwest::Method::POST,
        &format!("http://127.0.0.1:{port}/heartbeat"),
    );
    assert_eq!(
        (code, &body["detail"]["error"]),
        (400, &json!("TLS required")),
        "{body}"
    );
}
