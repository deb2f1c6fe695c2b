//! One client's HTTP/1.1 keep-alive connection, reopened after a failure.
//!
//! Why not a general HTTP client (reqwest)? A load generator pays its client's
//! overhead on every request, on the same cores as the cluster it measures.
//! A general client parses the URL, looks for a pooled connection, applies
//! redirect and proxy policies on each request; a generator needs none of
//! that. Here each client owns exactly one connection and writes requests
//! straight onto it, which roughly halves the generator's user-space CPU per
//! request and makes "64 clients" mean exactly 64 sockets, as in wrk.
//!
//! Invariants:
//! - At most one request is in flight on a connection (closed loop).
//! - After any failure the connection is dropped, and the next request opens
//!   a fresh one: a connection in an unknown state is never reused.
//! - A request's whole life (connect, send, read the full body) is bounded by
//!   the timeout, so a stuck server costs one timeout, not a stuck client.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// Why a request got no complete answer.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("could not connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no complete answer in time")]
    Timeout,
    /// The connection broke, or the answer was not valid HTTP.
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
}

/// Where to connect, and the `Host` header every request carries.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`, as `TcpStream::connect` takes it.
    addr: String,
    host: HeaderValue,
    /// The URL's path without its trailing slash: requests go below it.
    prefix: String,
}

impl Endpoint {
    /// From a base URL that `Args::validate` already checked (http, a host).
    pub fn from_url(base: &str) -> Result<Self, url::ParseError> {
        let url = url::Url::parse(base)?;
        let host = url.host_str().ok_or(url::ParseError::EmptyHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        // An IPv6 literal keeps its brackets in `host_str`, as both uses need.
        let addr = format!("{host}:{port}");
        let host =
            HeaderValue::from_str(&addr).map_err(|_| url::ParseError::InvalidDomainCharacter)?;
        let prefix = url.path().trim_end_matches('/').to_string();
        Ok(Endpoint { addr, host, prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// One client's connection, to one of the base URLs given (`--url A,B`):
/// after a failure without an answer, the next request goes to the next one.
pub struct Conn {
    endpoints: Vec<Endpoint>,
    /// The one requests go to now.
    current: usize,
    timeout: Duration,
    /// `None` until the first request, and after a failure.
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// `endpoints`: at least one (the caller's list is never empty).
    pub fn new(endpoints: Vec<Endpoint>, timeout: Duration) -> Self {
        assert!(!endpoints.is_empty(), "a connection needs somewhere to go");
        Conn {
            endpoints,
            current: 0,
            timeout,
            sender: None,
        }
    }

    /// Send one request (`path` starts with `/`) and read the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        let request = self.request(method, path, json);
        let result = tokio::time::timeout(self.timeout, self.exchange(request)).await;
        let result = result.unwrap_or(Err(ConnError::Timeout));
        if result.is_err() {
            self.sender = None; // see the invariants
                                // No answer: this one may have stopped answering; try the next.
                                // (A benchmark counts the failure and moves on; it keeps no
                                // history to be careful about.)
            self.current = (self.current + 1) % self.endpoints.len();
        }
        result
    }

    /// Which base URL requests go to now (an index into the list given).
    pub fn current(&self) -> usize {
        self.current
    }

    /// Sends the next requests to the `i`th base URL.
    pub fn set_current(&mut self, i: usize) {
        if i != self.current {
            self.sender = None;
            self.current = i % self.endpoints.len();
        }
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    fn endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current]
    }

    fn request(&self, method: Method, path: &str, json: Option<Vec<u8>>) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint().prefix))
            .header(HOST, self.endpoint().host.clone());
        if json.is_some() {
            builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let body = Full::new(json.map(Bytes::from).unwrap_or_default());
        // Method, path and headers are all well-formed by construction.
        builder.body(body).expect("a well-formed request")
    }

    async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), ConnError> {
        let sender = self.connected().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        // Reading to the end is what lets the connection carry the next request.
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// The open connection, ready for a request; opening one first if there
    /// is none, or if the one there closed while idle.
    async fn connected(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ConnError> {
        // hyper wants `ready()` before each request: the previous exchange may
        // be finishing inside the connection task even though its body is read.
        let reusable = match self.sender.as_mut() {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            self.sender = Some(self.open().await?);
        }
        Ok(self.sender.as_mut().expect("set just above"))
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, ConnError> {
        let stream = TcpStream::connect(&self.endpoint().addr)
            .await
            .map_err(ConnError::Connect)?;
        // Requests are small and latency is the figure: send at once.
        stream.set_nodelay(true).map_err(ConnError::Connect)?;
        let (mut sender, connection) = handshake(TokioIo::new(stream)).await?;
        // The connection's I/O is driven by its own task; it ends when the
        // sender is dropped or the peer closes.
        tokio::spawn(connection);
        sender.ready().await?;
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_takes_host_and_port_from_the_url() {
        let e = Endpoint::from_url("http://127.0.0.1:8000").unwrap();
        assert_eq!(e.addr, "127.0.0.1:8000");
        assert_eq!(e.host, "127.0.0.1:8000");
        let e = Endpoint::from_url("http://localhost").unwrap();
        assert_eq!(e.addr, "localhost:80");
        let e = Endpoint::from_url("http://[::1]:7000").unwrap();
        assert_eq!(e.addr, "[::1]:7000");
        assert_eq!(e.prefix(), "");
        let e = Endpoint::from_url("http://proxy:80/kv/").unwrap();
        assert_eq!((e.addr.as_str(), e.prefix()), ("proxy:80", "/kv"));
    }
}
