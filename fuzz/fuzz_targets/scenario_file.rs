//! Fuzz target: the autograder's scenario files (`assess::scenario`).
//!
//! The input is the file's text. `ScenarioFile::parse` must return a clear
//! error for anything it refuses and never panic, and what it accepts must
//! be usable by the runner: its score is a finite number, every length
//! converts to a `Duration` as the runner converts it, and `only` with its
//! own ids keeps everything.

#![no_main]

use std::path::Path;

use std::time::Duration;

use kvlab::assess::scenario::{ScenarioFile, TestKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = ScenarioFile::parse(text, Path::new("fuzz.json")) else {
        return;
    };
    assert!(
        file.max_score().is_finite(),
        "max score {}",
        file.max_score()
    );
    for test in file.scenarios.iter().flat_map(|s| &s.tests) {
        match &test.kind {
            TestKind::NetworkBlip { seconds, .. } => drop(Duration::from_secs_f64(*seconds)),
            TestKind::StaleRead { delay_ms, .. } => drop(Duration::from_millis(*delay_ms)),
            TestKind::KillNodes { count } => drop(count.resolve(usize::MAX)),
            _ => {}
        }
    }
    let ids: Vec<String> = file.scenarios.iter().map(|s| s.id.clone()).collect();
    let n = file.scenarios.len();
    let kept = file.only(&ids).expect("only with the file's own ids");
    assert_eq!(kept.scenarios.len(), n);
});
