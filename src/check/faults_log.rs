//! `--faults-log FILE`: faults someone made by hand during a run, joined
//! into its timeline, `faults.json` and its stories.
//!
//! One event a line; blank lines and lines starting with `#` are skipped:
//!
//! ```text
//! 2026-12-06T07:31:02.250Z crash follower-2
//! 2026-12-06T07:31:05+00:00 restart follower-2 respawned with /spawn
//! {"time": "2026-12-06T07:31:09Z", "fault": "pause", "node": "follower-1"}
//! ```
//!
//! The time is RFC 3339 (`date -Ins` prints it), then the event and the
//! node; anything after the node is a note. The same as a JSON object
//! works too. The events are `--fault-cmd`'s words: `crash`, `kill` and
//! `pause` start a fault on the node, `restart` ends a crash or a kill,
//! `resume` ends a pause. A fault the log does not end lasts until the end
//! of the run; events outside the run are left out (a fault begun before
//! the run starts at 0 s).

use chrono::{DateTime, Utc};

use super::nemesis::{By, FaultKind, FaultRecord};

/// One line of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub word: String,
    pub node: String,
    pub note: String,
}

/// Reads the log; an error names the line.
pub fn parse(text: &str) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let event = parse_line(line).map_err(|e| format!("line {}: {e}: `{line}`", i + 1))?;
        events.push(event);
    }
    events.sort_by_key(|e| e.at);
    Ok(events)
}

fn parse_line(line: &str) -> Result<Event, String> {
    let (time, word, node, note) = if line.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let field = |f: &str| v[f].as_str().unwrap_or("").to_string();
        (field("time"), field("fault"), field("node"), field("note"))
    } else {
        let mut parts = line.splitn(4, char::is_whitespace);
        let mut next = || parts.next().unwrap_or("").trim().to_string();
        (next(), next(), next(), next())
    };
    let at = DateTime::parse_from_rfc3339(&time)
        .map_err(|e| format!("the time `{time}` is not RFC 3339 ({e})"))?
        .with_timezone(&Utc);
    if !["crash", "kill", "pause", "resume", "restart"].contains(&word.as_str()) {
        return Err(format!(
            "unknown event `{word}` (crash, kill, pause, resume or restart)"
        ));
    }
    if node.is_empty() {
        return Err("no node after the event".into());
    }
    Ok(Event {
        at,
        word,
        node,
        note,
    })
}

/// The faults the events describe, in seconds of a run that began at
/// `began` and lasted `length` seconds. Also returns notes on events that
/// were left out or did not match.
pub fn faults(
    events: &[Event],
    began: DateTime<Utc>,
    length: f64,
) -> (Vec<FaultRecord>, Vec<String>) {
    let secs = |at: DateTime<Utc>| (at - began).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let round = |x: f64| (x.clamp(0.0, length) * 1000.0).round() / 1000.0;
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut notes = Vec::new();
    // Open faults by node: the index in `faults`.
    let mut open: std::collections::HashMap<String, usize> = Default::default();
    for e in events {
        let t = secs(e.at);
        if t > length {
            notes.push(format!(
                "faults log: {} {} at {} is after the run: left out",
                e.word, e.node, e.at
            ));
            continue;
        }
        match e.word.as_str() {
            "crash" | "kill" | "pause" => {
                let kind = match e.word.as_str() {
                    "crash" => FaultKind::Crash,
                    "kill" => FaultKind::Kill,
                    _ => FaultKind::Pause,
                };
                open.insert(e.node.clone(), faults.len());
                faults.push(FaultRecord {
                    kind,
                    node: e.node.clone(),
                    how: if e.note.is_empty() {
                        vec![]
                    } else {
                        vec![e.note.clone()]
                    },
                    start: round(t),
                    end: round(length),
                    injected: true,
                    error: None,
                    by: Some(By::Hand),
                });
            }
            word => {
                let ends = |k: FaultKind| match word {
                    "resume" => k == FaultKind::Pause,
                    _ => matches!(k, FaultKind::Crash | FaultKind::Kill),
                };
                match open.get(&e.node).copied() {
                    Some(i) if ends(faults[i].kind) => {
                        faults[i].end = round(t);
                        open.remove(&e.node);
                    }
                    _ if t < 0.0 => {}
                    _ => notes.push(format!(
                        "faults log: {word} {} at {} ends no fault the log began",
                        e.node, e.at
                    )),
                }
            }
        }
    }
    // Faults that ended before the run began did not touch it.
    faults.retain(|f| f.end > 0.0);
    (faults, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_of_text_and_json_lines_becomes_faults_of_the_run() {
        let log = "\
# made by hand
2026-12-06T07:00:02.500Z crash follower-2 kill -9 of its pid
{\"time\": \"2026-12-06T07:00:03Z\", \"fault\": \"pause\", \"node\": \"follower-1\"}
2026-12-06T08:00:05+01:00 restart follower-2

2026-12-06T07:00:06Z resume follower-1
2026-12-06T07:00:07Z kill follower-3
2026-12-06T07:09:00Z crash follower-1
";
        let events = parse(log).unwrap();
        assert_eq!(events.len(), 6);
        let began = DateTime::parse_from_rfc3339("2026-12-06T07:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (faults, notes) = faults(&events, began, 10.0);
        let got: Vec<_> = faults
            .iter()
            .map(|f| (f.kind, f.node.as_str(), f.start, f.end, f.by))
            .collect();
        assert_eq!(
            got,
            vec![
                (FaultKind::Crash, "follower-2", 2.5, 5.0, Some(By::Hand)),
                (FaultKind::Pause, "follower-1", 3.0, 6.0, Some(By::Hand)),
                (FaultKind::Kill, "follower-3", 7.0, 10.0, Some(By::Hand)),
            ]
        );
        assert_eq!(faults[0].how, vec!["kill -9 of its pid".to_string()]);
        assert!(notes[0].contains("after the run"), "{notes:?}");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let e =
            parse("2026-12-06T07:00:02Z crash follower-2\nyesterday crash follower-1").unwrap_err();
        assert!(
            e.starts_with("line 2: the time `yesterday` is not RFC 3339"),
            "{e}"
        );
        let e = parse("2026-12-06T07:00:02Z explode follower-2").unwrap_err();
        assert!(e.contains("unknown event `explode`"), "{e}");
        let e = parse("2026-12-06T07:00:02Z crash").unwrap_err();
        assert!(e.contains("no node"), "{e}");
        let e = parse("{\"time\": 3}").unwrap_err();
        assert!(e.contains("not RFC 3339"), "{e}");
    }
}
