//! The student's settings as the cluster will run them, and where it listens.
//!
//! Settings are resolved exactly as `kvlab up --config` resolves them (the
//! same defaults, the same override rule), so what is graded is what runs.
//! Validation is `up`'s own: W > N or R > N is refused with its reason
//! before anything starts. So are the settings the registry and the gateway
//! check when they start (the spawn delay, the rate limit): refused only
//! there, they would fail the grading run late, with an error about a flag
//! the student never typed.

use serde::Serialize;

pub use crate::child_cluster::Ports;
use crate::coordinator::ConfigError;
use crate::labconfig::StudentConfig;
use crate::ratelimit::Limits;

/// The registry's bounds for `--spawn-delay` (`registry::Config::from_args`).
const SPAWN_DELAY_RANGE: std::ops::RangeInclusive<f64> = 0.0..=3600.0;

/// Why a student config cannot be run.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Cluster(#[from] ConfigError),
    /// The gateway checks its limits even when rate limiting is off.
    #[error("gateway.rate_limit_max must be at least 1")]
    ZeroRateLimitMax,
    #[error("gateway.rate_limit_window must be between 0.001 and 86400 seconds, got {0}")]
    BadRateLimitWindow(f64),
    #[error("deployment.auto_spawn_delay must be between 0 and 3600 seconds, got {0}")]
    SpawnDelay(f64),
}

/// The settings that matter to the grade.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub followers: usize,
    pub write_quorum: usize,
    pub read_quorum: usize,
    pub auto_spawn: bool,
    pub auto_spawn_delay: f64,
    pub rate_limit_enabled: bool,
    pub rate_limit_max: u32,
    pub rate_limit_window: f64,
}

impl Settings {
    /// `kvlab up`'s defaults with the student config applied, validated.
    pub fn resolve(config: &StudentConfig) -> Result<Settings, SettingsError> {
        let mut args = default_up_args();
        args.apply(config);
        args.cluster.validate()?;
        let (max, window) = (args.rate.rate_limit_max, args.rate.rate_limit_window);
        if max == 0 {
            return Err(SettingsError::ZeroRateLimitMax);
        }
        // With `max` checked, the window is all the gateway can refuse.
        Limits::new(max, window).map_err(|_| SettingsError::BadRateLimitWindow(window))?;
        if !SPAWN_DELAY_RANGE.contains(&args.spawn_delay) {
            return Err(SettingsError::SpawnDelay(args.spawn_delay));
        }
        Ok(Settings {
            followers: args.cluster.followers,
            write_quorum: args.cluster.write_quorum,
            read_quorum: args.cluster.read_quorum,
            auto_spawn: args.auto_spawn,
            auto_spawn_delay: args.spawn_delay,
            rate_limit_enabled: args.rate.rate_limit,
            rate_limit_max: args.rate.rate_limit_max,
            rate_limit_window: args.rate.rate_limit_window,
        })
    }

    /// The flags that give `kvlab up` these settings.
    pub fn up_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--followers".to_string(),
            self.followers.to_string(),
            "--write-quorum".into(),
            self.write_quorum.to_string(),
            "--read-quorum".into(),
            self.read_quorum.to_string(),
            "--spawn-delay".into(),
            self.auto_spawn_delay.to_string(),
            "--rate-limit-max".into(),
            self.rate_limit_max.to_string(),
            "--rate-limit-window".into(),
            self.rate_limit_window.to_string(),
        ];
        if self.auto_spawn {
            flags.push("--auto-spawn".into());
        }
        if self.rate_limit_enabled {
            flags.push("--rate-limit".into());
        }
        flags
    }
}

fn default_up_args() -> crate::up::Args {
    use clap::Parser;
    // No flags: every field takes `kvlab up`'s own default.
    crate::up::Args::parse_from(["up"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> StudentConfig {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_shipped_config_resolves_to_its_broken_values() {
        let c = config(include_str!("../../labs/cloudcart/student_config.json"));
        let s = Settings::resolve(&c).unwrap();
        assert_eq!((s.followers, s.write_quorum, s.read_quorum), (5, 4, 1));
        assert!(s.auto_spawn && s.rate_limit_enabled);
        assert_eq!((s.rate_limit_max, s.rate_limit_window), (20, 2.0));
        let flags = s.up_flags().join(" ");
        assert!(flags.contains("--followers 5 --write-quorum 4 --read-quorum 1"));
        assert!(flags.contains("--auto-spawn") && flags.contains("--rate-limit"));
    }

    #[test]
    fn missing_fields_take_up_defaults() {
        let s = Settings::resolve(&config("{}")).unwrap();
        assert_eq!((s.followers, s.write_quorum, s.read_quorum), (2, 2, 1));
        assert!(!s.auto_spawn && !s.rate_limit_enabled);
    }

    #[test]
    fn quorums_larger_than_n_are_refused() {
        let w = Settings::resolve(&config(
            r#"{"deployment": {"followers": 2, "write_quorum": 3}}"#,
        ))
        .unwrap_err();
        assert_eq!(w, ConfigError::WriteQuorumTooLarge { w: 3, n: 2 }.into());
        let r = Settings::resolve(&config(
            r#"{"deployment": {"followers": 3, "read_quorum": 4}}"#,
        ))
        .unwrap_err();
        assert_eq!(r, ConfigError::ReadQuorumTooLarge { r: 4, n: 3 }.into());
    }

    /// Found by the `student_config` fuzz target: the node ports were
    /// counted with an overflowing addition, which panicked.
    #[test]
    fn a_follower_count_as_large_as_a_usize_is_refused_not_a_panic() {
        let e = Settings::resolve(&config(&format!(
            r#"{{"deployment": {{"followers": {}}}}}"#,
            usize::MAX
        )))
        .unwrap_err();
        assert!(e.to_string().contains("do not fit below 65536"), "{e}");
    }

    /// Found by the `student_config` fuzz target: these were accepted here,
    /// then refused by the gateway or the registry once the grading run had
    /// started the cluster.
    #[test]
    fn settings_the_gateway_or_registry_refuse_are_refused_here() {
        let refused = |text: &str| Settings::resolve(&config(text)).unwrap_err();
        assert_eq!(
            refused(r#"{"gateway": {"rate_limit_window": 0}}"#),
            SettingsError::BadRateLimitWindow(0.0)
        );
        // Checked even with rate limiting off, as the gateway does.
        assert_eq!(
            refused(r#"{"gateway": {"rate_limit_enabled": false, "rate_limit_max": 0}}"#),
            SettingsError::ZeroRateLimitMax
        );
        assert_eq!(
            refused(r#"{"deployment": {"auto_spawn_delay": -1}}"#),
            SettingsError::SpawnDelay(-1.0)
        );
        let err = refused(r#"{"deployment": {"auto_spawn_delay": 3601}}"#).to_string();
        assert!(err.contains("deployment.auto_spawn_delay"), "{err}");
    }
}
