//! The coordinator's live event log: the lab's "dashboard" on the console.
//!
//! Every line has a timestamp, an icon and a tone (green for a node coming up,
//! red for one going down, ...). Cluster events (nodes starting, dying,
//! respawning, catching up, quorum lost) are always printed. Request events
//! (each write's and read's path) are narrated one by one up to
//! [`NARRATED_PER_SECOND`] requests a second; past that, the log prints one
//! summary line a second instead of flooding the terminal.
//!
//! Events are also kept in a bounded ring and served as JSON (`GET /events`),
//! so tests and tools can wait for "follower-1 is dead" instead of sleeping.
//!
//! Invariant: no control character of a client's reaches a terminal or a
//! log file. Keys and values are anyone's (any client of the gateway), and a
//! newline in one would forge whole event lines, an escape sequence clear the
//! operator's screen. So narration puts them in through [`printable`], the
//! console escapes every control character of a line but its line breaks,
//! and log lines go through [`LogWriter`], which escapes them all.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use owo_colors::OwoColorize;
use serde::Serialize;

/// How many requests a second are narrated line by line.
pub const NARRATED_PER_SECOND: u32 = 10;
/// How many events the ring keeps for `GET /events`.
const RING_CAPACITY: usize = 2000;

/// The colour of a line: what kind of news it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    Info,
    Good,
    Warn,
    Bad,
    Request,
}

/// What an event is about: its `kind` in `GET /events`, the live view and
/// the console's journal. Serialized as the snake_case name (`node_up`,
/// `read_refused`, ...), which the UI (`ui/app.js`), the tests and scripts
/// match on: add kinds freely, never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    // The cluster's life.
    /// `cluster_starting`: the coordinator starts the nodes.
    ClusterStarting,
    /// `cluster_ready`: every node answers; the cluster takes requests.
    ClusterReady,
    /// `roles`: each node's real sets, once the cluster is ready.
    Roles,
    /// `cluster_stopped`: the coordinator stopped its nodes.
    ClusterStopped,
    /// `stop_forced`: a node did not stop in time and was killed.
    StopForced,
    /// `node_adopted`: a restarted coordinator took charge of a node that
    /// kept running while no coordinator was up.
    NodeAdopted,
    /// `control_state`: where the coordinator keeps its state, its epoch.
    ControlState,
    /// `start_failed`: the coordinator could not start the cluster.
    StartFailed,
    /// `storage`: where and how nodes persist their logs (or that they do not).
    Storage,
    // Nodes coming and going.
    /// `node_up`: a node answers (started, respawned or revived).
    NodeUp,
    /// `node_dead`: a node was marked dead (the message says why).
    NodeDead,
    /// `leader_dead`: the leader was marked dead: writes wait for a failover.
    LeaderDead,
    /// `leader_restart`: the leader's slot was started again.
    LeaderRestart,
    /// `kill`: a graceful `/kill` stops a node (it deregisters).
    Kill,
    /// `crash`: a `/kill` crashed a node (SIGKILL, nobody tells the registry).
    Crash,
    /// `process_exit`: a node's process exited.
    ProcessExit,
    /// `slot_reused`: a `/spawn` reused the slot of a node whose process exited.
    SlotReused,
    /// `spawn_failed`: a `/spawn` could not start its node.
    SpawnFailed,
    /// `corrupt_log_set_aside`: a node refused to serve a corrupt log; its
    /// directory was moved aside and it starts empty, to be rebuilt.
    CorruptLogSetAside,
    /// `repair_needed`: a node refused to serve its log at the cluster's
    /// start (damaged before its last durable write); it waits, out of the
    /// election, to be set aside and rebuilt once a healthy node leads.
    RepairNeeded,
    /// `start_refused`: no healthy node can be shown to hold every
    /// acknowledged write; the cluster does not start.
    StartRefused,
    /// `protocol_violation`: a node answered in a way the node protocol
    /// forbids (docs/node-protocol.md): a student's node, usually.
    ProtocolViolation,
    /// `caught_up`: a follower holds the leader's log after a catch-up.
    CaughtUp,
    /// `catchup_slow`: a follower is not caught up yet.
    CatchupSlow,
    /// `heartbeats_paused`: the live view paused a node's heartbeats (a network blip).
    HeartbeatsPaused,
    /// `heartbeats_resumed`: a heartbeat pause ended (healed or expired).
    HeartbeatsResumed,
    /// `partitioned`: a node was cut off from some peers (a fault hook).
    Partitioned,
    /// `partition_healed`: that partition ended.
    PartitionHealed,
    /// `slow_disk`: a node's fsyncs were slowed down (a fault hook).
    SlowDisk,
    /// `slow_disk_healed`: that slow disk ended.
    SlowDiskHealed,
    /// `slow_link`: a link of a netns host got latency, jitter or loss (`tc netem`).
    SlowLink,
    /// `slow_link_healed`: that link is back to normal.
    SlowLinkHealed,
    // Quorums.
    /// `write_quorum_lost`: fewer than W followers are alive: writes are refused.
    WriteQuorumLost,
    /// `write_quorum_back`: writes can succeed again.
    WriteQuorumBack,
    /// `read_quorum_lost`: fewer than R followers are alive: reads are refused.
    ReadQuorumLost,
    /// `read_quorum_back`: reads can succeed again.
    ReadQuorumBack,
    // Failover.
    /// `failover_candidates`: what each alive node's log holds, for an election.
    FailoverCandidates,
    /// `failover_chosen`: the node an election promotes.
    FailoverChosen,
    /// `failover_refused`: no alive node holds every acknowledged write.
    FailoverRefused,
    /// `failover_unclean`: `--unclean-failover` promoted a node that may lack acknowledged writes.
    FailoverUnclean,
    /// `leader_promoted`: a node leads a new term.
    LeaderPromoted,
    /// `promote_failed`: the chosen node did not take the lead.
    PromoteFailed,
    /// `old_leader_fenced`: the new term fences the previous leader's incarnation.
    OldLeaderFenced,
    // Liveness.
    /// `liveness_registry`: the coordinator follows the registry's view (again).
    LivenessRegistry,
    /// `liveness_direct_probe`: the registry does not answer: the coordinator probes nodes itself.
    LivenessDirectProbe,
    /// `notice_ignored`: a `/node-died` or `/node-revived` notice did not change the table.
    NoticeIgnored,
    // Requests (narrated up to NARRATED_PER_SECOND a second).
    /// `write`: a write's path through the cluster.
    Write,
    /// `write_refused`: a write refused before reaching the leader.
    WriteRefused,
    /// `leader_unreachable`: the coordinator could not reach the leader.
    LeaderUnreachable,
    /// `quorum_met`: every sync follower acknowledged a write.
    QuorumMet,
    /// `quorum_failed`: a write missed sync acks.
    QuorumFailed,
    /// `async_queued`: a write is on its way to the async followers.
    AsyncQueued,
    /// `async_done`: an async follower received a narrated write.
    AsyncDone,
    /// `read`: a read's answers and the version returned.
    Read,
    /// `read_refused`: a read refused: fewer than R alive followers.
    ReadRefused,
    /// `read_substitute`: a read asked another follower in place of a read set member.
    ReadSubstitute,
    /// `summary`: one second of requests that were not narrated one by one.
    Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
    /// What it is about (serialized as `node_up`, `node_dead`, `write`, ...).
    pub kind: EventKind,
    pub tone: Tone,
    pub node_id: Option<String>,
    pub message: String,
}

/// Per-second counts of requests, for the summary line.
#[derive(Default)]
struct Counters {
    writes_ok: AtomicU64,
    writes_failed: AtomicU64,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
    not_narrated: AtomicU64,
}

struct Budget {
    window_start: Instant,
    used: u32,
}

pub struct EventLog {
    ring: Mutex<(u64, VecDeque<Event>)>,
    budget: Mutex<Budget>,
    counters: Counters,
    print: bool,
}

impl EventLog {
    /// `print`: whether to write to stdout (off in tests).
    pub fn new(print: bool) -> Self {
        EventLog {
            ring: Mutex::new((0, VecDeque::with_capacity(RING_CAPACITY))),
            budget: Mutex::new(Budget {
                window_start: Instant::now(),
                used: 0,
            }),
            counters: Counters::default(),
            print,
        }
    }

    /// Records (and prints) one event.
    pub fn emit(&self, kind: EventKind, tone: Tone, node_id: Option<&str>, message: String) {
        let event = {
            let mut ring = self.ring.lock().unwrap();
            ring.0 += 1;
            let event = Event {
                id: ring.0,
                unix_ms: chrono::Utc::now().timestamp_millis(),
                kind,
                tone,
                node_id: node_id.map(str::to_string),
                message,
            };
            if ring.1.len() == RING_CAPACITY {
                ring.1.pop_front();
            }
            ring.1.push_back(event.clone());
            event
        };
        if self.print {
            print_line(&event);
        }
    }

    /// Shorthand for the common cluster events.
    pub fn info(&self, kind: EventKind, node: Option<&str>, message: impl Into<String>) {
        self.emit(kind, Tone::Info, node, message.into());
    }
    pub fn good(&self, kind: EventKind, node: Option<&str>, message: impl Into<String>) {
        self.emit(kind, Tone::Good, node, message.into());
    }
    pub fn warn(&self, kind: EventKind, node: Option<&str>, message: impl Into<String>) {
        self.emit(kind, Tone::Warn, node, message.into());
    }
    pub fn bad(&self, kind: EventKind, node: Option<&str>, message: impl Into<String>) {
        self.emit(kind, Tone::Bad, node, message.into());
    }

    /// Should this request be narrated line by line? Counts it either way.
    pub fn narrate_request(&self) -> bool {
        let mut b = self.budget.lock().unwrap();
        if b.window_start.elapsed() >= Duration::from_secs(1) {
            b.window_start = Instant::now();
            b.used = 0;
        }
        if b.used < NARRATED_PER_SECOND {
            b.used += 1;
            true
        } else {
            self.counters.not_narrated.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Counts a finished request for the summary line.
    pub fn count_write(&self, ok: bool) {
        let c = if ok {
            &self.counters.writes_ok
        } else {
            &self.counters.writes_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_read(&self, ok: bool) {
        let c = if ok {
            &self.counters.reads_ok
        } else {
            &self.counters.reads_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prints the summary of the last second if some requests went un-narrated.
    /// Called once a second by the coordinator.
    pub fn summarise(&self) {
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        let skipped = take(&self.counters.not_narrated);
        let (wo, wf) = (
            take(&self.counters.writes_ok),
            take(&self.counters.writes_failed),
        );
        let (ro, rf) = (
            take(&self.counters.reads_ok),
            take(&self.counters.reads_failed),
        );
        if skipped > 0 {
            self.emit(
                EventKind::Summary,
                Tone::Info,
                None,
                format!(
                    "📊 last second: {} writes ({wf} failed), {} reads ({rf} failed); \
                     {skipped} not narrated (more than {NARRATED_PER_SECOND}/s)",
                    wo + wf,
                    ro + rf
                ),
            );
        }
    }

    /// Events with an id above `since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        let ring = self.ring.lock().unwrap();
        ring.1
            .iter()
            .filter(|e| e.id > since)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// `text` with every control character escaped, Rust-style (`\n`, `\t`,
/// `\0`, `\u{1b}`): what a key or value looks like on the console, in a
/// log file and in `kvlab client`'s answers. Also escaped:
/// the Unicode characters that move or reorder text (line and paragraph
/// separators, bidirectional overrides), which could dress one key up as
/// another line.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    std::borrow::Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// A console line: each line of the message with its control characters
/// escaped (the message's own line breaks stay: a few events quote a
/// node's log over several lines; keys and values were escaped already).
fn console_text(message: &str) -> String {
    message
        .split('\n')
        .map(printable)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The writer of the log lines (`tracing`) of every kvlab process: each
/// line written whole, with every control character in it escaped except
/// its final newline (and, on a terminal with colours, the escape sequences
/// of the colours, which tracing already escapes in logged values). So a
/// logged value with a newline stays on its line of a node's log file.
pub struct LogWriter {
    /// Colours on: ESC is the formatter's own and passes.
    pub ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = EscapingStderr;
    fn make_writer(&'a self) -> Self::Writer {
        EscapingStderr { ansi: self.ansi }
    }
}

/// See [`LogWriter`].
pub struct EscapingStderr {
    ansi: bool,
}

impl Write for EscapingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = log_line(&String::from_utf8_lossy(buf), self.ansi);
        // One write per line, so lines of two threads never interleave.
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A log line as [`LogWriter`] writes it.
fn log_line(text: &str, ansi: bool) -> String {
    let (body, end) = match text.strip_suffix('\n') {
        Some(body) => (body, "\n"),
        None => (text, ""),
    };
    let mut out = String::with_capacity(text.len() + 8);
    for c in body.chars() {
        if needs_escape(c) && !(ansi && c == '\u{1b}') {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out.push_str(end);
    out
}

fn print_line(event: &Event) {
    let ts = chrono::DateTime::from_timestamp_millis(event.unix_ms)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_default();
    let msg = &console_text(&event.message);
    let (line, ts) = if stdout_color() {
        let line = match event.tone {
            Tone::Good => msg.green().to_string(),
            Tone::Bad => msg.red().to_string(),
            Tone::Warn => msg.yellow().to_string(),
            Tone::Info => msg.cyan().to_string(),
            Tone::Request => msg.clone(),
        };
        (line, ts.dimmed().to_string())
    } else {
        (msg.clone(), ts)
    };
    // One write call per line so concurrent events never interleave mid-line.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{ts}  {line}");
}

/// Whether output to a stream gets ANSI colours: only when it is a
/// terminal, and never when `NO_COLOR` is set to anything but the empty
/// string (the no-color.org convention). Files, pipes and CI logs stay plain.
pub fn color_on(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// [`color_on`] for stdout, decided once.
fn stdout_color() -> bool {
    use std::io::IsTerminal;
    static COLOR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *COLOR.get_or_init(|| color_on(std::io::stdout().is_terminal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_console_or_a_log_raw() {
        let key = "a\nb\r\t\0\u{1b}[2J\u{1b}]0;title\u{7}\u{7f}\u{85}\u{202e}é🔑";
        let shown = printable(key);
        assert_eq!(
            shown,
            "a\\nb\\r\\t\\0\\u{1b}[2J\\u{1b}]0;title\\u{7}\\u{7f}\\u{85}\\u{202e}é🔑"
        );
        assert!(!shown.chars().any(needs_escape));
        assert!(matches!(
            printable("plain key"),
            std::borrow::Cow::Borrowed(_)
        ));
        // The console keeps a message's own line breaks, and nothing else.
        let forged = format!(
            "✍️  WRITE x\n{}",
            "\u{1b}[31m👑 follower-3 is the LEADER now"
        );
        let line = console_text(&forged);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(!line.contains('\u{1b}'), "{line:?}");
        // A log line: one line, whatever the logged values held.
        let logged = log_line("INFO key=a\nb\u{1b}[2J done\n", false);
        assert_eq!(logged, "INFO key=a\\nb\\u{1b}[2J done\n");
        assert_eq!(
            log_line("\u{1b}[32mINFO\u{1b}[0m x\n", true),
            "\u{1b}[32mINFO\u{1b}[0m x\n"
        );
    }

    #[test]
    fn ring_is_bounded_and_ordered() {
        let log = EventLog::new(false);
        for i in 0..(RING_CAPACITY + 10) {
            log.info(EventKind::NodeUp, None, format!("event {i}"));
        }
        let all = log.since(0, usize::MAX);
        assert_eq!(all.len(), RING_CAPACITY);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(log.since(all.last().unwrap().id, 10).len(), 0);
    }

    #[test]
    fn kinds_serialize_to_their_journal_names() {
        let name = |k: EventKind| serde_json::to_value(k).unwrap();
        assert_eq!(name(EventKind::ReadRefused), "read_refused");
        assert_eq!(
            name(EventKind::LivenessDirectProbe),
            "liveness_direct_probe"
        );
        assert_eq!(name(EventKind::Crash), "crash");
    }

    #[test]
    fn narration_is_budgeted_per_second() {
        let log = EventLog::new(false);
        let narrated = (0..100).filter(|_| log.narrate_request()).count();
        assert_eq!(narrated, NARRATED_PER_SECOND as usize);
        log.summarise();
        let summary = log.since(0, 10);
        assert_eq!(summary.len(), 1);
        assert!(summary[0].message.contains("90 not narrated"));
    }
}
