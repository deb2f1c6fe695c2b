//! A real terminal for tests: a detached tmux session runs one command on a
//! pseudo-terminal; the test types into it (`send-keys`) and reads the
//! screen (`capture-pane`). Pipes hide what only a terminal shows (line
//! editing, history, colour, Ctrl-C and Ctrl-D), so interactive paths are
//! tested here.
//!
//! Each session runs on its own tmux server (`-L`), killed when the handle
//! drops. Without tmux the tests that need it say so and pass, unless `CI`
//! is set (CI installs tmux; see .ci/run).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Tty {
    socket: String,
}

/// Whether tmux can be used; `false` means "skip" (outside CI only).
pub fn available() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is needed for the terminal tests (apt-get install tmux)"
        );
        eprintln!("skipped: tmux is not installed");
    }
    ok
}

/// Quotes one word for the shell that tmux runs the command with.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

impl Tty {
    /// Runs `program args...` with these environment variables on a fresh
    /// 120x50 terminal. When the program ends, the screen stays and shows
    /// `[exit N]`, so tests can check how it ended.
    pub fn spawn(program: &str, args: &[&str], env: &[(&str, &str)]) -> Tty {
        let socket = format!(
            "kvlab-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut line: Vec<String> = vec!["env".into()];
        line.extend(env.iter().map(|(k, v)| quote(&format!("{k}={v}"))));
        line.push(quote(program));
        line.extend(args.iter().map(|a| quote(a)));
        let script = format!("{}; echo \"[exit $?]\"; sleep 600", line.join(" "));
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "120", "-y", "50", "-s", "t", &script])
            .status()
            .expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        Tty { socket }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types text as it is (no key names), without Enter.
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "t", "-l", text]);
    }

    /// Types a line and presses Enter.
    pub fn type_line(&self, text: &str) {
        self.type_text(text);
        self.key("Enter");
    }

    /// Presses one key by tmux's name for it: `Enter`, `C-d`, `C-c`, `Up`.
    pub fn key(&self, name: &str) {
        self.tmux(&["send-keys", "-t", "t", name]);
    }

    /// The whole screen and its scrollback, wrapped lines joined.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
    }

    /// The screen with its colours, as escape sequences.
    pub fn screen_with_escapes(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-e", "-J", "-S", "-", "-t", "t"])
    }

    /// Waits until `text` appears on the screen `count` times; returns the
    /// screen. Fails with the screen shown when it does not.
    pub fn wait_for_n(&self, text: &str, count: usize, timeout: Duration) -> String {
        super::eventually(
            format_args!("{text:?} (x{count}) on the screen"),
            timeout,
            || {
                let screen = self.screen();
                if screen.matches(text).count() >= count {
                    Ok(screen)
                } else {
                    Err(format!("the screen:\n{screen}"))
                }
            },
        )
    }

    pub fn wait_for(&self, text: &str, timeout: Duration) -> String {
        self.wait_for_n(text, 1, timeout)
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}
