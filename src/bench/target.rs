//! The wire protocol of the system under test, and what its answers mean.
//!
//! A [`Target`] turns "read key k" or "write key k" into one HTTP request and
//! turns the answer into an [`Outcome`]. Three targets exist: kvlab (gateway or
//! coordinator, docs/api.md), etcd's HTTP/JSON gateway, and the bare server
//! of `kvlab bench-server` (kvlab's requests, see `bare`), so that every
//! system is measured by the same client code and only the request shape
//! differs.
//!
//! Invariant: every answer's body is read to its end before `send` returns,
//! or the connection could not be reused for the next request (keep-alive
//! only works once the previous response is fully consumed).

use hyper::{Method, StatusCode};
use serde::Serialize;

use super::args::TargetKind;
use super::conn::{Conn, ConnError};
use super::keys::OpKind;
use crate::api::WriteRequest;

/// How one request ended, as the report counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200: the operation happened.
    Ok,
    /// A read of a key that does not exist: a valid answer, not an error.
    NotFound,
    /// 429: the gateway's rate limiter refused it.
    RateLimited,
    /// 503: no quorum, or the next hop is down.
    Unavailable,
    /// No complete answer within `--timeout`.
    Timeout,
    /// Could not open a connection, or it broke mid-request.
    Connect,
    /// Anything else: another status code, a broken connection.
    Other,
}

impl Outcome {
    /// Answers count in throughput and latency; errors only in the error table.
    pub fn is_answer(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NotFound)
    }
}

/// One system under test, at one base URL.
#[derive(Debug, Clone)]
pub struct Target {
    kind: TargetKind,
    /// The base URL's path, if any, without its trailing slash ("" mostly).
    prefix: String,
    /// The value every write stores, prepared once.
    value: String,
}

impl Target {
    /// `prefix` is the path of the base URL without its trailing slash.
    pub fn new(kind: TargetKind, prefix: &str, value_size: usize) -> Self {
        let value = filler(value_size);
        let value = match kind {
            TargetKind::Kvlab | TargetKind::Bare => value,
            TargetKind::Etcd => base64(value.as_bytes()),
        };
        Target {
            kind,
            prefix: prefix.to_string(),
            value,
        }
    }

    /// Send one operation on `conn` and classify its answer.
    pub async fn send(&self, conn: &mut Conn, op: OpKind, key: &str) -> Outcome {
        let (method, path, body) = self.request(op, key);
        let (status, body) = match conn.send(method, &path, body).await {
            Ok(answer) => answer,
            Err(e) => return classify_error(&e),
        };
        match (self.kind, op, status) {
            // etcd answers 200 to a range over a missing key, with no `kvs`.
            (TargetKind::Etcd, OpKind::Read, StatusCode::OK) if !etcd_range_found(&body) => {
                Outcome::NotFound
            }
            _ => classify_status(op, status),
        }
    }

    /// Method, path and JSON body of one operation.
    fn request(&self, op: OpKind, key: &str) -> (Method, String, Option<Vec<u8>>) {
        let (path, body) = match (self.kind, op) {
            // The bare server is sent exactly what kvlab is.
            (TargetKind::Kvlab | TargetKind::Bare, OpKind::Read) => {
                // Keys are `bench-<n>`: nothing in them needs percent-encoding.
                return (Method::GET, format!("{}/read/{key}", self.prefix), None);
            }
            (TargetKind::Kvlab | TargetKind::Bare, OpKind::Write) => (
                "/write",
                to_json(&WriteRequest {
                    key: key.to_string(),
                    value: self.value.clone(),
                }),
            ),
            (TargetKind::Etcd, OpKind::Read) => (
                "/v3/kv/range",
                to_json(&EtcdRange {
                    key: &base64(key.as_bytes()),
                }),
            ),
            (TargetKind::Etcd, OpKind::Write) => (
                "/v3/kv/put",
                to_json(&EtcdPut {
                    key: &base64(key.as_bytes()),
                    value: &self.value,
                }),
            ),
        };
        (Method::POST, format!("{}{path}", self.prefix), Some(body))
    }
}

fn to_json<T: Serialize>(body: &T) -> Vec<u8> {
    // Plain structs of strings: serializing them cannot fail.
    serde_json::to_vec(body).expect("request bodies serialize")
}

/// etcd's `/v3/kv/range` body. Without `serializable: true` the read is
/// linearizable: it goes through the leader's read index, like a quorum read.
#[derive(Serialize)]
struct EtcdRange<'a> {
    key: &'a str,
}

/// etcd's `/v3/kv/put` body.
#[derive(Serialize)]
struct EtcdPut<'a> {
    key: &'a str,
    value: &'a str,
}

/// The outcome an HTTP status means for an operation.
pub fn classify_status(op: OpKind, status: StatusCode) -> Outcome {
    match status {
        s if s.is_success() => Outcome::Ok,
        StatusCode::NOT_FOUND if op == OpKind::Read => Outcome::NotFound,
        StatusCode::TOO_MANY_REQUESTS => Outcome::RateLimited,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        _ => Outcome::Other,
    }
}

/// The outcome of a request that got no complete answer. A connection that
/// breaks mid-request counts as a connection error, like one that cannot be
/// opened: either way the server, or the path to it, went away.
fn classify_error(e: &ConnError) -> Outcome {
    match e {
        ConnError::Connect(_) => Outcome::Connect,
        ConnError::Timeout => Outcome::Timeout,
        ConnError::Http(e) if e.is_closed() || e.is_incomplete_message() || e.is_canceled() => {
            Outcome::Connect
        }
        ConnError::Http(_) => Outcome::Other,
    }
}

/// Whether an etcd range answer holds a key. etcd's JSON gateway leaves out
/// empty fields, so a miss has no `"kvs"` at all; looking for the field name
/// is enough and spares parsing the whole body on every read.
pub fn etcd_range_found(body: &[u8]) -> bool {
    body.windows(5).any(|w| w == b"\"kvs\"")
}

/// `size` bytes of printable ASCII: the content of a value does not matter,
/// only its size, and ASCII keeps it the same size once JSON-encoded.
pub fn filler(size: usize) -> String {
    (b'a'..=b'z').cycle().take(size).map(char::from).collect()
}

/// Standard base64 with padding (RFC 4648), as etcd's gateway expects for
/// keys and values. Small enough to write out rather than add a crate.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        // Pack up to 3 bytes into 24 bits, then emit 6 bits at a time.
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases: [(&[u8], &str); 9] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (b"bench-1", "YmVuY2gtMQ=="),
            (&[0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff], "+vv8/f7/"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want, "base64 of {input:?}");
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        use OpKind::*;
        assert_eq!(classify_status(Write, StatusCode::OK), Outcome::Ok);
        assert_eq!(
            classify_status(Read, StatusCode::NOT_FOUND),
            Outcome::NotFound
        );
        // A write has no business answering 404: that is an error.
        assert_eq!(
            classify_status(Write, StatusCode::NOT_FOUND),
            Outcome::Other
        );
        assert_eq!(
            classify_status(Read, StatusCode::TOO_MANY_REQUESTS),
            Outcome::RateLimited
        );
        assert_eq!(
            classify_status(Write, StatusCode::SERVICE_UNAVAILABLE),
            Outcome::Unavailable
        );
        assert_eq!(
            classify_status(Read, StatusCode::INTERNAL_SERVER_ERROR),
            Outcome::Other
        );
    }

    #[test]
    fn etcd_misses_have_no_kvs() {
        let hit =
            br#"{"header":{"revision":"5"},"kvs":[{"key":"YQ==","value":"Yg=="}],"count":"1"}"#;
        let miss = br#"{"header":{"revision":"5"}}"#;
        assert!(etcd_range_found(hit));
        assert!(!etcd_range_found(miss));
    }

    #[test]
    fn filler_has_the_requested_size() {
        assert_eq!(filler(0), "");
        assert_eq!(filler(3), "abc");
        assert_eq!(filler(1000).len(), 1000);
    }
}
