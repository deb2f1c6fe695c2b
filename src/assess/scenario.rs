//! The instructor's scenario file: what `kvlab assess` runs and how it weighs it.
//!
//! Shape (lab.md): `{"scenarios": [{"id", "name", "description", "weight",
//! "tests": [{"id", "type", ...}]}], "cost_model": {"per_node_cost", "budget_limit"}}`.
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Points for this scenario; it scores `passed / total * weight`.
    pub weight: f64,
    pub tests: Vec<TestSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestSpec {
    pub id: String,
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
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TestKind {
    /// Write through the coordinator; passes on 200.
    Write { key: String, value: String },
    /// Read through the coordinator. With `expected_value`, passes when the
    /// answer holds it; without, passes when the read quorum answered at all
    /// (200, or 404 "not in quorum"), i.e. the read path works.
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

// The file as written, before each test is interpreted. Extra fields at the
// file and scenario level are allowed (titles, notes); in a test they are
// refused, because a misspelt `expected_value` would silently change it.
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
}

#[derive(Deserialize)]
struct RawTest {
    id: String,
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
        let raw: RawFile = serde_json::from_str(text).map_err(|source| ScenarioError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let mut scenarios = Vec::with_capacity(raw.scenarios.len());
        for s in raw.scenarios {
            scenarios.push(interpret_scenario(s, path)?);
        }
        let file = ScenarioFile {
            scenarios,
            cost_model: raw.cost_model.unwrap_or_default(),
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
        tests.push(TestSpec { id: t.id, kind });
    }
    Ok(Scenario {
        id: s.id,
        name: s.name,
        description: s.description,
        weight: s.weight,
        tests,
    })
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
                {"id": "t", "type": "read", "key": "k", "expected_vaule": "v"}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `expected_vaule`"), "{err}");
    }
}
