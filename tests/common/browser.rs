//! Headless Chromium driven over the DevTools protocol (`tests/ui/cdp.py`),
//! for the tests of pages: the live view, the pages a student opens.
//!
//! Chromium is a Debian package `.ci/run` installs (and then sets
//! `KVLAB_REQUIRE_CHROMIUM`, so a missing browser fails there); on a
//! developer's machine without it, [`Browser::start`] says so and the
//! test passes without its browser steps.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running headless Chromium; killed (and reaped) when dropped.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Browser {
    /// Starts Chromium with its DevTools on `debug_port` (a port of the
    /// test's own block), or `None` where it is not installed.
    pub fn start(debug_port: u16) -> Option<Browser> {
        if !installed("chromium") || !installed("python3") {
            assert!(
                std::env::var_os("KVLAB_REQUIRE_CHROMIUM").is_none(),
                "chromium is required (KVLAB_REQUIRE_CHROMIUM)"
            );
            eprintln!("SKIPPED the browser: chromium or python3 is not installed");
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg(format!("--remote-debugging-port={debug_port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Some(Browser {
            child,
            port: debug_port,
            _profile: profile,
        })
    }

    /// Runs the CDP driver with `steps` (see `tests/ui/cdp.py`); panics
    /// with its output if a step fails.
    pub fn drive(&self, steps: Value) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/cdp.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(self.port.to_string())
            .arg(steps.to_string())
            .output()
            .expect("run python3 tests/ui/cdp.py");
        assert!(
            out.status.success(),
            "the browser script failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
