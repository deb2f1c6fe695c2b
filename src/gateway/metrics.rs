//! The gateway's metrics: requests by HTTP status code, and the rate
//! limiter's decisions. `kvlab_gateway_rate_limited_requests_total` is INC-1's
//! signal: clients refused with 429 by a limit set too low.
//!
//! Codes are counted in a fixed table of atomics, one slot per code the
//! gateway is expected to answer and one (`other`) for the rest, so the label
//! stays bounded and the request path takes no lock. The registry is built
//! at each scrape from those atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::{GatewayMetrics, RateLimiterStats};

/// The codes counted one by one; any other is counted as `other`.
const CODES: [u16; 15] = [
    200, 201, 204, 400, 404, 405, 409, 413, 415, 422, 429, 500, 502, 503, 504,
];

/// Requests by status code.
#[derive(Debug, Default)]
pub struct ByCode {
    counts: [AtomicU64; CODES.len() + 1],
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

impl ByCode {
    pub fn count(&self, status: StatusCode) {
        let i = CODES
            .iter()
            .position(|&c| c == status.as_u16())
            .unwrap_or(CODES.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// One series per code seen so far.
    fn family(&self) -> Family<CodeLabel, Counter> {
        let family = Family::<CodeLabel, Counter>::default();
        let names = CODES.iter().map(u16::to_string).chain(["other".into()]);
        for (code, n) in names.zip(&self.counts) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                family.get_or_create(&CodeLabel { code }).inc_by(n);
            }
        }
        family
    }
}

/// The `/metrics` answer of the gateway.
pub fn render(
    codes: &ByCode,
    counters: &GatewayMetrics,
    limiter: Option<&RateLimiterStats>,
) -> Response {
    let mut reg = crate::metrics::registry("gateway");
    reg.register(
        "gateway_requests",
        "Requests answered by the gateway, by HTTP status code",
        codes.family(),
    );
    reg.register(
        "gateway_rate_limited_requests",
        "Requests refused with 429 by the rate limiter (INC-1)",
        ConstCounter::new(counters.rate_limited_requests),
    );
    reg.register(
        "gateway_forwarded_requests",
        "Writes and reads forwarded to the coordinator (not /cluster-status)",
        ConstCounter::new(counters.forwarded_requests),
    );
    reg.register(
        "gateway_errors",
        "Requests the gateway could not forward",
        ConstCounter::new(counters.errors),
    );
    if let Some(l) = limiter {
        reg.register(
            "rate_limit_max_requests",
            "The limit: requests per window per client",
            ConstGauge::new(i64::from(l.max_requests)),
        );
        reg.register(
            "rate_limit_window_seconds",
            "The limiter's window",
            ConstGauge::<f64>::new(l.window_seconds),
        );
        reg.register(
            "rate_limit_clients",
            "Client addresses the limiter tracks",
            ConstGauge::new(l.tracked_clients as i64),
        );
    }
    crate::metrics::render(&reg)
}
