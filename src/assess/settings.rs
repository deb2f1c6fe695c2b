//! The student's settings as the cluster will run them, and where it listens.
//!
//! Settings are resolved exactly as `kvlab up --config` resolves them (the
//! same defaults, the same override rule), so what is graded is what runs.
//! Validation is `up`'s own: W > N or R > N is refused with its reason
//! before anything starts.

use serde::Serialize;

pub use crate::child_cluster::Ports;
use crate::coordinator::ConfigError;
use crate::labconfig::StudentConfig;

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
    pub fn resolve(config: &StudentConfig) -> Result<Settings, ConfigError> {
        let mut args = default_up_args();
        args.apply(config);
        args.cluster.validate()?;
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
        assert_eq!(w, ConfigError::WriteQuorumTooLarge { w: 3, n: 2 });
        let r = Settings::resolve(&config(
            r#"{"deployment": {"followers": 3, "read_quorum": 4}}"#,
        ))
        .unwrap_err();
        assert_eq!(r, ConfigError::ReadQuorumTooLarge { r: 4, n: 3 });
    }
}
