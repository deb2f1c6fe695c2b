//! What an assessment found: the data every output format is rendered from.
//!
//! The runner fills in [`TestResult`]s; [`Report::new`] adds up the scores
//! with the pure rules of [`super::grade`]. Nothing here talks to a cluster,
//! so the renderers can be tested on hand-made reports.

use serde::Serialize;

use super::grade::{self, Consistency, Cost, JUSTIFICATIONS};
use super::scenario::{Scenario, ScenarioFile, Visibility};
use super::settings::Settings;
use crate::labconfig::StudentConfig;

/// One test's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    pub id: String,
    /// The test's `type` in the scenario file.
    #[serde(rename = "type")]
    pub kind: String,
    pub passed: bool,
    /// The scenario file's words for the test, if it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What happened, for a person: what was sent, what came back, why it
    /// passed or failed.
    pub detail: String,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub id: String,
    pub name: String,
    pub description: String,
    pub weight: f64,
    pub visibility: Visibility,
    /// The student-config field the scenario is about, if the file says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    pub passed: usize,
    pub total: usize,
    pub score: f64,
    pub tests: Vec<TestResult>,
    /// What the reset before this scenario did (respawns), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
}

impl ScenarioResult {
    pub fn new(s: &Scenario, tests: Vec<TestResult>, reset: Option<String>) -> ScenarioResult {
        let passed = tests.iter().filter(|t| t.passed).count();
        let total = s.tests.len();
        ScenarioResult {
            id: s.id.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            weight: s.weight,
            visibility: s.visibility,
            setting: s.setting.clone(),
            passed,
            total,
            score: grade::scenario_score(passed, total, s.weight),
            tests,
            reset,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Justification {
    pub name: String,
    pub text: Option<String>,
    pub filled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: String,
    pub scenario_file: String,
    pub settings: Settings,
    pub consistency: Consistency,
    pub cost: Cost,
    pub justifications: Vec<Justification>,
    /// How many of the four justifications are filled in.
    pub justified: usize,
    pub scenarios: Vec<ScenarioResult>,
    pub score: f64,
    pub max_score: f64,
    pub percent: f64,
    pub grade: String,
    pub duration_seconds: f64,
}

impl Report {
    pub fn new(
        config_path: &str,
        file_path: &str,
        config: &StudentConfig,
        settings: &Settings,
        file: &ScenarioFile,
        scenarios: Vec<ScenarioResult>,
        duration_seconds: f64,
    ) -> Report {
        let justifications: Vec<Justification> = JUSTIFICATIONS
            .iter()
            .map(|name| {
                let text = config.justifications.get(*name).cloned();
                Justification {
                    name: name.to_string(),
                    filled: grade::is_filled(text.as_deref()),
                    text,
                }
            })
            .collect();
        let score: f64 = scenarios.iter().map(|s| s.score).sum();
        let max_score = file.max_score();
        let percent = grade::percent(score, max_score);
        Report {
            config: config_path.to_string(),
            scenario_file: file_path.to_string(),
            settings: settings.clone(),
            consistency: grade::consistency(
                settings.write_quorum,
                settings.read_quorum,
                settings.followers,
            ),
            cost: grade::cost(settings.followers, file.cost_model),
            justified: justifications.iter().filter(|j| j.filled).count(),
            justifications,
            scenarios,
            score,
            max_score,
            percent,
            grade: grade::letter(percent).to_string(),
            duration_seconds,
        }
    }
}

/// A score for people: whole numbers stay whole, others get one decimal.
pub fn points(x: f64) -> String {
    let rounded = (x * 10.0).round() / 10.0;
    if (rounded - rounded.round()).abs() < 1e-9 {
        format!("{}", rounded.round() as i64)
    } else {
        format!("{rounded:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_print_whole_numbers_whole() {
        assert_eq!(points(42.0), "42");
        assert_eq!(points(11.25), "11.3");
        assert_eq!(points(6.666_666), "6.7");
        assert_eq!(points(0.0), "0");
    }
}
