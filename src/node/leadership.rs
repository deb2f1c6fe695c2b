//! Role changes: promotion by the coordinator, stepping down on a higher
//! term, and the term check on every request.
//!
//! The rules, and why each is safe:
//! - **Terms only grow on a node.** A request carrying a lower term than the
//!   node's (header `X-Kvlab-Term`, or the `term` of a replication body) is
//!   refused with 409 `stale term` and the node's term: whatever a deposed
//!   leader sends (entries, acks it asks for) is not taken.
//! - **A higher term is adopted at once**, and a leader that sees one steps
//!   down in the same locked section, so it appends nothing after: its
//!   writes are refused and its streams stop.
//! - **A promotion is durable before the first write.** `POST /admin/promote
//!   {term}` records "term t starts at seq last+1" in the term history and
//!   fsyncs the term file, and only then makes the node the leader. A
//!   restarted node therefore never forgets a term it led, and its history
//!   says where that term began even if it wrote nothing in it.
//! - **The coordinator promotes each term once** (it is the lab's
//!   controller, like Kafka's), so there is one leader per term, which is
//!   what makes comparing term histories enough to find where two logs part
//!   (see [`super::term`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::json;

use super::term::{self, TermFile};
use super::{NodeState, Shared, Terms};
use crate::api::{self, Entry, PromoteRequest, PromoteResponse, Role};
use crate::http::{ApiError, ApiJson};

/// The 409 a node answers to a request from an older term.
pub fn stale_term(node: &NodeState, given: u64, current: u64) -> ApiError {
    ApiError::conflict(json!({
        "error": "stale term",
        "term": current,
        "given": given,
        "node_id": node.id,
    }))
}

/// Checks the `X-Kvlab-Term` header of a request, if it has one.
pub fn check_request_term(node: &NodeState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(api::HEADER_TERM) else {
        return Ok(());
    };
    let term = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| ApiError::bad_request("X-Kvlab-Term must be a whole number"))?;
    check_term(node, term)
}

/// Refuses a lower term; adopts a higher one (stepping down if leading).
pub fn check_term(node: &NodeState, term: u64) -> Result<(), ApiError> {
    let current = node.term();
    if term < current {
        return Err(stale_term(node, term, current));
    }
    if term > current {
        adopt(node, term);
    }
    Ok(())
}

/// Takes `term` as the node's term if it is higher. A leader steps down:
/// it stops its streams (writes waiting on them fail) and refuses writes.
pub fn adopt(node: &NodeState, term: u64) {
    let stepped_down = {
        let mut core = node.core.lock().unwrap();
        if term <= core.terms.term {
            return;
        }
        core.terms.term = term;
        let was_leader = core.terms.role == Role::Leader;
        core.terms.role = Role::Follower;
        was_leader
    };
    if stepped_down {
        node.peers.lock().unwrap().clear();
        tracing::warn!(term, "a newer term exists: stepped down to follower");
    } else {
        tracing::info!(term, "adopted a newer term");
    }
    // Saved so that a restart reports it. Term changes are rare, so this
    // small fsync on the async thread costs nothing in the steady state.
    save_now(node);
}

/// Writes the term file with what the node holds now. Writers take turns
/// (one temporary file), and each reads the state under that turn, so the
/// last file written is never older than the one before.
fn save_now(node: &NodeState) -> bool {
    let Some(d) = &node.durability else {
        return true;
    };
    let _turn = node.term_file_lock.lock().unwrap();
    let file = {
        let core = node.core.lock().unwrap();
        TermFile {
            term: core.terms.term,
            history: core.terms.history.clone(),
        }
    };
    match term::save(&d.dir, &file) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot save the term file");
            false
        }
    }
}

/// Saves the term file (durable nodes), off the async thread.
pub async fn persist(node: &Arc<NodeState>) -> bool {
    let node = node.clone();
    tokio::task::spawn_blocking(move || save_now(&node))
        .await
        .unwrap_or(false)
}

/// `POST /admin/promote {term}`: become the leader of `term`. Idempotent for
/// the term the node already leads.
pub async fn promote(
    State(node): Shared,
    ApiJson(req): ApiJson<PromoteRequest>,
) -> Result<Json<PromoteResponse>, ApiError> {
    // No replication request runs meanwhile: the log is what it is. A
    // snapshot half received is dropped: a leader receives none.
    let mut receiving = node.replicate_lock.lock().await;
    *receiving = None;
    let appended_seq = {
        let mut core = node.core.lock().unwrap();
        let t = &mut core.terms;
        if req.term < t.term || (req.term == t.term && t.history.last_term() >= req.term) {
            if t.role == Role::Leader && t.term == req.term {
                let appended_seq = core.log.appended_seq();
                return Ok(Json(answer(&node, req.term, appended_seq)));
            }
            let current = t.term;
            drop(core);
            return Err(stale_term(&node, req.term, current));
        }
        t.term = req.term;
        t.role = Role::Follower;
        let appended_seq = core.log.appended_seq();
        core.terms.history.begin(req.term, appended_seq + 1);
        appended_seq
    };
    node.peers.lock().unwrap().clear();
    // Durable before the first write of the term.
    if !persist(&node).await {
        return Err(ApiError::internal(
            "cannot persist the new term: not taking the lead",
        ));
    }
    {
        let mut core = node.core.lock().unwrap();
        if core.terms.term != req.term {
            // A newer term arrived meanwhile: this promotion is obsolete.
            let current = core.terms.term;
            drop(core);
            return Err(stale_term(&node, req.term, current));
        }
        core.terms.role = Role::Leader;
    }
    // The registry learns it before the coordinator does.
    super::heartbeat::announce(&node).await;
    tracing::warn!(
        term = req.term,
        appended_seq,
        "promoted: leading term {} from seq {}",
        req.term,
        appended_seq + 1
    );
    Ok(Json(answer(&node, req.term, appended_seq)))
}

fn answer(node: &Arc<NodeState>, term: u64, appended_seq: u64) -> PromoteResponse {
    PromoteResponse {
        node_id: node.id.clone(),
        term,
        last_seq: appended_seq,
    }
}

/// Rebuilds the history of a recovered log: the term file's history up to
/// the last seq, completed from the entries recovery replayed (the file is
/// written only when a term begins, the entries always).
pub fn recover_history(terms: &mut Terms, recovered_seq: u64, last_term: u64, tail: &[Entry]) {
    terms.history.truncate_after(recovered_seq);
    for e in tail {
        terms.history.record(e.seq, e.term);
    }
    if terms.history.0.is_empty() && recovered_seq > 0 {
        // A state without a term file (a snapshot only): all we know is the
        // term of its last entry.
        terms.history.0.push((last_term.max(1), 1));
    }
    terms.term = terms.term.max(terms.history.last_term());
}

/// A node started by hand as `--role leader` leads its term (at least 1)
/// from its log's end.
pub fn start_as_leader(terms: &mut Terms, appended_seq: u64) {
    terms.term = terms.term.max(1);
    if terms.history.last_term() < terms.term {
        terms.history.begin(terms.term, appended_seq + 1);
    }
}
