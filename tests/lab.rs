//! The lab as a student meets it: the interactive client against a real
//! cluster, and `kvlab up --config student_config.json`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{secs, wait, Cluster, DEMO_3_2_2};
use serde_json::json;

/// Types lines into `kvlab client` (stdin is a pipe) and returns what it printed.
fn type_into_client(gateway: &str, lines: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvlab"))
        .args(["client", "--gateway", gateway])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Demos 1 to 4 through the gateway, typed into the interactive client.
#[test]
fn demos_through_the_interactive_client() {
    let c = Cluster::start(&format!("{DEMO_3_2_2} --sync-delay 0.1 --async-delay 1 --rate-limit --rate-limit-max 100 --rate-limit-window 60"));
    // Demo 2.
    let out = type_into_client(
        &c.gateway,
        "write name distributed-systems\nread name\nstatus\nquit\n",
    );
    assert!(out.contains("wrote name = distributed-systems"), "{out}");
    assert!(out.contains("acks 2/2"), "{out}");
    assert!(out.contains("served by follower-2"), "{out}");
    assert!(out.contains("can write ✓"), "{out}");
    // Demo 3.
    c.post("/kill/follower-1", json!({}));
    let out = type_into_client(&c.gateway, "write k still-works\nstatus\n");
    assert!(out.contains("wrote k = still-works"), "{out}");
    assert!(out.contains("follower-1   dead"), "{out}");
    c.post("/kill/follower-2", json!({}));
    let out = type_into_client(&c.gateway, "write k fails\n");
    assert!(out.contains("503 Write quorum not available"), "{out}");
    assert!(out.contains("Alive Followers: 1"), "{out}");
    assert!(out.contains("Required: 2"), "{out}");
    // Demo 4: bring both back; follower-1 catches up on what it missed.
    assert_eq!(c.post("/spawn", json!({})).1["node_id"], "follower-1");
    assert_eq!(c.post("/spawn", json!({})).1["node_id"], "follower-2");
    c.post("/catchup", json!({"node_id": "follower-2"}));
    let out = type_into_client(&c.gateway, "read k\nstats\n");
    assert!(out.contains("k = still-works"), "{out}");
    assert!(
        out.contains("rate limiter: fixed_window, 100 requests per 60"),
        "{out}"
    );
}

/// `kvlab up --config` takes the student's settings, broken ones included.
#[test]
fn up_takes_the_student_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("student_config.json");
    std::fs::write(
        &path,
        json!({
            "deployment": {"followers": 5, "write_quorum": 4, "read_quorum": 1,
                           "auto_spawn": true, "auto_spawn_delay": 1},
            "gateway": {"rate_limit_enabled": true, "rate_limit_max": 20, "rate_limit_window": 2},
            "justifications": {"quorum_choice": "TODO"}
        })
        .to_string(),
    )
    .unwrap();
    let c = Cluster::start_plus("--no-delay", &["--config", path.to_str().unwrap()]);
    let s = c.status();
    assert_eq!(s["followers"].as_array().unwrap().len(), 5);
    assert_eq!(s["quorum"]["W"], 4);
    assert_eq!(s["quorum"]["R"], 1);
    let stats: serde_json::Value = c
        .http
        .get(format!("{}/stats", c.gateway))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stats["rate_limiter"]["max_requests"], 20);
    assert_eq!(stats["rate_limiter"]["window_seconds"], 2.0);
    c.wait_for_event("cluster_ready", None, Duration::from_secs(1));
}

#[test]
fn an_impossible_student_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("student_config.json");
    std::fs::write(
        &path,
        r#"{"deployment": {"followers": 2, "write_quorum": 3}}"#,
    )
    .unwrap();
    let out = common::kvlab()
        .args(["up", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("W=3 is larger than the number of followers N=2"),
        "{err}"
    );
    std::fs::write(&path, r#"{"deployment": {"followers": "two"}}"#).unwrap();
    let out = common::kvlab()
        .args(["up", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid student config"));
}

/// `kvlab lab export DIR` writes the student handout, byte for byte the
/// repository's files, without the instructor's folder; it never writes
/// over an existing folder's contents.
#[test]
fn lab_export_writes_the_handout_without_the_solution() {
    let root = tempfile::Builder::new()
        .prefix("kvlab-export-")
        .tempdir()
        .unwrap();
    let dir = root.path().join("handout");
    let out = common::kvlab()
        .args(["lab", "export"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not the repository"), "{stdout}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["README.md", "student_config.json"]);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/cloudcart");
    for name in &names {
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(repo.join(name)).unwrap(),
            "{name}"
        );
    }
    // The exported config is the one `kvlab assess` and `up` read.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("student_config.json")).unwrap()).unwrap();
    assert_eq!(config["deployment"]["followers"], 5);
    // A second export into the same folder is refused, and changes nothing.
    std::fs::write(dir.join("student_config.json"), "{\"edited\": true}").unwrap();
    let out = common::kvlab()
        .args(["lab", "export"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert_eq!(
        std::fs::read_to_string(dir.join("student_config.json")).unwrap(),
        "{\"edited\": true}"
    );
}

/// The sample GitHub Classroom workflow grades each default incident once,
/// with the points the default scenarios give it (100 in all).
#[test]
fn the_classroom_workflow_matches_the_default_scenarios() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/cloudcart");
    let workflow = std::fs::read_to_string(root.join("classroom/classroom.yml")).unwrap();
    let scenarios: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("instructor_config.json")).unwrap(),
    )
    .unwrap();
    let commands: Vec<&str> = workflow
        .lines()
        .filter_map(|l| l.trim().strip_prefix("command: "))
        .collect();
    let points: Vec<f64> = workflow
        .lines()
        .filter_map(|l| l.trim().strip_prefix("max-score: "))
        .map(|p| p.parse().unwrap())
        .collect();
    let expected: Vec<(String, f64)> = scenarios["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(commands.len(), expected.len(), "{workflow}");
    for ((command, points), (id, weight)) in commands.iter().zip(&points).zip(&expected) {
        assert_eq!(
            *command,
            format!("kvlab assess --config student_config.json --only {id}")
        );
        assert_eq!(points, weight, "{id}");
        let step = id.to_ascii_lowercase();
        assert!(workflow.contains(&format!("id: {step}\n")), "{id}");
        assert!(
            workflow.contains(&format!(
                "{id}_RESULTS: \"${{{{steps.{step}.outputs.result}}}}\""
            )),
            "{id}"
        );
    }
}

/// The console of `kvlab up` redirected to a file, as a log: no colour
/// codes there or in the nodes' log files, and once the cluster is ready
/// one line gives every node's real role (start-up lines carry none: the
/// sets change as nodes come up).
#[test]
fn redirected_console_is_plain_and_names_the_real_roles() {
    let dir = tempfile::Builder::new()
        .prefix("kvlab-console-")
        .tempdir()
        .unwrap();
    let console = dir.path().join("console.txt");
    let base = common::free_port_block();
    let mut up = common::kvlab()
        .arg("up")
        .args(DEMO_3_2_2.split_whitespace())
        .arg("--in-memory")
        .args(common::up_ports(base))
        .arg("--log-dir")
        .arg(dir.path().join("logs"))
        .env_remove("NO_COLOR")
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let roles = "🧭 roles: leader [LEADER], follower-1 [SYNC], follower-2 [SYNC+READ], follower-3 [ASYNC+READ]";
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    // Asserted below, once `up` is stopped.
    let text = wait("the roles line in the console file", secs(30))
        .try_until(|| Some(read()).filter(|t| t.contains("🧭 roles")))
        .unwrap_or_else(read);
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    up.wait().unwrap();
    assert!(text.contains(roles), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
    for line in text.lines().filter(|l| l.contains("is up on")) {
        assert!(!line.contains('['), "a start-up line with a role: {line}");
    }
    for log in std::fs::read_dir(dir.path().join("logs")).unwrap() {
        let path = log.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.contains(&0x1b), "colour codes in {}", path.display());
    }
}

/// Every option of every subcommand says what it is for in `--help`.
#[test]
fn every_help_entry_has_a_description() {
    let commands: &[&[&str]] = &[
        &[],
        &["up"],
        &["gateway"],
        &["coordinator"],
        &["registry"],
        &["node"],
        &["client"],
        &["assess"],
        &["bench"],
        &["lab"],
        &["lab", "export"],
    ];
    let mut bare = Vec::new();
    for args in commands {
        let out = common::kvlab().args(*args).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let entry = line.trim_start();
            // `-W, --write-quorum`, `--json`; not a possible value (`- kvlab: ...`).
            let is_option =
                line.starts_with("  ") && entry.starts_with('-') && !entry.starts_with("- ");
            let is_command = line.starts_with("  ")
                && !line.starts_with("   ")
                && !is_option
                && i > 0
                && lines[..i].iter().any(|l| l.starts_with("Commands:"))
                && !lines[..i].iter().any(|l| l.starts_with("Options:"));
            if !is_option && !is_command {
                continue;
            }
            // The description follows on the line (after two spaces) or on the next.
            let same_line = entry
                .split_once("  ")
                .map(|(_, rest)| rest.trim())
                .is_some_and(|d| !d.is_empty() && !d.starts_with('['));
            let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
            let next_line = !next.is_empty() && !next.starts_with('[') && !next.starts_with('-');
            if !same_line && !next_line {
                bare.push(format!("kvlab {} :: {entry}", args.join(" ")));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "options without a description:\n{}",
        bare.join("\n")
    );
}

/// `kvlab up` in a real terminal: a coloured console (plain under
/// NO_COLOR), the roles once ready, and Ctrl-C stops the whole cluster.
#[test]
fn up_on_a_terminal_colours_and_stops_on_ctrl_c() {
    if !common::tty::available() {
        return;
    }
    for no_color in [false, true] {
        let scratch = common::scratch();
        let base = common::free_port_block();
        let ports = common::up_ports(base);
        let mut args = vec!["up", "--in-memory"];
        args.extend(DEMO_3_2_2.split_whitespace());
        args.extend(ports.iter().map(String::as_str));
        let tmp = scratch.path().to_str().unwrap().to_string();
        let mut env = vec![("TMPDIR", tmp.as_str()), ("TERM", "xterm-256color")];
        if no_color {
            env.push(("NO_COLOR", "1"));
        }
        let t = common::tty::Tty::spawn(env!("CARGO_BIN_EXE_kvlab"), &args, &env);
        let wait = Duration::from_secs(30);
        t.wait_for("🧭 roles: leader [LEADER], follower-1 [SYNC]", wait);
        let coloured = t.screen_with_escapes().contains("\u{1b}[");
        assert_eq!(
            coloured,
            !no_color,
            "NO_COLOR={no_color}:\n{}",
            t.screen_with_escapes()
        );
        t.key("C-c");
        let screen = t.wait_for("[exit 0]", wait);
        assert!(screen.contains("cluster stopped"), "{screen}");
    }
}

/// `kvlab assess` in a real terminal: the score card in colour, and the
/// spinner gone when the card is printed.
#[test]
fn assess_on_a_terminal_prints_the_card() {
    if !common::tty::available() {
        return;
    }
    let scratch = common::scratch();
    let base = common::free_port_block().to_string();
    let solution = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("labs/cloudcart/instructor/solution_config.json");
    let tmp = scratch.path().to_str().unwrap().to_string();
    let t = common::tty::Tty::spawn(
        env!("CARGO_BIN_EXE_kvlab"),
        &[
            "assess",
            "--config",
            solution.to_str().unwrap(),
            "--only",
            "INC-0",
            "--base-port",
            &base,
        ],
        &[("TMPDIR", tmp.as_str()), ("TERM", "xterm-256color")],
    );
    let screen = t.wait_for("[exit 0]", Duration::from_secs(60));
    assert!(
        screen.contains("INC-0  Basic operations   4/4 passed"),
        "{screen}"
    );
    assert!(screen.contains("SCORE 20 / 20"), "{screen}");
    assert!(
        t.screen_with_escapes().contains("\u{1b}["),
        "a terminal gets colour"
    );
}
