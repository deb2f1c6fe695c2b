//! Fuzz target: the lab's student config file (`labconfig::StudentConfig`).
//!
//! The input is the file's text. Parsing must never panic. A config that
//! parses is resolved as the autograder resolves it (`Settings::resolve`);
//! what it accepts must be a cluster that really starts: `kvlab up` must
//! accept the flags the grader passes it (`Settings::up_flags`), and the
//! registry and gateway built from those settings must accept them too. A
//! setting refused only there would fail a student's grading run late, with
//! an error about flags they never typed.

#![no_main]

use clap::Parser;
use kvlab::assess::settings::Settings;
use kvlab::labconfig::StudentConfig;
use kvlab::{gateway, registry, up};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = serde_json::from_str::<StudentConfig>(text) else {
        return;
    };
    let _ = config.justified();
    let Ok(settings) = Settings::resolve(&config) else {
        return;
    };
    let flags = settings.up_flags();
    let args = up::Args::try_parse_from(std::iter::once("up".to_string()).chain(flags.clone()))
        .unwrap_or_else(|e| panic!("kvlab up refuses the grader's flags {flags:?}: {e}"));
    let registry_args = registry::Args {
        port: 0,
        host: args.host,
        coordinator: vec!["http://127.0.0.1:1".into()],
        auto_spawn: args.auto_spawn,
        spawn_delay: args.spawn_delay,
        timeout: args.failure_timeout,
        secret: Default::default(),
        tls: Default::default(),
    };
    if let Err(e) = registry::Config::from_args(&registry_args) {
        panic!("the registry refuses resolved settings {settings:?}: {e}");
    }
    let gateway_args = gateway::Args {
        port: 0,
        host: args.host,
        coordinator: vec!["http://127.0.0.1:1".into()],
        rate: args.rate.clone(),
        timeout: 30.0,
        tls: Default::default(),
    };
    if let Err(e) = gateway::Config::from_args(&gateway_args) {
        panic!("the gateway refuses resolved settings {settings:?}: {e}");
    }
});
