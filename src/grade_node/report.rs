//! What a grading of a student's node found, and its renderings: the
//! terminal card, JSON, and the files Gradescope, PrairieLearn and JUnit
//! readers take (the same formats as `kvlab assess`, see
//! [`crate::assess::render::Format`]).
//!
//! Pure functions of a [`Report`]: testable on hand-made reports.

use std::fmt::Write;

use owo_colors::OwoColorize;
use serde::Serialize;
use serde_json::json;

use crate::assess::render::xml_escape;
use crate::assess::report::points;

/// One test's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub id: String,
    pub level: u8,
    /// What the test checks, in one line.
    pub what: String,
    pub passed: bool,
    pub points: f64,
    pub max_points: f64,
    /// What happened: on a failure, what was sent, what came back and what
    /// the protocol requires.
    pub detail: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub node_cmd: String,
    pub level: u8,
    pub seed: u64,
    pub tests: Vec<TestResult>,
    pub score: f64,
    pub max_score: f64,
    pub percent: f64,
    pub duration_seconds: f64,
    /// Where the logs and the cluster run's artifacts (report.html) are.
    pub artifacts: String,
    /// The command that replays this grading.
    pub replay: String,
}

impl Report {
    pub fn new(
        node_cmd: &str,
        level: u8,
        seed: u64,
        tests: Vec<TestResult>,
        duration_seconds: f64,
        artifacts: String,
        replay: String,
    ) -> Report {
        let score: f64 = tests.iter().map(|t| t.points).sum();
        let max_score: f64 = tests.iter().map(|t| t.max_points).sum();
        Report {
            node_cmd: node_cmd.to_string(),
            level,
            seed,
            percent: crate::assess::grade::percent(score, max_score),
            tests,
            score,
            max_score,
            duration_seconds,
            artifacts,
            replay,
        }
    }

    pub fn all_passed(&self) -> bool {
        self.tests.iter().all(|t| t.passed)
    }

    fn failed(&self) -> Vec<&str> {
        self.tests
            .iter()
            .filter(|t| !t.passed)
            .map(|t| t.id.as_str())
            .collect()
    }

    fn summary(&self) -> String {
        let passed = self.tests.len() - self.failed().len();
        format!(
            "level {}: {} / {} points ({}%), {passed} of {} tests passed",
            self.level,
            points(self.score),
            points(self.max_score),
            points(self.percent),
            self.tests.len()
        )
    }
}

pub fn render(r: &Report, format: crate::assess::render::Format, color: bool) -> String {
    use crate::assess::render::Format;
    match format {
        Format::Terminal => terminal(r, color),
        Format::Json => serde_json::to_string_pretty(r).unwrap_or_default(),
        Format::Gradescope => gradescope(r),
        Format::Prairielearn => prairielearn(r),
        Format::Junit => junit(r),
    }
}

/// The card a student reads: every test with its verdict, the failures
/// with their whole explanation, then the score and how to replay.
pub fn terminal(r: &Report, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kvlab grade-node · level {} · {}", r.level, r.node_cmd);
    for t in &r.tests {
        let mark = match (t.passed, color) {
            (true, true) => "PASS".green().to_string(),
            (true, false) => "PASS".into(),
            (false, true) => "FAIL".red().bold().to_string(),
            (false, false) => "FAIL".into(),
        };
        let _ = writeln!(out, "  {mark}  L{} {:<24} {}", t.level, t.id, t.what);
        let detail = if t.passed {
            String::new()
        } else {
            t.detail.clone()
        };
        for line in detail.lines() {
            let _ = writeln!(out, "          {line}");
        }
    }
    let _ = writeln!(out, "\n{}", r.summary());
    let failed = r.failed();
    if !failed.is_empty() {
        let _ = writeln!(out, "failed: {}", failed.join(", "));
    }
    let _ = writeln!(out, "logs and artifacts: {}", r.artifacts);
    let _ = writeln!(out, "replay: {}", r.replay);
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn test_text(t: &TestResult) -> String {
    format!(
        "{} ({})\n{}",
        t.what,
        if t.passed { "passed" } else { "FAILED" },
        t.detail
    )
}

pub fn gradescope(r: &Report) -> String {
    let tests: Vec<serde_json::Value> = r
        .tests
        .iter()
        .map(|t| {
            json!({
                "name": format!("L{} {}", t.level, t.id),
                "score": round2(t.points),
                "max_score": round2(t.max_points),
                "status": if t.passed { "passed" } else { "failed" },
                "output": test_text(t),
            })
        })
        .collect();
    let body = json!({
        "score": round2(r.score),
        "max_score": round2(r.max_score),
        "output": format!("{}\nreplay: {}", r.summary(), r.replay),
        "tests": tests,
    });
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

pub fn prairielearn(r: &Report) -> String {
    let tests: Vec<serde_json::Value> = r
        .tests
        .iter()
        .map(|t| {
            json!({
                "name": format!("L{} {}", t.level, t.id),
                "description": t.what,
                "points": round2(t.points),
                "max_points": round2(t.max_points),
                "message": if t.passed { "passed".to_string() } else {
                    t.detail.lines().next().unwrap_or("failed").to_string()
                },
                "output": t.detail,
            })
        })
        .collect();
    let body = json!({
        "gradable": true,
        "score": crate::assess::render::prairielearn_score(r.score, r.max_score),
        "message": r.summary(),
        "output": format!("replay: {}", r.replay),
        "tests": tests,
    });
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

pub fn junit(r: &Report) -> String {
    let failures = r.failed().len();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"kvlab grade-node\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
        r.tests.len(),
        r.duration_seconds
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
        xml_escape(&format!("node protocol, level {}", r.level)),
        r.tests.len()
    );
    for t in &r.tests {
        let _ = writeln!(
            out,
            "    <testcase classname=\"level{}\" name=\"{}\" time=\"{:.3}\">",
            t.level,
            xml_escape(&t.id),
            t.duration_ms as f64 / 1000.0
        );
        if t.passed {
            let _ = writeln!(
                out,
                "      <system-out>{}</system-out>",
                xml_escape(&t.detail)
            );
        } else {
            let first = t.detail.lines().next().unwrap_or("failed");
            let _ = writeln!(
                out,
                "      <failure message=\"{}\">{}</failure>",
                xml_escape(first),
                xml_escape(&t.detail)
            );
        }
        let _ = writeln!(out, "    </testcase>");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let t = |id: &str, passed: bool, max: f64| TestResult {
            id: id.into(),
            level: 1,
            what: "a check".into(),
            passed,
            points: if passed { max } else { 0.0 },
            max_points: max,
            detail: if passed {
                "ok".into()
            } else {
                "sent X\ngot <Y> & \"Z\"".into()
            },
            duration_ms: 12,
        };
        Report::new(
            "python3 node.py",
            1,
            7,
            vec![
                t("starts", true, 1.0),
                t("refuses_gaps", false, 1.0),
                t("cluster", true, 5.0),
            ],
            3.5,
            "/tmp/out".into(),
            "kvlab grade-node --seed 7".into(),
        )
    }

    #[test]
    fn scores_add_up_and_failures_are_named() {
        let r = sample();
        assert_eq!(r.score, 6.0);
        assert_eq!(r.max_score, 7.0);
        assert!(!r.all_passed());
        let card = terminal(&r, false);
        assert!(card.contains("FAIL  L1 refuses_gaps"), "{card}");
        assert!(card.contains("failed: refuses_gaps"), "{card}");
        assert!(card.contains("replay: kvlab grade-node --seed 7"), "{card}");
    }

    #[test]
    fn platform_files_parse_and_carry_every_test() {
        let r = sample();
        let gs: serde_json::Value = serde_json::from_str(&gradescope(&r)).unwrap();
        assert_eq!(gs["score"], 6.0);
        assert_eq!(gs["tests"].as_array().unwrap().len(), 3);
        assert_eq!(gs["tests"][1]["status"], "failed");
        let pl: serde_json::Value = serde_json::from_str(&prairielearn(&r)).unwrap();
        assert_eq!(pl["gradable"], true);
        assert!((pl["score"].as_f64().unwrap() - 6.0 / 7.0).abs() < 1e-3);
        let xml = junit(&r);
        let mut reader = quick_xml::Reader::from_str(&xml);
        let mut failures = 0;
        loop {
            match reader.read_event().expect("well-formed JUnit XML") {
                quick_xml::events::Event::Eof => break,
                quick_xml::events::Event::Start(e) if e.name().into_inner() == "failure" => {
                    failures += 1
                }
                _ => {}
            }
        }
        assert_eq!(failures, 1);
        assert!(xml.contains("&lt;Y&gt; &amp; &quot;Z&quot;"));
    }
}
