//! The outputs of `kvlab assess`, each a pure function of a [`Report`].
//!
//! - `terminal`: the score card a student reads; colour only when asked
//!   (the caller decides: a terminal, no `NO_COLOR`, not writing to a file).
//! - `json`: the report as it is, for scripts.
//! - `gradescope`: Gradescope's `results.json`: score, max_score, one test
//!   per scenario with its score, its `visibility`, and Markdown feedback
//!   (`output_format: "md"`) naming the failing checks and the config
//!   field at fault; optionally a `leaderboard`.
//! - `prairielearn`: PrairieLearn's external-grader `results.json`: a
//!   `score` from 0 to 1, `gradable`, `message`, and `tests[]` with
//!   `points` / `max_points`. An invalid config gives `gradable: false`
//!   with `format_errors` (see [`config_error`]).
//! - `junit`: JUnit XML, one test suite per scenario and one test case per
//!   test, for CI systems. Text is escaped by hand (five entities, and the
//!   control characters XML 1.0 forbids are dropped): no XML crate needed.

use std::fmt::Write as _;

use owo_colors::OwoColorize;
use serde_json::json;

use super::report::{points, Report, ScenarioResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Terminal,
    Json,
    Gradescope,
    Prairielearn,
    Junit,
}

/// How to render, beyond the format.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours (terminal only).
    pub color: bool,
    /// Gradescope: add a `leaderboard` (score, and cost per hour).
    pub leaderboard: bool,
}

pub fn render(report: &Report, format: Format, style: Style) -> String {
    match format {
        Format::Terminal => terminal(report, style.color),
        Format::Json => json(report),
        Format::Gradescope => gradescope(report, style.leaderboard),
        Format::Prairielearn => prairielearn(report),
        Format::Junit => junit(report),
    }
}

/// The report a grading platform gets when the student's config cannot be
/// run at all (bad JSON, W > N...): the platform must still receive its
/// file, with the reason, rather than nothing. `None` for the formats that
/// have no such shape (the error then goes to stderr only).
pub fn config_error(format: Format, config: &str, problem: &str) -> Option<String> {
    let body = match format {
        Format::Prairielearn => json!({
            "gradable": false,
            "score": 0.0,
            "message": format!("{config} cannot be graded: {problem}"),
            "format_errors": { config: [problem] },
            "tests": [],
        }),
        Format::Gradescope => json!({
            "score": 0.0,
            "output": format!("**{config} cannot be graded.**\n\n{problem}\n\nFix the file and submit again."),
            "output_format": "md",
            "tests": [],
        }),
        Format::Terminal | Format::Json | Format::Junit => return None,
    };
    serde_json::to_string_pretty(&body).ok()
}

// ---------------------------------------------------------------------------
// Terminal
// ---------------------------------------------------------------------------

/// Colours a piece of text, or leaves it alone.
struct Paint(bool);

impl Paint {
    fn good(&self, s: &str) -> String {
        if self.0 {
            s.green().to_string()
        } else {
            s.to_string()
        }
    }
    fn bad(&self, s: &str) -> String {
        if self.0 {
            s.red().to_string()
        } else {
            s.to_string()
        }
    }
    fn head(&self, s: &str) -> String {
        if self.0 {
            s.bold().to_string()
        } else {
            s.to_string()
        }
    }
    fn dim(&self, s: &str) -> String {
        if self.0 {
            s.dimmed().to_string()
        } else {
            s.to_string()
        }
    }
    fn either(&self, ok: bool, s: &str) -> String {
        if ok {
            self.good(s)
        } else {
            self.bad(s)
        }
    }
}

pub fn terminal(r: &Report, color: bool) -> String {
    let p = Paint(color);
    let mut out = String::new();
    let rule = "═".repeat(64);
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(
        out,
        "{}",
        p.head("  kvlab assess: CloudCart incident report")
    );
    let _ = writeln!(out, "{rule}");
    let _ = writeln!(out, "  config     {}", r.config);
    let _ = writeln!(out, "  scenarios  {}", r.scenario_file);
    card_settings(&mut out, r, &p);
    for s in &r.scenarios {
        card_scenario(&mut out, s, &p);
    }
    card_justifications(&mut out, r, &p);
    let _ = writeln!(out, "\n{rule}");
    let total = format!(
        "  SCORE {} / {}  ({:.0}%)   GRADE {}",
        points(r.score),
        points(r.max_score),
        r.percent,
        r.grade
    );
    let _ = writeln!(out, "{}", p.head(&p.either(r.grade != "F", &total)));
    let _ = writeln!(
        out,
        "{}",
        p.dim(&format!("  ran in {:.1} s", r.duration_seconds))
    );
    let _ = writeln!(out, "{rule}");
    out
}

fn card_settings(out: &mut String, r: &Report, p: &Paint) {
    let s = &r.settings;
    let c = &r.consistency;
    let _ = writeln!(out, "\n{}", p.head("  Deployment"));
    let _ = writeln!(
        out,
        "  followers N={}  W={}  R={}   auto-spawn {} (delay {} s)   rate limit {}",
        s.followers,
        s.write_quorum,
        s.read_quorum,
        if s.auto_spawn { "on" } else { "off" },
        s.auto_spawn_delay,
        if s.rate_limit_enabled {
            format!("{} per {} s", s.rate_limit_max, s.rate_limit_window)
        } else {
            "off".into()
        }
    );
    let mark = if c.strong { "✓" } else { "✗" };
    let _ = writeln!(
        out,
        "  {}",
        p.either(c.strong, &format!("{mark} {}", c.verdict()))
    );
    let cost = &r.cost;
    let line = format!(
        "{} cost ${}/hour for {} nodes (1 leader + {} followers), budget ${}/hour{}",
        if cost.within_budget { "✓" } else { "✗" },
        points(cost.per_hour),
        cost.nodes,
        s.followers,
        points(cost.budget),
        if cost.within_budget {
            ""
        } else {
            ": OVER BUDGET"
        }
    );
    let _ = writeln!(out, "  {}", p.either(cost.within_budget, &line));
}

fn card_scenario(out: &mut String, s: &ScenarioResult, p: &Paint) {
    let all = s.passed == s.total;
    let head = format!(
        "{}  {}   {}/{} passed   {} / {} points",
        s.id,
        s.name,
        s.passed,
        s.total,
        points(s.score),
        points(s.weight)
    );
    let _ = writeln!(out, "\n  {}", p.head(&p.either(all, &head)));
    if let Some(reset) = &s.reset {
        let _ = writeln!(out, "    {}", p.dim(&format!("(before: {reset})")));
    }
    for t in &s.tests {
        let mark = if t.passed {
            p.good("✓")
        } else {
            p.bad("✗")
        };
        let _ = writeln!(
            out,
            "    {mark} {:<8} {:<22} {}",
            t.id,
            t.kind,
            p.dim(&t.detail)
        );
    }
}

fn card_justifications(out: &mut String, r: &Report, p: &Paint) {
    let _ = writeln!(
        out,
        "\n  {}",
        p.head(&format!("Justifications: {} of 4 filled in", r.justified))
    );
    for j in &r.justifications {
        let mark = if j.filled {
            p.good("✓")
        } else {
            p.bad("✗")
        };
        let text = j.text.as_deref().unwrap_or("(missing)");
        let _ = writeln!(out, "    {mark} {}: {}", j.name, text.trim());
    }
}

// ---------------------------------------------------------------------------
// JSON and Gradescope
// ---------------------------------------------------------------------------

pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Two decimals are plenty for points, and keep 1/3s readable.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn gradescope(r: &Report, leaderboard: bool) -> String {
    let tests: Vec<serde_json::Value> = r
        .scenarios
        .iter()
        .map(|s| {
            json!({
                "name": format!("{}: {}", s.id, s.name),
                "score": round2(s.score),
                "max_score": round2(s.weight),
                "status": if s.passed == s.total { "passed" } else { "failed" },
                "visibility": s.visibility,
                "output": scenario_markdown(s),
                "output_format": "md",
            })
        })
        .collect();
    let mut body = json!({
        "score": round2(r.score),
        "max_score": round2(r.max_score),
        "output": summary_markdown(r),
        "output_format": "md",
        "test_output_format": "md",
        "tests": tests,
    });
    if leaderboard {
        body["leaderboard"] = json!([
            {"name": "Score", "value": round2(r.score)},
            {"name": "Cost ($/hour)", "value": round2(r.cost.per_hour), "order": "asc"},
        ]);
    }
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

/// The whole run in a few Markdown lines: the verdicts the card shows.
fn summary_markdown(r: &Report) -> String {
    format!(
        "**Score {} / {} ({}), grade {}.**\n\n- {}\n- Cost ${}/hour against a budget of ${}/hour.\n- Justifications filled in: {} of 4.\n",
        points(r.score),
        points(r.max_score),
        format_args!("{}%", points(r.percent)),
        r.grade,
        r.consistency.verdict(),
        points(r.cost.per_hour),
        points(r.cost.budget),
        r.justified,
    )
}

/// One scenario as Markdown feedback: what it checks, the config field at
/// fault when it failed, and every test with its verdict and reason.
pub fn scenario_markdown(s: &ScenarioResult) -> String {
    let mut out = String::new();
    if !s.description.is_empty() {
        let _ = writeln!(out, "{}\n", s.description);
    }
    match (&s.setting, s.passed == s.total) {
        (Some(field), false) => {
            let _ = writeln!(out, "**Look at `{field}`** in your config.\n");
        }
        (None, false) => {
            let _ = writeln!(out, "**Some checks failed.**\n");
        }
        (_, true) => {}
    }
    for t in &s.tests {
        let verdict = if t.passed { "passed" } else { "**FAILED**" };
        let what = t.description.as_deref().unwrap_or(&t.kind);
        let _ = writeln!(
            out,
            "- `{}` {what} ({}): {verdict}. {}",
            t.id,
            t.kind,
            markdown_text(&t.detail)
        );
    }
    out
}

/// Plain text made safe inside a Markdown list item: characters Markdown
/// would read as formatting are escaped.
fn markdown_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|'
        ) {
            out.push('\\');
        }
        out.push(if c == '\n' { ' ' } else { c });
    }
    out
}

/// PrairieLearn's external-grader results: the score is a fraction.
pub fn prairielearn(r: &Report) -> String {
    let tests: Vec<serde_json::Value> = r
        .scenarios
        .iter()
        .map(|s| {
            let failed: Vec<&str> = s
                .tests
                .iter()
                .filter(|t| !t.passed)
                .map(|t| t.id.as_str())
                .collect();
            let message = match (failed.is_empty(), &s.setting) {
                (true, _) => "all checks passed".to_string(),
                (false, Some(field)) => {
                    format!("failed: {}; look at {field}", failed.join(", "))
                }
                (false, None) => format!("failed: {}", failed.join(", ")),
            };
            json!({
                "name": format!("{}: {}", s.id, s.name),
                "description": s.description,
                "points": round2(s.score),
                "max_points": round2(s.weight),
                "message": message,
                "output": scenario_text(s),
            })
        })
        .collect();
    let body = json!({
        "gradable": true,
        "score": prairielearn_score(r.score, r.max_score),
        "message": format!(
            "{} / {} points, grade {}. {}",
            points(r.score),
            points(r.max_score),
            r.grade,
            r.consistency.verdict()
        ),
        "output": summary_markdown(r),
        "tests": tests,
    });
    serde_json::to_string_pretty(&body).unwrap_or_default()
}

/// PrairieLearn's score: a fraction from 0 to 1, four decimals.
pub fn prairielearn_score(score: f64, max_score: f64) -> f64 {
    let fraction = if max_score > 0.0 {
        (score / max_score).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (fraction * 10_000.0).round() / 10_000.0
}

/// A scenario's tests as plain lines.
fn scenario_text(s: &ScenarioResult) -> String {
    let mut out = String::new();
    if !s.description.is_empty() {
        let _ = writeln!(out, "{}", s.description);
    }
    for t in &s.tests {
        let _ = writeln!(
            out,
            "[{}] {} ({}): {}",
            if t.passed { "PASS" } else { "FAIL" },
            t.id,
            t.kind,
            t.detail
        );
    }
    out
}

// ---------------------------------------------------------------------------
// JUnit XML
// ---------------------------------------------------------------------------

/// Escapes text for XML 1.0 attributes and content.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to write these at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

pub fn junit(r: &Report) -> String {
    let tests: usize = r.scenarios.iter().map(|s| s.total).sum();
    let failures: usize = r.scenarios.iter().map(|s| s.total - s.passed).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"kvlab assess\" tests=\"{tests}\" failures=\"{failures}\" time=\"{:.3}\">",
        r.duration_seconds
    );
    for s in &r.scenarios {
        junit_suite(&mut out, s);
    }
    out.push_str("</testsuites>\n");
    out
}

fn junit_suite(out: &mut String, s: &ScenarioResult) {
    let time: f64 = s.tests.iter().map(|t| t.duration_ms as f64 / 1000.0).sum();
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{time:.3}\">",
        xml_escape(&format!("{}: {}", s.id, s.name)),
        s.total,
        s.total - s.passed
    );
    let _ = writeln!(out, "    <properties>");
    for (name, value) in [("score", points(s.score)), ("weight", points(s.weight))] {
        let _ = writeln!(
            out,
            "      <property name=\"{name}\" value=\"{}\"/>",
            xml_escape(&value)
        );
    }
    let _ = writeln!(out, "    </properties>");
    for t in &s.tests {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&s.id),
            xml_escape(&format!("{} ({})", t.id, t.kind)),
            t.duration_ms as f64 / 1000.0
        );
        if t.passed {
            let _ = writeln!(out, ">");
            let _ = writeln!(
                out,
                "      <system-out>{}</system-out>",
                xml_escape(&t.detail)
            );
        } else {
            let _ = writeln!(out, ">");
            let _ = writeln!(
                out,
                "      <failure message=\"{}\">{}</failure>",
                xml_escape(&t.detail),
                xml_escape(&t.detail)
            );
        }
        let _ = writeln!(out, "    </testcase>");
    }
    let _ = writeln!(out, "  </testsuite>");
}

#[cfg(test)]
mod tests {
    use super::super::grade;
    use super::super::report::{Justification, TestResult};
    use super::super::scenario::CostModel;
    use super::super::settings::Settings;
    use super::*;

    fn sample() -> Report {
        let test = |id: &str, passed: bool| TestResult {
            id: id.into(),
            kind: "read".into(),
            passed,
            description: None,
            detail: "got <v1> & \"quotes\" \u{1} back".into(),
            duration_ms: 12,
        };
        let scenario = ScenarioResult {
            id: "INC-3".into(),
            name: "Stale carts".into(),
            description: "reads after writes".into(),
            weight: 30.0,
            visibility: crate::assess::scenario::Visibility::Hidden,
            setting: Some("deployment.read_quorum".into()),
            passed: 1,
            total: 2,
            score: 15.0,
            tests: vec![test("t1", true), test("t2", false)],
            reset: None,
        };
        let settings = Settings {
            followers: 5,
            write_quorum: 4,
            read_quorum: 1,
            auto_spawn: true,
            auto_spawn_delay: 1.0,
            rate_limit_enabled: true,
            rate_limit_max: 20,
            rate_limit_window: 2.0,
        };
        Report {
            config: "student_config.json".into(),
            scenario_file: "instructor_config.json".into(),
            consistency: grade::consistency(4, 1, 5),
            cost: grade::cost(5, CostModel::default()),
            settings,
            justifications: vec![Justification {
                name: "quorum_choice".into(),
                text: Some("TODO".into()),
                filled: false,
            }],
            justified: 0,
            scenarios: vec![scenario],
            score: 15.0,
            max_score: 30.0,
            percent: 50.0,
            grade: "F".into(),
            duration_seconds: 1.5,
        }
    }

    #[test]
    fn the_card_has_no_colour_unless_asked() {
        let r = sample();
        let plain = terminal(&r, false);
        assert!(!plain.contains('\u{1b}'));
        assert!(plain.contains("SCORE 15 / 30"));
        assert!(plain.contains("cost $60/hour"));
        assert!(plain.contains("OVER BUDGET"));
        assert!(plain.contains("0 of 4 filled in"));
        assert!(plain.contains("W + R = 5 <= N = 5"));
        assert!(terminal(&r, true).contains('\u{1b}'));
    }

    #[test]
    fn gradescope_has_its_shape() {
        let v: serde_json::Value = serde_json::from_str(&gradescope(&sample(), false)).unwrap();
        assert_eq!(v["score"], 15.0);
        assert_eq!(v["max_score"], 30.0);
        let t = &v["tests"][0];
        assert_eq!(t["name"], "INC-3: Stale carts");
        assert_eq!(
            (t["score"].as_f64(), t["max_score"].as_f64()),
            (Some(15.0), Some(30.0))
        );
        let md = t["output"].as_str().unwrap();
        assert!(md.contains("`t2` read (read): **FAILED**"), "{md}");
        assert!(md.contains("**Look at `deployment.read_quorum`**"), "{md}");
        assert!(md.contains("got \\<v1\\>"), "{md}");
        assert_eq!(t["output_format"], "md");
        assert_eq!(t["visibility"], "hidden");
        assert_eq!(v["output_format"], "md");
        assert!(v.get("leaderboard").is_none());
        let v: serde_json::Value = serde_json::from_str(&gradescope(&sample(), true)).unwrap();
        assert_eq!(v["leaderboard"][0]["name"], "Score");
        assert_eq!(v["leaderboard"][1]["order"], "asc");
        assert_eq!(v["leaderboard"][1]["value"], 60.0);
    }

    #[test]
    fn prairielearn_has_its_shape() {
        let v: serde_json::Value = serde_json::from_str(&prairielearn(&sample())).unwrap();
        assert_eq!(v["gradable"], true);
        assert_eq!(v["score"], 0.5);
        assert!(v["message"].as_str().unwrap().contains("15 / 30 points"));
        let t = &v["tests"][0];
        assert_eq!(t["name"], "INC-3: Stale carts");
        assert_eq!(
            (t["points"].as_f64(), t["max_points"].as_f64()),
            (Some(15.0), Some(30.0))
        );
        assert_eq!(t["message"], "failed: t2; look at deployment.read_quorum");
        assert!(t["output"].as_str().unwrap().contains("[FAIL] t2"));
        let bad: serde_json::Value = serde_json::from_str(
            &config_error(Format::Prairielearn, "c.json", "W=4 > N=3").unwrap(),
        )
        .unwrap();
        assert_eq!(bad["gradable"], false);
        assert_eq!(bad["format_errors"]["c.json"][0], "W=4 > N=3");
        assert!(config_error(Format::Junit, "c.json", "x").is_none());
    }

    #[test]
    fn junit_escapes_what_xml_cannot_hold() {
        let x = junit(&sample());
        assert!(x.contains("got &lt;v1&gt; &amp; &quot;quotes&quot;  back"));
        assert!(!x.contains('\u{1}'));
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert_eq!(xml_escape("a'b"), "a&apos;b");
    }
}
