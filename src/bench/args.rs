//! Command-line flags of `kvlab bench`, and their validation into a [`Plan`].
//!
//! Clap only checks that each flag parses as its type. Everything that
//! depends on meaning (a percentage above 100, both `--duration` and `--ops`,
//! a zero key space) is checked by [`Args::validate`], a pure function, so
//! tests can exercise every bad combination without spawning a process.
//! Invariant: once a `Plan` exists, every field in it is usable as is.

use std::time::Duration;

use clap::ValueEnum;
use thiserror::Error;

/// How long the run lasts when neither `--duration` nor `--ops` is given.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;

/// Which wire protocol the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// kvlab's gateway or coordinator: `POST /write`, `GET /read/{key}`.
    Kvlab,
    /// etcd's HTTP/JSON gateway: `POST /v3/kv/put` and `/v3/kv/range`
    /// (linearizable reads, base64 keys and values).
    Etcd,
    /// The bare HTTP server of `kvlab bench-server`: kvlab's request shapes,
    /// answered at once with a small JSON body (the ceiling; see `bare`).
    Bare,
}

/// How keys are picked from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few hot keys take most of the traffic (exponent `--zipf-s`).
    Zipf,
}

/// `kvlab bench`: a closed-loop load generator.
///
/// Each client sends one request, waits for its answer, and sends the next:
/// the offered load adapts to the server, so throughput is what the server
/// sustains at that concurrency.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base URL of the gateway, the coordinator, or an etcd member;
    /// several (comma-separated or the flag repeated; `--gateway` is the
    /// same flag): a client that gets no answer from one moves to the next.
    #[arg(
        long,
        visible_alias = "gateway",
        default_value = "http://localhost:8000"
    )]
    pub url: Vec<String>,

    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = TargetKind::Kvlab)]
    pub target: TargetKind,

    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub clients: usize,

    /// Seconds to measure for (default 10 when --ops is not given either).
    #[arg(short = 'd', long)]
    pub duration: Option<f64>,

    /// Number of operations to measure, instead of a duration.
    #[arg(short = 'n', long)]
    pub ops: Option<u64>,

    /// Percentage of operations that are reads; the rest are writes.
    #[arg(long, default_value_t = 50)]
    pub reads: u32,

    /// Size of the key space.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,

    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,

    /// Exponent of the zipf distribution (larger means hotter hot keys).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,

    /// Size of each written value, in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,

    /// Seconds of load before measuring starts (not counted in any figure).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,

    /// Write every key once before the run, so that reads find them.
    #[arg(long)]
    pub preload: bool,

    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,

    /// Seed of the key and op choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    After(Duration),
    Ops(u64),
}

/// A validated run: every value here has been checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every base URL, comma-separated, as the report shows it.
    pub url: String,
    /// Each base URL, checked, without its trailing slash.
    pub urls: Vec<String>,
    pub target: TargetKind,
    pub clients: usize,
    pub stop: Stop,
    pub read_pct: u32,
    pub keys: u64,
    pub distribution: Distribution,
    pub zipf_s: f64,
    pub value_size: usize,
    pub warmup: Duration,
    pub preload: bool,
    pub timeout: Duration,
    pub seed: u64,
    pub json: bool,
}

/// Why a set of flags cannot make a run. Messages name the flag to fix.
#[derive(Debug, Error, PartialEq)]
pub enum ArgsError {
    #[error("--clients must be at least 1 (got {0})")]
    NoClients(usize),
    #[error("--reads is a percentage: 0 to 100 (got {0})")]
    ReadsOutOfRange(u32),
    #[error("--keys must be at least 1 (got {0})")]
    NoKeys(u64),
    #[error("give either --duration or --ops, not both")]
    BothStops,
    #[error("--ops must be at least 1 (got {0})")]
    NoOps(u64),
    #[error("--{flag} must be a positive number of seconds (got {value})")]
    BadSeconds { flag: &'static str, value: f64 },
    #[error("--warmup must be zero or a positive number of seconds (got {0})")]
    BadWarmup(f64),
    #[error("--zipf-s must be a positive finite number (got {0})")]
    BadZipf(f64),
    #[error("--url must be an http:// URL (got {url:?}): {reason}")]
    BadUrl { url: String, reason: String },
}

impl Args {
    /// Check every flag and produce the plan the driver runs.
    pub fn validate(&self) -> Result<Plan, ArgsError> {
        if self.clients == 0 {
            return Err(ArgsError::NoClients(self.clients));
        }
        if self.reads > 100 {
            return Err(ArgsError::ReadsOutOfRange(self.reads));
        }
        if self.keys == 0 {
            return Err(ArgsError::NoKeys(self.keys));
        }
        if self.distribution == Distribution::Zipf
            && !(self.zipf_s.is_finite() && self.zipf_s > 0.0)
        {
            return Err(ArgsError::BadZipf(self.zipf_s));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return Err(ArgsError::BadWarmup(self.warmup));
        }
        let urls = self
            .url
            .iter()
            .flat_map(|u| u.split(','))
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(normalize_url)
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(ArgsError::BadUrl {
                url: String::new(),
                reason: "no URL given".into(),
            });
        }
        Ok(Plan {
            url: urls.join(","),
            urls,
            target: self.target,
            clients: self.clients,
            stop: self.stop()?,
            read_pct: self.reads,
            keys: self.keys,
            distribution: self.distribution,
            zipf_s: self.zipf_s,
            value_size: self.value_size,
            warmup: Duration::from_secs_f64(self.warmup),
            preload: self.preload,
            timeout: seconds("timeout", self.timeout)?,
            seed: self.seed.unwrap_or_else(clock_seed),
            json: self.json,
        })
    }

    /// Exactly one of duration and op count; a duration when neither is given.
    fn stop(&self) -> Result<Stop, ArgsError> {
        match (self.duration, self.ops) {
            (Some(_), Some(_)) => Err(ArgsError::BothStops),
            (Some(secs), None) => Ok(Stop::After(seconds("duration", secs)?)),
            (None, Some(0)) => Err(ArgsError::NoOps(0)),
            (None, Some(n)) => Ok(Stop::Ops(n)),
            (None, None) => Ok(Stop::After(Duration::from_secs_f64(DEFAULT_DURATION_SECS))),
        }
    }
}

/// A strictly positive, finite number of seconds.
fn seconds(flag: &'static str, value: f64) -> Result<Duration, ArgsError> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ArgsError::BadSeconds { flag, value })
    }
}

/// Accept `http://host:port` with or without a trailing slash, and hand back
/// the form without it, so request paths can be appended with `format!`.
fn normalize_url(raw: &str) -> Result<String, ArgsError> {
    let bad = |reason: &str| ArgsError::BadUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let parsed = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "http" {
        // reqwest is built without TLS in this project.
        return Err(bad("only plain http is supported"));
    }
    if parsed.host_str().is_none() {
        return Err(bad("no host"));
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// A seed that differs between runs, for when `--seed` is not given.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A stand-in for `kvlab bench` so the flags parse as on the command line.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        let argv = std::iter::once("bench").chain(flags.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    fn plan(flags: &[&str]) -> Result<Plan, ArgsError> {
        parse(flags).expect("flags parse").validate()
    }

    #[test]
    fn defaults_make_a_ten_second_run_against_the_gateway() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.url, "http://localhost:8000");
        assert_eq!(p.target, TargetKind::Kvlab);
        assert_eq!(p.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!(p.read_pct, 50);
        assert_eq!(p.warmup, Duration::ZERO);
    }

    #[test]
    fn every_flag_reaches_the_plan() {
        let p = plan(&[
            "--url",
            "http://127.0.0.1:7000/",
            "--target",
            "etcd",
            "-c",
            "64",
            "--ops",
            "500",
            "--reads",
            "90",
            "--keys",
            "10",
            "--distribution",
            "zipf",
            "--zipf-s",
            "1.2",
            "--value-size",
            "8",
            "--warmup",
            "0.5",
            "--preload",
            "--timeout",
            "2",
            "--seed",
            "9",
            "--json",
        ])
        .unwrap();
        assert_eq!(p.url, "http://127.0.0.1:7000", "trailing slash dropped");
        assert_eq!(p.target, TargetKind::Etcd);
        assert_eq!(p.clients, 64);
        assert_eq!(p.stop, Stop::Ops(500));
        assert_eq!((p.read_pct, p.keys, p.value_size), (90, 10, 8));
        assert_eq!((p.distribution, p.zipf_s), (Distribution::Zipf, 1.2));
        assert_eq!(p.warmup, Duration::from_millis(500));
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert_eq!(p.seed, 9);
        assert!(p.preload && p.json);
    }

    #[test]
    fn bad_values_name_the_flag_to_fix() {
        let cases: &[(&[&str], ArgsError, &str)] = &[
            (&["-c", "0"], ArgsError::NoClients(0), "--clients"),
            (
                &["--reads", "101"],
                ArgsError::ReadsOutOfRange(101),
                "--reads",
            ),
            (&["--keys", "0"], ArgsError::NoKeys(0), "--keys"),
            (&["--ops", "0"], ArgsError::NoOps(0), "--ops"),
            (
                &["--duration", "3", "--ops", "10"],
                ArgsError::BothStops,
                "not both",
            ),
            (
                &["--duration", "0"],
                ArgsError::BadSeconds {
                    flag: "duration",
                    value: 0.0,
                },
                "--duration",
            ),
            (
                &["--timeout=-1"],
                ArgsError::BadSeconds {
                    flag: "timeout",
                    value: -1.0,
                },
                "--timeout",
            ),
            (&["--warmup=-2"], ArgsError::BadWarmup(-2.0), "--warmup"),
            (
                &["--distribution", "zipf", "--zipf-s", "0"],
                ArgsError::BadZipf(0.0),
                "--zipf-s",
            ),
        ];
        for (flags, want, mention) in cases {
            let err = plan(flags).unwrap_err();
            assert_eq!(&err, want, "flags {flags:?}");
            assert!(
                err.to_string().contains(mention),
                "{err} should mention {mention}"
            );
        }
    }

    #[test]
    fn urls_must_be_plain_http() {
        for url in ["localhost:8000", "https://example.test", "not a url"] {
            let err = plan(&["--url", url]).unwrap_err();
            assert!(matches!(err, ArgsError::BadUrl { .. }), "{url}: {err}");
            assert!(err.to_string().contains("--url"));
        }
    }

    #[test]
    fn a_zero_zipf_exponent_is_fine_when_uniform() {
        assert!(plan(&["--zipf-s", "0"]).is_ok());
    }

    #[test]
    fn clap_rejects_what_is_not_a_number_or_a_choice() {
        assert!(parse(&["--reads", "-5"]).is_err());
        assert!(parse(&["-c", "many"]).is_err());
        assert!(parse(&["--distribution", "pareto"]).is_err());
        assert!(parse(&["--target", "redis"]).is_err());
    }
}
