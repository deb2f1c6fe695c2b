//! The lab's student config file (`student_config.json`).
//!
//! Its shape is the course's (see docs/lab.md, "The CloudCart exercise"):
//! `{"deployment": {...}, "gateway": {...}, "justifications": {...}}`.
//! `kvlab up --config FILE` starts a cluster with these settings so a student
//! can explore them, and the autograder reads the same file. Missing sections
//! or fields keep kvlab's defaults; wrong types are refused with the field's
//! name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StudentConfig {
    #[serde(default)]
    pub deployment: Deployment,
    #[serde(default)]
    pub gateway: GatewaySettings,
    #[serde(default)]
    pub justifications: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Deployment {
    pub followers: Option<usize>,
    pub write_quorum: Option<usize>,
    pub read_quorum: Option<usize>,
    pub auto_spawn: Option<bool>,
    pub auto_spawn_delay: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct GatewaySettings {
    pub rate_limit_enabled: Option<bool>,
    pub rate_limit_max: Option<u32>,
    pub rate_limit_window: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LabConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid student config: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl StudentConfig {
    pub fn load(path: &Path) -> Result<StudentConfig, LabConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| LabConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Justifications that are filled in: non-empty and without "TODO".
    pub fn justified(&self) -> usize {
        self.justifications
            .values()
            .filter(|j| !j.trim().is_empty() && !j.contains("TODO"))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lab_shape() {
        let text = r#"{
          "deployment": {"followers": 5, "write_quorum": 4, "read_quorum": 1,
                         "auto_spawn": true, "auto_spawn_delay": 1},
          "gateway": {"rate_limit_enabled": true, "rate_limit_max": 20, "rate_limit_window": 2},
          "justifications": {"quorum_choice": "TODO explain", "follower_count": "because",
                             "rate_limiting": "", "auto_spawn": "TODO"}
        }"#;
        let c: StudentConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.deployment.followers, Some(5));
        assert_eq!(c.deployment.auto_spawn_delay, Some(1.0));
        assert_eq!(c.gateway.rate_limit_window, Some(2.0));
        assert_eq!(c.justified(), 1);
    }

    #[test]
    fn the_shipped_student_config_is_broken_as_the_lab_gives_it() {
        let text = include_str!("../labs/cloudcart/student_config.json");
        let c: StudentConfig = serde_json::from_str(text).unwrap();
        let d = &c.deployment;
        assert_eq!(
            (d.followers, d.write_quorum, d.read_quorum),
            (Some(5), Some(4), Some(1))
        );
        assert_eq!((d.auto_spawn, d.auto_spawn_delay), (Some(true), Some(1.0)));
        let g = &c.gateway;
        assert_eq!(g.rate_limit_enabled, Some(true));
        assert_eq!(
            (g.rate_limit_max, g.rate_limit_window),
            (Some(20), Some(2.0))
        );
        assert_eq!(c.justifications.len(), 4);
        assert_eq!(c.justified(), 0);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = serde_json::from_str::<StudentConfig>(r#"{"deployment": {"followers": "five"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid type"), "{err}");
        let partial: StudentConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(partial, StudentConfig::default());
    }
}
