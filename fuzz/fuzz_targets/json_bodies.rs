//! Fuzz target: every JSON request body a kvlab component deserializes.
//!
//! The first input byte picks the type (modulo the number of types), the
//! rest is the body, parsed with `serde_json::from_slice` exactly as the
//! handlers' `ApiJson` extractor does. Parsing must never panic, and a body
//! that parses must then go through the validation its handler runs first
//! (key and value limits, fault lengths) without panicking either. The
//! handlers themselves, with their state, are driven by the `node_api`
//! target.

#![no_main]

use kvlab::api::*;
use kvlab::http::validate_key_value;
use kvlab::node::term::TermFile;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn parse<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    serde_json::from_slice(body).ok()
}

/// The check every write handler runs (gateway, coordinator, leader).
fn write(key: &str, value: &str) {
    let _ = validate_key_value(key, Some(value));
}

/// The check every read handler runs (gateway, coordinator, batch read).
fn read(key: &str) {
    let _ = validate_key_value(key, None);
}

/// How each type's handler validates it before touching any state.
const TYPES: &[fn(&[u8])] = &[
    // Gateway `POST /write`, coordinator `POST /write`.
    |b| {
        if let Some(r) = parse::<WriteRequest>(b) {
            write(&r.key, &r.value)
        }
    },
    // Leader `POST /data`.
    |b| {
        if let Some(r) = parse::<LeaderWriteRequest>(b) {
            write(&r.key, &r.value)
        }
    },
    // Leader `POST /batch/write`.
    |b| {
        if let Some(r) = parse::<LeaderBatchRequest>(b) {
            r.writes.iter().for_each(|w| write(&w.key, &w.value))
        }
    },
    // Node `POST /batch/read`.
    |b| {
        if let Some(r) = parse::<ReadBatchRequest>(b) {
            r.keys.iter().for_each(|k| read(k))
        }
    },
    // Node and coordinator `POST /admin/partition`.
    |b| {
        if let Some(r) = parse::<PartitionRequest>(b) {
            let _ = (r.validate(), r.heals());
        }
    },
    // Node and coordinator `POST /admin/slow-disk`.
    |b| {
        if let Some(r) = parse::<SlowDiskRequest>(b) {
            let _ = (r.validate(), r.heals());
        }
    },
    // Node and coordinator `POST /admin/pause-heartbeats`.
    |b| {
        if let Some(r) = parse::<PauseHeartbeats>(b) {
            let _ = check_seconds(r.seconds);
        }
    },
    // Coordinator `POST /spawn`.
    |b| drop(parse::<SpawnRequest>(b)),
    // Coordinator `POST /catchup`, `/node-died`, `/node-revived`.
    |b| drop(parse::<CatchupRequest>(b)),
    |b| drop(parse::<NodeDiedRequest>(b)),
    |b| drop(parse::<NodeRevivedRequest>(b)),
    // Registry `POST /heartbeat`, `/deregister`.
    |b| drop(parse::<Heartbeat>(b)),
    |b| drop(parse::<DeregisterRequest>(b)),
    // Replication: follower `POST /replicate`, `/replicate/snapshot`,
    // `/replicate/truncate`; node `/admin/promote`; leader
    // `PUT /replication/peers`, `POST /replication/wait`.
    |b| drop(parse::<AppendRequest>(b)),
    |b| drop(parse::<InstallSnapshot>(b)),
    |b| drop(parse::<TruncateRequest>(b)),
    |b| drop(parse::<PromoteRequest>(b)),
    |b| drop(parse::<PeerSet>(b)),
    |b| drop(parse::<WaitRequest>(b)),
    // Not a request, but JSON a node reads at start: its term file.
    |b| {
        if let Some(t) = parse::<TermFile>(b) {
            let _ = (t.history.last_term(), t.history.term_at(t.term));
        }
    },
    // Answers a component parses from another: the follower's replication
    // answer (leader), the registry's answer to a heartbeat (node).
    |b| drop(parse::<AppendResponse>(b)),
    |b| drop(parse::<HeartbeatResponse>(b)),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    TYPES[which as usize % TYPES.len()](body);
});
