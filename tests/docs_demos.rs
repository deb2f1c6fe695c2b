//! The demos in the docs work when typed as written.
//!
//! - The cluster that docs/lab.md's demos and README.md's tour start has a
//!   rate limit at least as large as the number of gateway requests the
//!   demos then make (demo 6 exceeds it on purpose, and must).
//! - compose.yaml's own examples of admin routes carry the admin token the
//!   file mounts, so they do not get 401.
//!
//! Markdown is read as text: fenced code blocks, and inline code spans in
//! the prose. No cluster is started.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The course's default rate limit (`--rate-limit` alone), a minute's worth.
const DEFAULT_RATE_LIMIT: u64 = 10;

/// The text between the line starting with `from` and the next line
/// starting with `to` (or the end).
fn section<'a>(text: &'a str, from: &str, to: &str) -> &'a str {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("no `{from}` in the text"));
    let rest = &text[start..];
    let end = rest[from.len()..]
        .find(to)
        .map_or(rest.len(), |i| i + from.len());
    &rest[..end]
}

/// (is it in a fenced code block, the line) for every line.
fn lines_with_fences(text: &str) -> Vec<(bool, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        out.push((fenced, line));
    }
    out
}

/// The `kvlab up` command in a code block, and the rate limit it sets (the
/// requests a minute), if it sets one.
fn rate_limit_of_up(text: &str) -> Option<u64> {
    let up = lines_with_fences(text)
        .into_iter()
        .find(|(fenced, l)| *fenced && l.trim_start().starts_with("kvlab up "))
        .map(|(_, l)| l)
        .expect("a `kvlab up` command in a code block");
    let words: Vec<&str> = up.split_whitespace().collect();
    if !words.contains(&"--rate-limit") {
        return None;
    }
    let max = words
        .iter()
        .position(|w| *w == "--rate-limit-max")
        .map(|i| words[i + 1].parse().expect("--rate-limit-max N"));
    Some(max.unwrap_or(DEFAULT_RATE_LIMIT))
}

/// The commands of `kvlab client` that each send one request to the gateway.
const CLIENT_COMMANDS: &[&str] = &["write", "read", "status", "stats"];

/// Gateway requests the text asks to be typed: each `>>>` line and each
/// curl to port 8000 in code blocks; each client command in an inline code
/// span of the prose (`write`, `status`), times the lines of the code block
/// before when the prose says "After each one".
fn gateway_requests(text: &str) -> u64 {
    let mut count = 0;
    let mut last_block_commands = 0;
    let mut in_block = 0;
    for (fenced, line) in lines_with_fences(text) {
        let t = line.trim_start();
        if fenced {
            if t.starts_with(">>>") || (t.starts_with("curl") && t.contains(":8000")) {
                count += 1;
            }
            if !t.is_empty() && !t.starts_with('#') {
                in_block += 1;
            }
            continue;
        }
        if in_block > 0 {
            last_block_commands = in_block;
            in_block = 0;
        }
        let spans = line
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| CLIENT_COMMANDS.contains(s))
            .count() as u64;
        count += match line.contains("After each one") {
            true => spans * last_block_commands,
            false => spans,
        };
    }
    count
}

#[test]
fn the_labs_demos_fit_in_the_rate_limit_of_demo_1s_cluster() {
    let lab = read("docs/lab.md");
    let demos = section(&lab, "## The demos", "\n## ");
    let limit = rate_limit_of_up(demos).expect("demo 1 starts a rate-limited gateway");
    let typed = gateway_requests(section(demos, "1. **Start.**", "6. **The rate limit.**"));
    assert!(
        typed >= 7,
        "demos 1 to 5 type {typed} gateway requests: is the parsing still right?"
    );
    assert!(
        limit >= typed,
        "demo 1's cluster allows {limit} requests a minute, but demos 2 to 5 type {typed}: \
         the demos would hit 429 (raise --rate-limit-max in docs/lab.md)"
    );
    // Demo 6 shows the limit on purpose: its loop must pass it.
    let demo6 = section(demos, "6. **The rate limit.**", "\n## ");
    let loop_count: u64 = demo6
        .split("$(seq ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("demo 6's `for i in $(seq N)` loop");
    assert!(
        loop_count > limit,
        "demo 6 sends {loop_count} requests, within demo 1's limit of {limit}: nothing is refused"
    );
}

#[test]
fn the_readme_tour_fits_in_the_rate_limit_of_its_cluster() {
    let readme = read("README.md");
    let tour = section(&readme, "## A five-minute tour", "\n## ");
    let limit = rate_limit_of_up(tour).expect("the tour starts a rate-limited gateway");
    let typed = gateway_requests(section(tour, "**1. Start a cluster**", "**5. Check it.**"));
    // 3 at the prompt, then `write` and `status` after each of 5 curls.
    assert!(
        typed > DEFAULT_RATE_LIMIT,
        "the tour types {typed} gateway requests: is the parsing still right?"
    );
    assert!(
        limit >= typed,
        "the tour's cluster allows {limit} requests a minute, but the tour types {typed}"
    );
}

/// compose.yaml's examples of admin routes carry the admin token, and the
/// token they read is the file the cluster's coordinator is given.
#[test]
fn compose_examples_of_admin_routes_send_the_admin_token() {
    let compose = read("compose.yaml");
    let admin = ["/kill", "/spawn", "/catchup", "/admin/"];
    let examples: Vec<&str> = compose
        .lines()
        .filter(|l| l.trim_start().starts_with('#') && l.contains("curl"))
        .filter(|l| l.contains("localhost:7000") && admin.iter().any(|a| l.contains(a)))
        .collect();
    assert!(!examples.is_empty(), "compose.yaml shows no admin example");
    for example in &examples {
        assert!(
            example.contains("-H \"Authorization: Bearer $(cat kvlab-admin-token)\""),
            "an admin example without the admin token gets 401: {example}"
        );
    }
    // The token file is made before `up`, mounted where the coordinator
    // reads it, and named by the same default.
    assert!(
        compose.contains("> kvlab-admin-token"),
        "compose.yaml says how to make kvlab-admin-token"
    );
    assert!(
        compose.contains("--admin-token-file, /run/kvlab/admin-token"),
        "the coordinator reads its token from the mounted file"
    );
    assert!(
        compose
            .contains("${KVLAB_ADMIN_TOKEN_FILE:-./kvlab-admin-token}:/run/kvlab/admin-token:ro"),
        "the file is mounted where --admin-token-file reads it"
    );
    // The docs page on runtimes gives the same example.
    let runtimes = read("docs/runtimes.md");
    assert!(
        runtimes.contains("Authorization: Bearer $(cat kvlab-admin-token)"),
        "docs/runtimes.md shows how to send the admin token to a Compose cluster"
    );
}
