//! `kvlab lab`: the exercises' files, built into the binary.
//!
//! `kvlab lab export DIR` writes what students get for CloudCart: the
//! incident brief and the config broken as shipped. `kvlab lab export DIR
//! --lab node` writes the node lab's: the briefs per level, the starter
//! node and the protocol. Nothing from an `instructor/` folder (solutions,
//! reference nodes, broken nodes) is built in, so nothing of it can leak
//! into a handout. The graders (`kvlab assess`, `kvlab grade-node`) carry
//! their tests themselves, so students need no test file to check their work.
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

/// The node lab's handout: the course page, a brief per level, the
/// starter, and the protocol they all point to.
pub const NODE_HANDOUT: [(&str, &str); 7] = [
    ("README.md", include_str!("../labs/node/README.md")),
    ("level1.md", include_str!("../labs/node/level1.md")),
    ("level2.md", include_str!("../labs/node/level2.md")),
    ("level3.md", include_str!("../labs/node/level3.md")),
    ("level4.md", include_str!("../labs/node/level4.md")),
    (
        "starter/node.py",
        include_str!("../labs/node/starter/node.py"),
    ),
    ("node-protocol.md", include_str!("../docs/node-protocol.md")),
];

/// Which exercise to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lab {
    /// The incident exercise, graded by `kvlab assess`.
    #[default]
    Cloudcart,
    /// Build a node, graded by `kvlab grade-node`.
    Node,
}

#[derive(Debug, Clone, Parser)]
pub struct Args {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LabCommand {
    /// Write the student handout (briefs and starting files, no solution) into DIR.
    Export {
        /// Where to write it: a new or empty directory.
        dir: PathBuf,
        /// Which exercise: `cloudcart` (the incidents) or `node` (build a node).
        #[arg(long, value_enum, default_value_t = Lab::Cloudcart)]
        lab: Lab,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        LabCommand::Export { dir, lab } => {
            let (name, written) = match lab {
                Lab::Cloudcart => ("CloudCart", export(&dir)?),
                Lab::Node => ("node lab's", export_files(&dir, &node_handout())?),
            };
            println!(
                "kvlab lab: wrote the {name} student handout to {}:",
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

/// Writes the CloudCart handout into `dir` (created if missing; refused if
/// it holds anything). Returns the paths written.
pub fn export(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files: Vec<(&str, String)> = HANDOUT.iter().map(|(n, t)| (*n, t.to_string())).collect();
    export_files(dir, &files)
}

/// The node lab's files, with the links into the repository's `docs/`
/// pointed at the copy of the protocol beside them.
pub fn node_handout() -> Vec<(&'static str, String)> {
    NODE_HANDOUT
        .iter()
        .map(|(name, text)| {
            (
                *name,
                text.replace("../../docs/node-protocol.md", "node-protocol.md"),
            )
        })
        .collect()
}

fn export_files(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<Vec<PathBuf>> {
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
    files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
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

    #[test]
    fn the_node_handout_holds_the_starter_not_the_reference() {
        let files = node_handout();
        let starter = &files
            .iter()
            .find(|(n, _)| *n == "starter/node.py")
            .unwrap()
            .1;
        assert!(
            starter.contains("TODO"),
            "the starter has its lessons left to do"
        );
        for (name, text) in &files {
            assert!(!text.contains("BROKEN NODE"), "{name}");
            assert!(
                !text.contains("../../docs/"),
                "{name}: a link out of the handout"
            );
        }
    }
}
