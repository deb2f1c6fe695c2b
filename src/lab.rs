//! `kvlab lab`: the CloudCart exercise's files, built into the binary.
//!
//! `kvlab lab export DIR` writes what students get: the incident brief and
//! the config broken as shipped. Nothing from `labs/cloudcart/instructor/`
//! (the solution and its reasoning) is built in, so nothing of it can leak
//! into a handout. The graded scenarios are built into `kvlab assess`
//! already, so students need no scenario file to check their work.
//!
//! Files are written only into an empty (or new) directory: an export never
//! overwrites a student's edited config.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The brief students read.
pub const BRIEF: &str = include_str!("../labs/cloudcart/README.md");
/// The student config, broken as shipped.
pub const STUDENT_CONFIG: &str = include_str!("../labs/cloudcart/student_config.json");

/// Every file of the handout: (name, text).
pub const HANDOUT: [(&str, &str); 2] = [
    ("README.md", BRIEF),
    ("student_config.json", STUDENT_CONFIG),
];

#[derive(Debug, Clone, Parser)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LabCommand {
    /// Write the student handout (brief and broken config, no solution) into DIR.
    Export {
        /// Where to write it: a new or empty directory.
        dir: PathBuf,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Export { dir } => {
            let written = export(&dir)?;
            println!(
                "kvlab lab: wrote the CloudCart student handout to {}:",
                dir.display()
            );
            for path in written {
                println!("  {}", path.display());
            }
            println!("Hand out this folder, not the repository (which holds the solution).");
            Ok(())
        }
    }
}

/// Writes the handout into `dir` (created if missing; refused if it holds
/// anything). Returns the paths written.
pub fn export(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty: export into a new or empty directory (nothing is overwritten)",
            dir.display()
        );
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    HANDOUT
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handout_holds_no_solution() {
        let config: serde_json::Value = serde_json::from_str(STUDENT_CONFIG).unwrap();
        assert_eq!(config["deployment"]["read_quorum"], 1, "broken as shipped");
        for (name, text) in HANDOUT {
            assert!(!text.contains("solution_config"), "{name}");
        }
    }
}
