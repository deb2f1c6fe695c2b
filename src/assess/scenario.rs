//! The instructor's scenario file: what `kvlab assess` runs and how it weighs it.
//!
//! Shape (docs/lab.md): `{"scenarios": [{"id", "name", "description", "weight",
//! "tests": [{"id", "type", ...}]}], "cost_model": {"per_node_cost", "budget_limit"}}`.
//!
//! Instructors bring the original course's files, so every field of its
//! format loads (tests may carry a `description` and a `name`, scenarios a
//! `description`), and a field nobody knows is a *warning* (with the closest
//! known name), not a refusal: an extra note in a file must not stop a
//! grading run. A wrong *value* in a known field is still an error.
//!
//! Loading is two-step on purpose: each test is first read as `{id, type, the
//! rest}`, and only then turned into a [`TestKind`], so that a typo in a type
//! or a missing field is reported with the scenario and test it belongs to,
//! not as a bare serde message. Everything is checked here, before any
//! cluster starts: a file that loads is a file the runner can run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole file, checked.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioFile {
    pub scenarios: Vec<Scenario>,
    pub cost_model: CostModel,
    /// Fields the loader did not know and ignored, one line each.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Points for this scenario; it scores `passed / total * weight`.
    pub weight: f64,
    /// Who sees this scenario's result on Gradescope.
    pub visibility: Visibility,
    /// The student-config field this incident is about
    /// (`deployment.read_quorum`), named in the feedback when it fails.
    pub setting: Option<String>,
    pub tests: Vec<TestSpec>,
}

/// Gradescope's visibility of a test's result. A scenario file sets it per
/// scenario with `"visibility": "..."`, or `"hidden": true` for short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    #[default]
    Visible,
    Hidden,
    AfterDueDate,
    AfterPublished,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestSpec {
    pub id: String,
    /// The file's own words for the test, when it has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub kind: TestKind,
}

/// Dollars per node per hour, and what the course may spend per hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    pub per_node_cost: f64,
    pub budget_limit: f64,
}

impl Default for CostModel {
    /// The CloudCart numbers: $10 a node, $50 an hour.
    fn default() -> Self {
        CostModel {
            per_node_cost: 10.0,
            budget_limit: 50.0,
        }
    }
}

/// Every test type the runner knows. Field names are the file's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TestKind {
    /// Write through the coordinator; passes on 200.
    Write { key: String, value: String },
    /// Read through the coordinator. Passes on 200 (holding
    /// `expected_value`, when given); a 404 fails, as in the original: the
    /// key was written, so not finding it is a stale read.
    Read {
        key: String,
        #[serde(default)]
        expected_value: Option<String>,
    },
    /// Stop one follower (graceful `/kill`).
    KillNode { target: String },
    /// Stop follower-1..k, k an integer or `"floor(N/2)"`.
    KillNodes { count: KillCount },
    /// `/spawn`, then wait until the new follower holds the whole log.
    SpawnNode {},
    /// max+5 requests through the gateway; passes if any got 429.
    RateLimit {},
    /// max+5, wait 5 s, min(max, 10) more; passes if half of those got 429.
    RateLimitSustained {},
    /// `count` writes (or reads) of `<key_prefix><i>` at once.
    Burst {
        #[serde(default = "default_burst_operation")]
        operation: BurstOperation,
        count: usize,
        key_prefix: String,
    },
    /// Reads back every key a `burst` wrote, with its value.
    VerifyBurst { key_prefix: String, count: usize },
    /// Write, wait `delay_ms`, read: passes if the version read is at least
    /// the version written.
    StaleRead { key: String, delay_ms: u64 },
    /// Silence a follower's heartbeats for `seconds`: passes if the registry
    /// did not replace a node that was alive all along.
    NetworkBlip { target: String, seconds: f64 },
    /// (1 + followers) x per_node_cost against budget_limit.
    Budget {},
}

impl TestKind {
    /// The `type` names, for the error that lists them.
    pub const NAMES: [&'static str; 12] = [
        "write",
        "read",
        "kill_node",
        "kill_nodes",
        "spawn_node",
        "rate_limit",
        "rate_limit_sustained",
        "burst",
        "verify_burst",
        "stale_read",
        "network_blip",
        "budget",
    ];
}

/// Fields every test may carry, whatever its type.
const TEST_COMMON_FIELDS: [&str; 4] = ["id", "type", "description", "name"];
const SCENARIO_FIELDS: [&str; 8] = [
    "id",
    "name",
    "description",
    "weight",
    "tests",
    "hidden",
    "visibility",
    "setting",
];
const FILE_FIELDS: [&str; 2] = ["scenarios", "cost_model"];
const COST_MODEL_FIELDS: [&str; 2] = ["per_node_cost", "budget_limit"];

/// The parameters each test type reads (beyond the common fields).
fn test_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "write" => &["key", "value"],
        "read" => &["key", "expected_value"],
        "kill_node" => &["target"],
        "network_blip" => &["target", "seconds"],
        "kill_nodes" => &["count"],
        "burst" => &["operation", "count", "key_prefix"],
        "verify_burst" => &["key_prefix", "count"],
        "stale_read" => &["key", "delay_ms"],
        _ => &[],
    }
}

fn default_burst_operation() -> BurstOperation {
    BurstOperation::Write
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BurstOperation {
    Write,
    Read,
}

/// How many followers `kill_nodes` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCount {
    Exactly(usize),
    /// `"floor(N/2)"`: the most a majority-based design may lose.
    HalfOfN,
}

impl KillCount {
    pub fn resolve(self, followers: usize) -> usize {
        match self {
            KillCount::Exactly(k) => k,
            KillCount::HalfOfN => followers / 2,
        }
    }
}

impl Serialize for KillCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KillCount::Exactly(k) => s.serialize_u64(*k as u64),
            KillCount::HalfOfN => s.serialize_str("floor(N/2)"),
        }
    }
}

impl<'de> Deserialize<'de> for KillCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(usize),
            S(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::N(k)) => Ok(KillCount::Exactly(k)),
            Ok(Raw::S(s)) if s.replace(' ', "") == "floor(N/2)" => Ok(KillCount::HalfOfN),
            _ => Err(serde::de::Error::custom(
                "count must be a whole number or the string \"floor(N/2)\"",
            )),
        }
    }
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read the scenario file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON of the scenario shape: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: scenario {scenario}, test {test}: unknown test type '{kind}' (known types: {known})")]
    UnknownType {
        path: PathBuf,
        scenario: String,
        test: String,
        kind: String,
        known: String,
    },
    #[error("{path}: scenario {scenario}, test {test} ({kind}): {source}")]
    BadTest {
        path: PathBuf,
        scenario: String,
        test: String,
        kind: String,
        source: serde_json::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

// The file as written, before each test is interpreted. Unknown fields are
// ignored here; [`unknown_fields`] has already warned about each.
#[derive(Deserialize)]
struct RawFile {
    scenarios: Vec<RawScenario>,
    #[serde(default)]
    cost_model: Option<CostModel>,
}

#[derive(Deserialize)]
struct RawScenario {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    weight: f64,
    tests: Vec<RawTest>,
    #[serde(default)]
    hidden: bool,
    #[serde(default)]
    visibility: Option<Visibility>,
    #[serde(default)]
    setting: Option<String>,
}

#[derive(Deserialize)]
struct RawTest {
    id: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    params: serde_json::Map<String, serde_json::Value>,
}

impl ScenarioFile {
    pub fn load(path: &Path) -> Result<ScenarioFile, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks a file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ScenarioFile, ScenarioError> {
        let parse_error = |source| ScenarioError::Parse {
            path: path.to_path_buf(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(parse_error)?;
        let warnings = unknown_fields(&value);
        let raw: RawFile = serde_json::from_value(value).map_err(parse_error)?;
        let mut scenarios = Vec::with_capacity(raw.scenarios.len());
        for s in raw.scenarios {
            scenarios.push(interpret_scenario(s, path)?);
        }
        let file = ScenarioFile {
            scenarios,
            cost_model: raw.cost_model.unwrap_or_default(),
            warnings,
        };
        file.check().map_err(|problem| ScenarioError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(file)
    }

    /// The rules serde cannot express.
    fn check(&self) -> Result<(), String> {
        if self.scenarios.is_empty() {
            return Err("the file has no scenarios".into());
        }
        let mut ids = std::collections::HashSet::new();
        for s in &self.scenarios {
            if !ids.insert(s.id.as_str()) {
                return Err(format!("two scenarios have the id {}", s.id));
            }
            if !s.weight.is_finite() || s.weight < 0.0 {
                return Err(format!("scenario {}: weight must be 0 or more", s.id));
            }
            if s.tests.is_empty() {
                return Err(format!("scenario {} has no tests", s.id));
            }
            for t in &s.tests {
                check_test(t).map_err(|e| format!("scenario {}, test {}: {e}", s.id, t.id))?;
            }
        }
        let c = self.cost_model;
        let usable = |x: f64| x.is_finite() && x >= 0.0;
        if !usable(c.per_node_cost) || !usable(c.budget_limit) {
            return Err("cost_model: costs must be numbers of 0 or more".into());
        }
        Ok(())
    }

    /// Keeps only the scenarios with these ids (`--only`), in the file's
    /// order. Ids match case-insensitively with `-` and `_` alike, so
    /// `--only INC-3` finds the original course's `inc_3` (and `--only inc_3`
    /// kvlab's `INC-3`). An id the file does not have is an error that lists
    /// those it has.
    pub fn only(mut self, ids: &[String]) -> Result<ScenarioFile, String> {
        let known: Vec<&str> = self.scenarios.iter().map(|s| s.id.as_str()).collect();
        if let Some(missing) = ids.iter().find(|id| !known.iter().any(|k| same_id(k, id))) {
            return Err(format!(
                "--only {missing}: no such scenario (this file has {})",
                known.join(", ")
            ));
        }
        self.scenarios
            .retain(|s| ids.iter().any(|id| same_id(&s.id, id)));
        Ok(self)
    }

    /// Sum of the weights: the best possible score.
    pub fn max_score(&self) -> f64 {
        self.scenarios.iter().map(|s| s.weight).sum()
    }
}

fn interpret_scenario(s: RawScenario, path: &Path) -> Result<Scenario, ScenarioError> {
    let mut tests = Vec::with_capacity(s.tests.len());
    for t in s.tests {
        if !TestKind::NAMES.contains(&t.kind.as_str()) {
            return Err(ScenarioError::UnknownType {
                path: path.to_path_buf(),
                scenario: s.id.clone(),
                test: t.id,
                kind: t.kind,
                known: TestKind::NAMES.join(", "),
            });
        }
        let mut object = t.params;
        object.remove("name");
        object.insert("type".into(), serde_json::Value::String(t.kind.clone()));
        let kind = serde_json::from_value(serde_json::Value::Object(object)).map_err(|source| {
            ScenarioError::BadTest {
                path: path.to_path_buf(),
                scenario: s.id.clone(),
                test: t.id.clone(),
                kind: t.kind.clone(),
                source,
            }
        })?;
        tests.push(TestSpec {
            id: t.id,
            description: t.description,
            kind,
        });
    }
    let visibility = match (s.visibility, s.hidden) {
        (Some(v), _) => v,
        (None, true) => Visibility::Hidden,
        (None, false) => Visibility::Visible,
    };
    Ok(Scenario {
        id: s.id,
        name: s.name,
        description: s.description,
        weight: s.weight,
        visibility,
        setting: s.setting,
        tests,
    })
}

/// One warning for each field the format does not have, saying where it
/// is and which known name it is closest to (a likely typo).
fn unknown_fields(file: &serde_json::Value) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut check = |object: &serde_json::Value, known: &[&str], place: &str| {
        let Some(object) = object.as_object() else {
            return;
        };
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            let hint = closest(key, known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            warnings.push(format!("{place}: unknown field `{key}` ignored{hint}"));
        }
    };
    check(file, &FILE_FIELDS, "the file");
    check(&file["cost_model"], &COST_MODEL_FIELDS, "cost_model");
    for s in file["scenarios"].as_array().into_iter().flatten() {
        let sid = s["id"].as_str().unwrap_or("?");
        check(s, &SCENARIO_FIELDS, &format!("scenario {sid}"));
        for t in s["tests"].as_array().into_iter().flatten() {
            let kind = t["type"].as_str().unwrap_or("");
            let known: Vec<&str> = TEST_COMMON_FIELDS
                .iter()
                .chain(test_fields(kind))
                .copied()
                .collect();
            let tid = t["id"].as_str().unwrap_or("?");
            check(t, &known, &format!("scenario {sid}, test {tid} ({kind})"));
        }
    }
    warnings
}

/// The known name within two edits of `word`, if there is one.
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// Limits that keep a run bounded, whatever the file says.
fn check_test(t: &TestSpec) -> Result<(), String> {
    match &t.kind {
        TestKind::Burst { count, .. } | TestKind::VerifyBurst { count, .. }
            if *count == 0 || *count > 10_000 =>
        {
            Err("count must be between 1 and 10000".into())
        }
        TestKind::StaleRead { delay_ms, .. } if *delay_ms > 600_000 => {
            Err("delay_ms must be at most 600000 (10 minutes)".into())
        }
        TestKind::NetworkBlip { seconds, .. }
            if !seconds.is_finite() || *seconds <= 0.0 || *seconds > 600.0 =>
        {
            Err("seconds must be more than 0 and at most 600".into())
        }
        TestKind::KillNodes {
            count: KillCount::Exactly(k),
        } if *k > 1000 => Err("count must be at most 1000".into()),
        _ => Ok(()),
    }
}

/// Whether two scenario ids name the same scenario: case-insensitive, with
/// `-` and `_` alike (`INC-3`, `inc_3`).
fn same_id(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> String {
        s.trim()
            .chars()
            .map(|c| {
                if c == '_' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    };
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ScenarioFile, ScenarioError> {
        ScenarioFile::parse(text, Path::new("test.json"))
    }

    #[test]
    fn the_shipped_files_load() {
        for (name, text) in [
            (
                "instructor",
                include_str!("../../labs/cloudcart/instructor_config.json"),
            ),
            (
                "full",
                include_str!("../../labs/cloudcart/full_config.json"),
            ),
        ] {
            let file = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(file.max_score(), 100.0, "{name}");
            assert_eq!(file.cost_model, CostModel::default());
        }
    }

    #[test]
    fn the_default_file_has_the_labs_scenarios() {
        let file = parse(include_str!("../../labs/cloudcart/instructor_config.json")).unwrap();
        let shape: Vec<(&str, f64, usize)> = file
            .scenarios
            .iter()
            .map(|s| (s.id.as_str(), s.weight, s.tests.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("INC-0", 20.0, 4),
                ("INC-1", 20.0, 1),
                ("INC-3", 30.0, 2),
                ("INC-4", 30.0, 5)
            ]
        );
        assert_eq!(
            file.scenarios[3].tests[1].kind,
            TestKind::KillNodes {
                count: KillCount::HalfOfN
            }
        );
    }

    #[test]
    fn an_unknown_type_names_the_test_and_the_known_types() {
        let err = parse(
            r#"{"scenarios": [{"id": "S", "name": "n", "weight": 1,
                "tests": [{"id": "t1", "type": "teleport"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("scenario S, test t1"), "{err}");
        assert!(err.contains("unknown test type 'teleport'"), "{err}");
        assert!(err.contains("stale_read"), "{err}");
    }

    #[test]
    fn a_missing_field_names_the_test() {
        let err = parse(
            r#"{"scenarios": [{"id": "S", "name": "n", "weight": 1,
                "tests": [{"id": "t1", "type": "write", "key": "k"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("test t1 (write)"), "{err}");
        assert!(err.contains("missing field `value`"), "{err}");
    }

    #[test]
    fn kill_counts_take_a_number_or_half_of_n() {
        let k: KillCount = serde_json::from_str("2").unwrap();
        assert_eq!(k.resolve(5), 2);
        let k: KillCount = serde_json::from_str("\"floor(N/2)\"").unwrap();
        assert_eq!((k.resolve(5), k.resolve(3), k.resolve(1)), (2, 1, 0));
        assert!(serde_json::from_str::<KillCount>("\"half\"").is_err());
    }

    #[test]
    fn impossible_values_are_refused() {
        for (test, why) in [
            (
                r#"{"id":"t","type":"burst","count":0,"key_prefix":"b"}"#,
                "count",
            ),
            (
                r#"{"id":"t","type":"network_blip","target":"follower-1","seconds":-1}"#,
                "seconds",
            ),
        ] {
            let text =
                format!(r#"{{"scenarios":[{{"id":"S","name":"n","weight":1,"tests":[{test}]}}]}}"#);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        let err = parse(r#"{"scenarios": []}"#).unwrap_err().to_string();
        assert!(err.contains("no scenarios"), "{err}");
        let err = parse(
            r#"{"scenarios": [{"id": "S", "name": "n", "weight": 1, "tests": [
                {"id": "t", "type": "stale_read", "key": "k", "delay_ms": "soon"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("test t (stale_read)"), "{err}");
    }

    #[test]
    fn the_original_shape_loads_and_unknown_fields_warn() {
        let file = parse(
            r#"{"title": "CloudCart", "scenarios": [{"id": "S", "name": "n",
                "description": "what it checks", "weight": 1, "hidden": true, "tests": [
                {"id": "t1", "type": "write", "description": "store a cart", "key": "k", "value": "v"},
                {"id": "t2", "type": "read", "name": "read it", "key": "k", "expected_vaule": "v"}]}],
                "cost_model": {"per_node_cost": 10, "budget_limit": 50, "currency": "USD"}}"#,
        )
        .unwrap();
        let s = &file.scenarios[0];
        assert_eq!(s.visibility, Visibility::Hidden);
        assert_eq!(s.tests[0].description.as_deref(), Some("store a cart"));
        // The typo is ignored with a warning: the read has no expected value.
        assert_eq!(
            s.tests[1].kind,
            TestKind::Read {
                key: "k".into(),
                expected_value: None
            }
        );
        let w = file.warnings.join("\n");
        assert!(w.contains("the file: unknown field `title` ignored"), "{w}");
        assert!(w.contains("cost_model: unknown field `currency`"), "{w}");
        assert!(
            w.contains("scenario S, test t2 (read): unknown field `expected_vaule` ignored (did you mean `expected_value`?)"),
            "{w}"
        );
        assert_eq!(file.warnings.len(), 3, "{w}");
        let file = parse(include_str!("../../labs/cloudcart/full_config.json")).unwrap();
        assert!(file.warnings.is_empty(), "{:?}", file.warnings);
    }

    #[test]
    fn visibility_takes_gradescopes_names() {
        let file = parse(
            r#"{"scenarios": [{"id": "S", "name": "n", "weight": 1, "visibility": "after_due_date",
                "tests": [{"id": "t", "type": "budget"}]}]}"#,
        )
        .unwrap();
        assert_eq!(file.scenarios[0].visibility, Visibility::AfterDueDate);
        let err = parse(
            r#"{"scenarios": [{"id": "S", "name": "n", "weight": 1, "visibility": "secret",
                "tests": [{"id": "t", "type": "budget"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn only_matches_ids_case_insensitively_with_dash_and_underscore_alike() {
        let original =
            include_str!("../../labs/cloudcart/instructor_config.json").replace("\"INC-", "\"inc_");
        let file = parse(&original).unwrap();
        for asked in ["INC-3", "inc_3", "Inc-3", "INC_3", "inc-3"] {
            let only = file.clone().only(&[asked.to_string()]).unwrap();
            let ids: Vec<&str> = only.scenarios.iter().map(|s| s.id.as_str()).collect();
            assert_eq!(ids, ["inc_3"], "--only {asked}");
        }
        let kvlab = parse(include_str!("../../labs/cloudcart/instructor_config.json")).unwrap();
        let only = kvlab.only(&["inc_3".into(), "inc-0".into()]).unwrap();
        let ids: Vec<&str> = only.scenarios.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["INC-0", "INC-3"], "the file's order and spelling");
        let err = file.only(&["INC-9".into()]).unwrap_err();
        assert_eq!(
            err,
            "--only INC-9: no such scenario (this file has inc_0, inc_1, inc_3, inc_4)"
        );
    }
}
