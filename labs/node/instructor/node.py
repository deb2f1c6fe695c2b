#!/usr/bin/env python3
"""kvlab node, reference solution (levels 1 to 4). Instructors only.

One file, Python standard library only. It speaks the protocol of
docs/node-protocol.md and can take any seat in a kvlab cluster:

    kvlab up --node-cmd 'python3 labs/node/instructor/node.py'
    kvlab up --node-cmd 'python3 labs/node/instructor/node.py' \
             --node-cmd-leader 'python3 labs/node/instructor/node.py'

The coordinator passes the settings in KVLAB_* environment variables (see
`Config`); the same settings can be given as flags when you start it by
hand (`python3 node.py --id follower-1 --port 7002 --registry ...`).

How the file is laid out:

- helpers: JSON errors, key checks, term histories, a small HTTP client;
- `Disk`: the durable log of level 3 (a checksummed JSON-lines file, a
  snapshot file, the term file);
- `Node`: the node's state under one lock, and every endpoint;
- `Peer`: the leader's stream to one follower (level 4);
- `Handler`: the HTTP server (keep-alive, Content-Length, auth, headers);
- `main()`.

The broken nodes in broken/ import this module, replace one method of
`Node` (or `Disk`) and call `main()`: keep those method names stable.
"""

import argparse
import hmac
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# ---------------------------------------------------------------------------
# Constants of the protocol (docs/node-protocol.md, "Limits")
# ---------------------------------------------------------------------------

MAX_SEQ = 2**64 - 2            # the highest seq any log may hold
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_READ_BATCH = 4096
MAX_WRITE_BATCH = 1024
BATCH_PAYLOAD_BYTES = 8 * 1024 * 1024   # a sender stops adding items past this
MAX_ENTRIES_PER_APPEND = 2048
DEFAULT_ACK_TIMEOUT = 3.0
SNAPSHOT_EVERY = 20000          # entries in the log file before it is compacted
EXIT_CORRUPT_LOG = 65           # as kvlab's own node: "refusing to serve"
EXIT_FENCED = 3                 # the registry said a newer incarnation exists

INTERNAL_PREFIXES = ("/batch/", "/replicate", "/replication/", "/admin/")


def log(msg):
    """One line on stderr (the coordinator sends it to the node's log file)."""
    stamp = time.strftime("%H:%M:%S")
    sys.stderr.write(f"{stamp} {msg}\n")
    sys.stderr.flush()


class ApiError(Exception):
    """An answer other than 200: the body is {"detail": detail}."""

    def __init__(self, status, detail):
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def field(body, name, kind, default=None, required=True):
    """A field of a JSON object, checked: 422 when missing or mistyped."""
    if not isinstance(body, dict):
        raise ApiError(422, {"error": "the body must be a JSON object"})
    if name not in body or body[name] is None:
        if required:
            raise ApiError(422, {"error": f"missing field `{name}`"})
        return default
    value = body[name]
    ok = {
        "int": lambda v: is_int(v) and v >= 0,
        "num": lambda v: (is_int(v) or isinstance(v, float)) and v == v,
        "str": lambda v: isinstance(v, str),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "dict": lambda v: isinstance(v, dict),
    }[kind](value)
    if not ok:
        raise ApiError(422, {"error": f"field `{name}` must be of type {kind}"})
    return value


def check_key(key, value=None):
    """The lab's key and value rules (400 for dot segments, 413 for size)."""
    if key == "" or any(seg in (".", "..") for seg in key.split("/")):
        raise ApiError(400, {"error": "invalid key",
                             "reason": "a key must not be empty or hold a `.` or `..` segment"})
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ApiError(413, {"error": "key too large",
                             "reason": f"at most {MAX_KEY_BYTES} bytes"})
    if value is not None and len(value.encode()) > MAX_VALUE_BYTES:
        raise ApiError(413, {"error": "value too large",
                             "reason": f"at most {MAX_VALUE_BYTES} bytes"})


# ---------------------------------------------------------------------------
# Term histories: [[term, first seq], ...] (docs/node-protocol.md, level 2)
# ---------------------------------------------------------------------------

def last_term(history):
    return history[-1][0] if history else 0


def term_at(history, seq):
    """The term of the entry at `seq`, or None if the history does not cover it."""
    for term, start in reversed(history):
        if start <= seq:
            return term
    return None


def record_term(history, seq, term):
    """Notes that the entry at `seq` (appended in seq order) has `term`."""
    while history and (history[-1][1] > seq or (history[-1][1] == seq and history[-1][0] != term)):
        history.pop()
    if last_term(history) != term:
        history.append([term, seq])


def truncate_history(history, seq):
    history[:] = [item for item in history if item[1] <= seq]


def spans(history, log_end):
    out = []
    for i, (term, start) in enumerate(history):
        end = history[i + 1][1] - 1 if i + 1 < len(history) else log_end
        end = min(end, log_end)
        if start <= end:
            out.append((term, start, end))
    return out


def common_prefix(a, a_last, b, b_last):
    """The last seq both logs hold with the same term (0: nothing shared)."""
    best = 0
    for ta, sa, ea in spans(a, a_last):
        for tb, sb, eb in spans(b, b_last):
            if ta == tb and max(sa, sb) <= min(ea, eb):
                best = max(best, min(ea, eb))
    return best


def parse_history(raw):
    if not isinstance(raw, list):
        raise ApiError(422, {"error": "history must be a list of [term, first_seq] pairs"})
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and is_int(item[0]) and is_int(item[1])
                and item[0] >= 0 and item[1] >= 0):
            raise ApiError(422, {"error": "history must be a list of [term, first_seq] pairs"})
        out.append([item[0], item[1]])
    return out


def parse_entries(raw):
    entries = []
    for e in raw:
        ok = (isinstance(e, dict) and is_int(e.get("seq")) and is_int(e.get("term"))
              and isinstance(e.get("key"), str) and isinstance(e.get("value"), str)
              and is_int(e.get("version")))
        if not ok or e["seq"] < 1 or e["term"] < 0 or e["version"] < 0:
            raise ApiError(422, {"error": "each entry needs seq (>= 1), term, key, value and version"})
        if e["seq"] > MAX_SEQ:
            raise ApiError(400, {"error": "seq out of range", "seq": e["seq"], "max_seq": MAX_SEQ})
        entries.append({"seq": e["seq"], "term": e["term"], "key": e["key"],
                        "value": e["value"], "version": e["version"]})
    return entries


# ---------------------------------------------------------------------------
# A small keep-alive HTTP client (to the registry and to other nodes)
# ---------------------------------------------------------------------------

class Client:
    """One persistent connection to one server; not shared between threads."""

    def __init__(self, base_url, node, timeout=5.0):
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.node = node
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def call(self, method, path, body=None, headers=None, timeout=None):
        """Returns (status, response headers, parsed JSON or None).
        Raises OSError (or http.client.HTTPException) when there is no answer."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"x-kvlab-from": self.node.id}
        if self.node.secret:
            hdrs["x-kvlab-secret"] = self.node.secret
        if data is not None:
            hdrs["content-type"] = "application/json"
        hdrs.update(headers or {})
        for attempt in (0, 1):
            fresh = self.conn is None
            if fresh:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.timeout = timeout or self.timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(self.conn.timeout)
            try:
                self.conn.request(method, self.prefix + path, body=data, headers=hdrs)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # A pooled connection the server closed meanwhile: try once more.
                self.close()
                if fresh or attempt == 1:
                    raise OSError(f"connection closed: {e}") from e
                continue
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            return resp.status, resp.headers, parsed
        raise OSError("unreachable")


def describe(exc):
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------
# Level 3: the durable log
# ---------------------------------------------------------------------------

class CorruptLog(Exception):
    pass


class Disk:
    """The node's files in its data directory:

    - log.jsonl      one line per entry: "<crc32 hex> <entry JSON>\\n";
    - snapshot.json  the state at some seq; the log holds what came after;
    - term.json      {"term", "history"}: the highest term seen, and history.

    Entries are written with one os.write per batch (no user-space buffer, so
    a SIGKILL loses nothing written) and acknowledged only once fsynced
    (`sync_upto`), as KVLAB_FSYNC says.
    """

    def __init__(self, node, directory, policy, interval_ms):
        self.node = node
        self.dir = directory
        self.policy = policy
        self.interval = max(interval_ms, 1) / 1000.0
        os.makedirs(directory, exist_ok=True)
        self.log_path = os.path.join(directory, "log.jsonl")
        self.snap_path = os.path.join(directory, "snapshot.json")
        self.term_path = os.path.join(directory, "term.json")
        self.fd = None
        self.fsync_lock = threading.Lock()
        self.synced_cond = threading.Condition(threading.Lock())
        self.written_seq = 0      # the last seq handed to the kernel
        self.synced_seq = 0       # the last seq known to be fsynced
        self.snapshot_seq = 0
        self.lines_in_log = 0
        self.fsyncs = 0
        self.recovered_seq = 0
        self.recovery = ""
        self.slow_ms = 0
        self.slow_until = 0.0
        self.term_lock = threading.Lock()
        if policy == "interval":
            threading.Thread(target=self._flusher, name="fsync-interval", daemon=True).start()

    # -- small file helpers --------------------------------------------------

    def _fsync_dir(self):
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_atomically(self, path, payload):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fsync_dir()

    def _open_log(self):
        if self.fd is not None:
            os.close(self.fd)
        self.fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @staticmethod
    def encode(entry):
        line = json.dumps(entry, separators=(",", ":")).encode()
        return b"%08x " % zlib.crc32(line) + line + b"\n"

    # -- recovery ------------------------------------------------------------

    def _read_log(self, after_seq):
        """Entries after `after_seq`, in order. Cuts a torn last line; raises
        CorruptLog for damage anywhere else or a gap."""
        entries = []
        try:
            with open(self.log_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return entries, "no log yet"
        lines = raw.split(b"\n")
        complete = lines[:-1]          # the piece after the last "\n" is torn (or empty)
        good_bytes = 0
        note = ""
        expected = None
        for i, line in enumerate(complete):
            entry = None
            try:
                crc, payload = line.split(b" ", 1)
                if int(crc, 16) == zlib.crc32(payload):
                    entry = json.loads(payload)
            except ValueError:
                entry = None
            if entry is None:
                if i == len(complete) - 1:
                    note = f"cut a damaged last record at byte {good_bytes}"
                    break
                raise CorruptLog(f"{self.log_path}: damaged record at byte {good_bytes} "
                                 f"followed by more records")
            good_bytes += len(line) + 1
            if expected is not None and entry["seq"] != expected:
                raise CorruptLog(f"{self.log_path}: gap: seq {entry['seq']} after {expected - 1}")
            expected = entry["seq"] + 1
            if entry["seq"] > after_seq:
                entries.append(entry)
        if lines[-1]:
            note = note or f"cut a half-written last record at byte {good_bytes}"
        if good_bytes != len(raw):
            with open(self.log_path, "r+b") as f:
                f.truncate(good_bytes)
                os.fsync(f.fileno())
        if entries and entries[0]["seq"] != after_seq + 1:
            raise CorruptLog(f"{self.log_path}: starts at seq {entries[0]['seq']}, "
                             f"but the snapshot ends at {after_seq}")
        return entries, note

    def recover(self):
        """Reads the directory: (seq, data, history, term, tail entries)."""
        snap = {"seq": 0, "data": {}, "history": []}
        if os.path.exists(self.snap_path):
            try:
                with open(self.snap_path, "rb") as f:
                    snap = json.load(f)
            except ValueError as e:
                raise CorruptLog(f"{self.snap_path}: {e}")
        term_file = None
        if os.path.exists(self.term_path):
            try:
                with open(self.term_path, "rb") as f:
                    term_file = json.load(f)
            except ValueError as e:
                raise CorruptLog(f"{self.term_path}: {e}")
        tail, note = self._read_log(snap["seq"])
        seq = tail[-1]["seq"] if tail else snap["seq"]
        data = {k: [v[0], v[1], snap["seq"]] for k, v in snap["data"].items()}
        for e in tail:
            data[e["key"]] = [e["value"], e["version"], e["seq"]]
        history = [list(x) for x in (term_file["history"] if term_file else snap["history"])]
        truncate_history(history, seq)
        for e in tail:
            record_term(history, e["seq"], e["term"])
        if not history and seq > 0:
            history = [[max(snap.get("term", 1), 1), 1]]
        term = max(term_file["term"] if term_file else 0, last_term(history))
        self.snapshot_seq = snap["seq"]
        self.lines_in_log = len(tail)
        self.written_seq = self.synced_seq = seq
        self.recovered_seq = seq
        parts = []
        if snap["seq"]:
            parts.append(f"snapshot at seq {snap['seq']}")
        parts.append(f"{len(tail)} log records")
        if note:
            parts.append(note)
        self.recovery = ", ".join(parts)
        self._open_log()
        return seq, data, history, term, tail

    # -- appending -----------------------------------------------------------

    def write(self, entries):
        """Hands entries to the kernel (call under the node's lock, in seq order)."""
        if not entries:
            return
        os.write(self.fd, b"".join(self.encode(e) for e in entries))
        self.written_seq = entries[-1]["seq"]
        self.lines_in_log += len(entries)

    def _fsync_now(self):
        if self.slow_ms and time.monotonic() < self.slow_until:
            time.sleep(self.slow_ms / 1000.0)
        target = self.written_seq
        os.fsync(self.fd)
        self.fsyncs += 1
        return target

    def sync_upto(self, seq):
        """Returns once every entry up to `seq` is as durable as the policy says."""
        if self.policy == "never":
            return
        if self.policy == "always":
            with self.fsync_lock:
                if self.synced_seq >= seq:
                    return       # another writer's fsync covered ours (group commit)
                done = self._fsync_now()
                with self.synced_cond:
                    self.synced_seq = max(self.synced_seq, done)
            return
        with self.synced_cond:   # interval: the flusher thread fsyncs
            while self.synced_seq < seq:
                self.synced_cond.wait(1.0)

    def _flusher(self):
        while True:
            time.sleep(self.interval)
            try:
                with self.fsync_lock:
                    if self.fd is None or self.synced_seq >= self.written_seq:
                        continue
                    done = self._fsync_now()
                with self.synced_cond:
                    self.synced_seq = max(self.synced_seq, done)
                    self.synced_cond.notify_all()
            except OSError as e:
                log(f"fsync failed: {e}")

    # -- snapshots, truncation, terms ------------------------------------------

    def write_snapshot(self, seq, data, history, term):
        """Makes `data` (the state at `seq`) the new base and empties the log.
        Call with the node's lock held and everything up to `seq` written."""
        payload = json.dumps({"seq": seq, "term": term, "history": history,
                              "data": {k: [v[0], v[1]] for k, v in data.items()}},
                             separators=(",", ":")).encode()
        with self.fsync_lock:
            self._write_atomically(self.snap_path, payload)
            # Everything in the log is in the snapshot now.
            os.close(self.fd)
            self.fd = None
            self._write_atomically(self.log_path, b"")
            self._open_log()
            self.snapshot_seq = seq
            self.lines_in_log = 0
            self.written_seq = seq
            with self.synced_cond:
                self.synced_seq = seq
                self.synced_cond.notify_all()

    def truncate_after(self, seq):
        """Drops every entry after `seq` on disk, then recovers what is left.
        Below the snapshot, everything goes (the leader sends a snapshot)."""
        with self.fsync_lock:
            os.close(self.fd)
            self.fd = None
            if seq < self.snapshot_seq:
                for path in (self.snap_path, self.log_path):
                    if os.path.exists(path):
                        os.remove(path)
                self._fsync_dir()
            else:
                keep, _ = self._read_log(self.snapshot_seq)
                self._write_atomically(
                    self.log_path, b"".join(self.encode(e) for e in keep if e["seq"] <= seq))
            result = self.recover()
            with self.synced_cond:
                self.synced_cond.notify_all()
            return result

    def save_terms(self, term, history):
        with self.term_lock:
            self._write_atomically(self.term_path,
                                   json.dumps({"term": term, "history": history}).encode())

    def stats(self):
        return {"data_dir": self.dir, "fsync": self.policy, "durable_seq": self.synced_seq
                if self.policy != "never" else self.written_seq,
                "snapshot_seq": self.snapshot_seq, "fsyncs": self.fsyncs,
                "recovered_seq": self.recovered_seq, "recovery": self.recovery}


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------

class Config:
    """Settings: flags win over KVLAB_* environment variables."""

    def __init__(self, argv=None):
        env = os.environ.get
        p = argparse.ArgumentParser(description="a kvlab node (reference solution)")
        p.add_argument("--id", default=env("KVLAB_NODE_ID", ""))
        p.add_argument("--host", default=env("KVLAB_HOST", "") or "127.0.0.1")
        p.add_argument("--port", type=int, default=int(env("KVLAB_PORT", "0") or 0))
        p.add_argument("--role", default=env("KVLAB_ROLE", "") or "follower",
                       choices=["leader", "follower"])
        p.add_argument("--incarnation", type=int, default=int(env("KVLAB_INCARNATION", "1") or 1))
        p.add_argument("--registry", default=env("KVLAB_REGISTRY", ""))
        p.add_argument("--data-dir", default=env("KVLAB_DATA_DIR", ""))
        p.add_argument("--fsync", default=env("KVLAB_FSYNC", "") or "always",
                       choices=["always", "interval", "never"])
        p.add_argument("--fsync-interval-ms", type=int,
                       default=int(env("KVLAB_FSYNC_INTERVAL_MS", "5") or 5))
        p.add_argument("--heartbeat-interval", type=float,
                       default=float(env("KVLAB_HEARTBEAT_INTERVAL", "2") or 2))
        p.add_argument("--sync-delay", type=float, default=float(env("KVLAB_SYNC_DELAY", "0.5") or 0.5))
        p.add_argument("--async-delay", type=float, default=float(env("KVLAB_ASYNC_DELAY", "5") or 5))
        p.add_argument("--log-retain", type=int, default=int(env("KVLAB_LOG_RETAIN", "100000") or 100000))
        p.add_argument("--advertise", default=env("KVLAB_ADVERTISE", ""),
                       help="the URL others reach this node at (default http://HOST:PORT)")
        a = p.parse_args(argv)
        if not a.id or not a.port:
            p.error("a node needs an id and a port (KVLAB_NODE_ID and KVLAB_PORT, or --id and --port)")
        self.__dict__.update(vars(a))
        self.log_retain = max(self.log_retain, 1)
        self.url = a.advertise or f"http://{a.host}:{a.port}"


def load_secret():
    """KVLAB_CLUSTER_SECRET, else the file kvlab's own components share when
    they are started by hand. None: this node serves no internal route."""
    secret = os.environ.get("KVLAB_CLUSTER_SECRET", "").strip()
    if secret:
        return secret
    tmp = os.environ.get("TMPDIR", "/tmp")
    path = os.path.join(tmp, f"kvlab-{os.geteuid()}", "cluster-secret")
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


class Node:
    disk_class = Disk          # the broken nodes swap in their own

    def __init__(self, cfg):
        self.cfg = cfg
        self.id = cfg.id
        self.incarnation = cfg.incarnation
        self.url = cfg.url
        self.secret = load_secret()
        self.lock = threading.Lock()              # guards everything below
        self.changed = threading.Condition(self.lock)
        self.replicate_lock = threading.Lock()    # one replication request at a time
        self.data = {}             # key -> [value, version, seq that wrote it]
        self.applied = 0           # highest seq applied, contiguously
        self.persisted = 0         # highest seq on disk: what we acknowledge
        self.log = []              # entries log_first .. applied (bounded by log_retain)
        self.log_times = []        # when each was appended (monotonic)
        self.log_first = 1
        self.term = 0
        self.role = "follower"
        self.history = []
        self.reconciled = 0        # term of the last leader that reconciled our log
        self.pending_snapshot = None
        self.peers = {}            # leader only: node id -> Peer
        self.hb_paused_until = 0.0
        self.partition = (set(), 0.0)
        self.stats = {"active_requests": 0, "total_writes": 0, "total_reads": 0,
                      "replications_sent": 0, "replications_received": 0}
        self.disk = None
        if cfg.data_dir:
            self.disk = self.disk_class(self, cfg.data_dir, cfg.fsync, cfg.fsync_interval_ms)
            seq, data, history, term, tail = self.disk.recover()
            self.data, self.applied, self.persisted = data, seq, seq
            self.history, self.term = history, term
            self.log = list(tail)
            self.log_times = [0.0] * len(tail)    # "long ago": no lab delay again
            self.log_first = seq - len(tail) + 1
            self._trim_log()
            log(f"recovered from {cfg.data_dir}: seq {seq}, term {term} ({self.disk.recovery})")
        if cfg.role == "leader":
            # Started as the leader: lead term 1 (at least) until the
            # coordinator's election promotes us with a newer one.
            self.term = max(self.term, 1)
            if last_term(self.history) < self.term:
                self.history.append([self.term, self.applied + 1])
            self.role = "leader"

    # -- small helpers (call with self.lock held) -----------------------------

    def appended(self):
        return self.log_first + len(self.log) - 1

    def _trim_log(self):
        excess = len(self.log) - self.cfg.log_retain
        if excess > 0 and (excess > 1000 or excess > self.cfg.log_retain // 4):
            del self.log[:excess]
            del self.log_times[:excess]
            self.log_first += excess

    def _push(self, entry, when):
        self.log.append(entry)
        self.log_times.append(when)
        self._trim_log()

    def entry_at(self, seq):
        i = seq - self.log_first
        return self.log[i] if 0 <= i < len(self.log) else None

    def save_terms(self):
        """Writes the term file (durable nodes) with what we hold now."""
        if self.disk is None:
            return
        with self.lock:
            term, history = self.term, [list(x) for x in self.history]
        self.disk.save_terms(term, history)

    def publish_persisted(self, seq, down=False):
        with self.lock:
            if down or seq > self.persisted:
                self.persisted = seq
            self.changed.notify_all()

    # -- identity: /health, /, /stats ------------------------------------------

    def health(self):
        with self.lock:
            return {"status": "ok", "node_id": self.id, "role": self.role,
                    "incarnation": self.incarnation, "term": self.term}

    def info(self):
        with self.lock:
            return {"node_id": self.id, "role": self.role, "status": "running",
                    "data_count": len(self.data)}

    def node_stats(self):
        with self.lock:
            progress = [p.view() for _, p in sorted(self.peers.items())]
            out = {"node_id": self.id, "role": self.role, "term": self.term,
                   "term_history": [list(x) for x in self.history],
                   "data_count": len(self.data),
                   "followers": [p["url"] for p in progress],
                   "follower_progress": progress,
                   "applied_seq": self.applied, "incarnation": self.incarnation}
            out.update(self.stats)
        if self.disk is not None:
            out["storage"] = self.disk.stats()
        return out

    # -- terms and fencing (levels 1 and 4) -------------------------------------

    def stale_term(self, given, current):
        return ApiError(409, {"error": "stale term", "term": current, "given": given,
                              "node_id": self.id})

    def check_term(self, term):
        """A request of `term`: refuse an older term, adopt a newer one."""
        with self.lock:
            current = self.term
        if term < current:
            raise self.stale_term(term, current)
        if term > current:
            self.adopt_term(term)

    def adopt_term(self, term):
        """Takes a higher term; a leader steps down at once."""
        with self.lock:
            if term <= self.term:
                return
            self.term = term
            was_leader = self.role == "leader"
            self.role = "follower"
            peers, self.peers = list(self.peers.values()), {}
            self.changed.notify_all()
        for p in peers:
            p.stop()
        log(f"term {term}: " + ("a newer term exists, stepped down" if was_leader else "adopted"))
        self.save_terms()

    def check_addressed_to_me(self, to_incarnation):
        if to_incarnation != self.incarnation:
            raise ApiError(409, {"error": f"fenced: this is incarnation {self.incarnation} of "
                                          f"{self.id}, the leader addressed incarnation {to_incarnation}"})

    def check_follower(self):
        with self.lock:
            if self.role == "leader":
                raise ApiError(409, {"error": "not a follower",
                                     "detail": f"{self.id} is the leader of term {self.term}",
                                     "term": self.term})

    def check_replication_request(self, body):
        self.check_addressed_to_me(field(body, "to_incarnation", "int"))
        self.check_term(field(body, "term", "int"))
        self.check_follower()

    # -- level 1: reads ---------------------------------------------------------

    def read_key(self, key):
        with self.lock:
            self.stats["total_reads"] += 1
            held = self.data.get(key)
        if held is None:
            raise ApiError(404, f"Key '{key}' not found")
        return {"node_id": self.id, "key": key, "value": held[0], "version": held[1]}

    def read_term(self):
        """The term a read answer carries: the term of the last leader that
        reconciled our log (not merely the highest term we heard of)."""
        return self.reconciled

    def batch_read(self, body):
        keys = field(body, "keys", "list")
        if not 1 <= len(keys) <= MAX_READ_BATCH:
            raise ApiError(422, f"a read batch holds 1 to {MAX_READ_BATCH} items, got {len(keys)}")
        for k in keys:
            if not isinstance(k, str):
                raise ApiError(422, {"error": "keys must be strings"})
            check_key(k)
        with self.lock:
            self.stats["total_reads"] += len(keys)
            values, seqs = [], []
            for k in keys:
                held = self.data.get(k)
                values.append(None if held is None else {"value": held[0], "version": held[1]})
                seqs.append(0 if held is None else held[2])
            term = self.read_term()
        return {"node_id": self.id, "values": values, "seqs": seqs, "term": term}

    def all_data(self):
        with self.lock:
            data = {k: {"value": v[0], "version": v[1]} for k, v in sorted(self.data.items())}
        return {"node_id": self.id, "data": data, "count": len(data)}

    def snapshot_view(self):
        with self.lock:
            return {"data": {k: v[0] for k, v in self.data.items()},
                    "versions": {k: v[1] for k, v in self.data.items()},
                    "applied_seq": self.applied}

    # -- level 1: the follower's side of replication ----------------------------

    def position(self):
        """What GET /replicate and every replication answer say."""
        with self.lock:
            acked = self.persisted
            return {"node_id": self.id, "incarnation": self.incarnation, "acked_seq": acked,
                    "term": self.term, "last_term": term_at(self.history, acked) or 0,
                    "history": [list(x) for x in self.history], "role": self.role}

    def replicate_state(self):
        with self.replicate_lock:      # no request half done
            return self.position()

    def mark_reconciled(self, term):
        with self.lock:
            self.reconciled = max(self.reconciled, term)

    def apply_entries(self, entries):
        """Applies the entries that continue our log, in order (call with
        self.lock held). Returns the new entries. Refuses (409) an entry at a
        seq we hold with another term; stops at a gap."""
        fresh = []
        for e in entries:
            if e["seq"] <= self.applied:
                ours = term_at(self.history, e["seq"])
                if ours is not None and ours != e["term"]:
                    raise ApiError(409, {"error": f"diverged at seq {e['seq']}", "seq": e["seq"],
                                         "entry_term": e["term"], "our_term": ours,
                                         "node_id": self.id})
                continue                      # a retransmission: already held
            if e["seq"] != self.applied + 1:
                break                         # a gap: the leader resends from our ack
            self.data[e["key"]] = [e["value"], e["version"], e["seq"]]
            self.applied = e["seq"]
            record_term(self.history, e["seq"], e["term"])
            self._push(e, 0.0)
            fresh.append(e)
        return fresh

    def make_durable(self, fresh):
        """Level 3: returns once `fresh` (already written) is on disk."""
        if self.disk is not None and fresh:
            self.disk.sync_upto(fresh[-1]["seq"])

    def replicate_append(self, body):
        self.check_replication_request(body)
        entries = parse_entries(field(body, "entries", "list"))
        with self.replicate_lock:
            self.check_replication_request(body)     # again: a newer term may have come
            self.pending_snapshot = None
            with self.lock:
                before = last_term(self.history)
                fresh = self.apply_entries(entries)
                new_term = last_term(self.history) != before
                applied = self.applied
                if self.disk is not None:
                    self.disk.write(fresh)
                self.stats["replications_received"] += len(fresh)
            self.make_durable(fresh)
            if new_term:
                self.save_terms()
            if entries:
                # An empty append vouches for nothing new; see the protocol.
                self.publish_persisted(applied)
                self.maybe_compact()
            self.mark_reconciled(body["term"])
            return self.position()

    # -- level 2: catch-up --------------------------------------------------------

    def replicate_truncate(self, body):
        self.check_replication_request(body)
        after = field(body, "after_seq", "int")
        with self.replicate_lock:
            self.check_replication_request(body)
            self.pending_snapshot = None
            with self.lock:
                before = self.applied
            if after >= before:
                self.mark_reconciled(body["term"])
                return self.position()
            if self.disk is not None:
                seq, data, history, term, tail = self.disk.truncate_after(after)
                with self.lock:
                    self.data, self.applied = data, seq
                    self.log, self.log_times = list(tail), [0.0] * len(tail)
                    self.log_first = seq - len(tail) + 1
                    truncate_history(self.history, seq)
                    now = seq
            else:
                with self.lock:
                    if self.log_first == 1:
                        # The log still holds every entry from seq 1: replay
                        # it up to the cut.
                        keep = self.log[:after]
                        self.data = {}
                        for e in keep:
                            self.data[e["key"]] = [e["value"], e["version"], e["seq"]]
                        self.log, self.log_times = keep, self.log_times[:after]
                        self.applied = after
                        truncate_history(self.history, after)
                    else:
                        # No older state to go back to: start empty and let
                        # the leader send everything (or a snapshot).
                        self.data, self.applied = {}, 0
                        self.log, self.log_times, self.log_first = [], [], 1
                        self.history = []
                    now = self.applied
            self.save_terms()
            self.publish_persisted(now, down=True)
            log(f"log diverged from the leader's: truncated from seq {before} to {now}")
            self.mark_reconciled(body["term"])
            return self.position()

    def replicate_snapshot(self, body):
        self.check_replication_request(body)
        seq = field(body, "seq", "int")
        if seq > MAX_SEQ:
            raise ApiError(400, {"error": "seq out of range", "seq": seq, "max_seq": MAX_SEQ})
        raw = field(body, "data", "dict")
        chunk_data = {}
        for k, v in raw.items():
            if not (isinstance(v, dict) and isinstance(v.get("value"), str) and is_int(v.get("version"))):
                raise ApiError(422, {"error": "data maps each key to {value, version}"})
            chunk_data[k] = [v["value"], v["version"]]
        history = parse_history(field(body, "history", "list", default=[], required=False))
        chunk = field(body, "chunk", "int", default=0, required=False)
        last = field(body, "last", "bool", default=True, required=False)
        term = body["term"]
        with self.replicate_lock:
            self.check_replication_request(body)
            with self.lock:
                applied = self.applied
            if seq <= applied:
                # A snapshot never takes a node back in time.
                self.pending_snapshot = None
                self.mark_reconciled(term)
                return self.position()
            if chunk == 0:
                self.pending_snapshot = {"term": term, "seq": seq, "next": 0, "data": {}}
            p = self.pending_snapshot
            if not p or p["term"] != term or p["seq"] != seq or p["next"] != chunk:
                expected = p and {"term": p["term"], "seq": p["seq"], "chunk": p["next"]}
                self.pending_snapshot = None
                raise ApiError(409, {"error": "snapshot chunk out of order",
                                     "reason": "a snapshot's chunks must arrive in order, from "
                                               "chunk 0; start again from chunk 0",
                                     "got": {"term": term, "seq": seq, "chunk": chunk},
                                     "expected": expected})
            p["data"].update(chunk_data)
            p["next"] += 1
            if not last:
                return self.position()
            self.pending_snapshot = None
            truncate_history(history, seq)
            if not history:
                history = [[term, seq]]
            data = {k: [v[0], v[1], seq] for k, v in p["data"].items()}
            if self.disk is not None:
                self.disk.write_snapshot(seq, data, history, term_at(history, seq) or term)
            with self.lock:
                self.data, self.applied = data, seq
                self.log, self.log_times, self.log_first = [], [], seq + 1
                self.history = history
            self.save_terms()
            self.publish_persisted(seq)
            log(f"installed a snapshot from the leader: seq {seq}, {len(data)} keys, {chunk + 1} chunks")
            self.mark_reconciled(term)
            return self.position()

    def maybe_compact(self):
        """Level 3: keeps the log file short by writing a snapshot now and then."""
        if self.disk is None or self.disk.lines_in_log < SNAPSHOT_EVERY:
            return
        with self.lock:
            if self.persisted != self.applied or self.disk.written_seq != self.applied:
                return
            self.disk.write_snapshot(self.applied, self.data, [list(x) for x in self.history],
                                     last_term(self.history))

    # -- level 4: the leader ------------------------------------------------------

    def not_leader(self):
        return ApiError(403, f"{self.id} is a follower: writes go to the leader")

    def promote(self, body):
        term = field(body, "term", "int")
        with self.replicate_lock:
            self.pending_snapshot = None
            with self.lock:
                if term < self.term or (term == self.term and last_term(self.history) >= term):
                    if self.role == "leader" and self.term == term:
                        return {"node_id": self.id, "term": term, "last_seq": self.appended()}
                    raise self.stale_term(term, self.term)
                self.term = term
                self.role = "follower"
                last = self.appended()
                truncate_history(self.history, last)
                self.history.append([term, last + 1])
                peers, self.peers = list(self.peers.values()), {}
            for p in peers:
                p.stop()
            try:
                self.save_terms()       # durable before the first write of the term
            except OSError as e:
                raise ApiError(500, f"cannot persist the new term: not taking the lead ({e})")
            with self.lock:
                if self.term != term:
                    raise self.stale_term(term, self.term)
                self.role = "leader"
                self.changed.notify_all()
        log(f"promoted: leading term {term} from seq {last + 1}")
        return {"node_id": self.id, "term": term, "last_seq": last}

    def set_peers(self, body):
        wanted = {}
        for p in field(body, "peers", "list"):
            node_id = field(p, "node_id", "str")
            wanted[node_id] = {"node_id": node_id, "url": field(p, "url", "str"),
                               "incarnation": field(p, "incarnation", "int"),
                               "sync": field(p, "sync", "bool")}
        stopped, started = [], []
        with self.lock:
            if self.role != "leader":
                raise ApiError(403, "only the leader has peers")
            for node_id, peer in list(self.peers.items()):
                w = wanted.get(node_id)
                if not w or w["url"] != peer.url or w["incarnation"] != peer.incarnation:
                    stopped.append(self.peers.pop(node_id))
            for node_id, w in wanted.items():
                if node_id in self.peers:
                    self.peers[node_id].set_sync(w["sync"])
                else:
                    peer = Peer(self, w, self.term)
                    self.peers[node_id] = peer
                    started.append(peer)
            count = len(self.peers)
            self.changed.notify_all()
        for p in stopped:
            p.stop()
        for p in started:
            p.start()
        return {"status": "ok", "peers": count}

    def get_peers(self):
        with self.lock:
            return [p.view() for _, p in sorted(self.peers.items())]

    def links(self):
        now = time.monotonic()
        with self.lock:
            out = []
            for node_id, p in sorted(self.peers.items()):
                leader_seq = self.persisted
                acked = min(p.acked, leader_seq)
                first = max(acked, leader_seq - 40) + 1

                def age(seq):
                    i = seq - self.log_first
                    return now - self.log_times[i] if 0 <= i < len(self.log_times) else None
                oldest = age(acked + 1)
                out.append({"node_id": node_id, "incarnation": p.incarnation, "sync": p.sync,
                            "delay_ms": int(1000 * self.delay_for(p.sync)), "acked_seq": p.acked,
                            "leader_seq": leader_seq, "lag_entries": leader_seq - acked,
                            "lag_seconds": oldest or 0.0,
                            "in_flight": [{"seq": s, "age_ms": int(1000 * age(s))}
                                          for s in range(first, leader_seq + 1) if age(s) is not None],
                            "error": p.last_error})
            return out

    def delay_for(self, sync):
        return self.cfg.sync_delay if sync else self.cfg.async_delay

    def batch_write(self, body):
        writes = field(body, "writes", "list")
        if not 1 <= len(writes) <= MAX_WRITE_BATCH:
            raise ApiError(422, f"a write batch holds 1 to {MAX_WRITE_BATCH} items, got {len(writes)}")
        pairs = [(field(w, "key", "str"), field(w, "value", "str")) for w in writes]
        for k, v in pairs:
            check_key(k, v)
        sync = [(field(p, "node_id", "str"), field(p, "incarnation", "int"))
                for p in field(body, "sync", "list", default=[], required=False)]
        timeout_ms = field(body, "ack_timeout_ms", "int", default=None, required=False)
        timeout = DEFAULT_ACK_TIMEOUT if timeout_ms is None else timeout_ms / 1000.0
        now = time.monotonic()
        with self.lock:
            if self.role != "leader":
                raise self.not_leader()
            entries = []
            for k, v in pairs:
                held = self.data.get(k)
                e = {"seq": self.appended() + 1, "term": self.term, "key": k, "value": v,
                     "version": 1 if held is None else held[1] + 1}
                self.data[k] = [v, e["version"], e["seq"]]
                self.applied = e["seq"]
                self._push(e, now)
                entries.append(e)
            if self.disk is not None:
                self.disk.write(entries)
            last = entries[-1]["seq"]
            for node_id, _ in sync:
                peer = self.peers.get(node_id)
                if peer is not None:
                    peer.waited_through = max(peer.waited_through, last)
            self.stats["total_writes"] += len(entries)
            self.changed.notify_all()          # the streams send at once
        self.make_durable(entries)
        self.publish_persisted(last)
        self.maybe_compact()
        deadline = time.monotonic() + timeout
        acked_by, missing = [], []
        for node_id, incarnation in sync:
            why = self.wait_ack(node_id, incarnation, last, deadline)
            if why is None:
                acked_by.append(node_id)
            else:
                missing.append({"node_id": node_id, "reason": why})
        return {"results": [{"key": e["key"], "value": e["value"], "version": e["version"],
                             "seq": e["seq"], "acked_by": list(acked_by),
                             "missing": [dict(m) for m in missing]} for e in entries]}

    def single_write(self, body):
        """POST /data: one write (the lab's original path)."""
        req = {"writes": [{"key": field(body, "key", "str"), "value": field(body, "value", "str")}],
               "sync": body.get("sync") or [], "ack_timeout_ms": body.get("ack_timeout_ms")}
        return self.batch_write(req)["results"][0]

    def wait_ack(self, node_id, incarnation, seq, deadline):
        """None once the follower acknowledged `seq`; else why not."""
        with self.lock:
            peer = self.peers.get(node_id)
            if peer is None:
                return "not a replication peer of the leader"
            if peer.incarnation != incarnation:
                return (f"the leader streams to incarnation {peer.incarnation}, "
                        f"not {incarnation}")
            failures = peer.failures
            while True:
                if peer.acked >= seq:
                    return None
                if peer.failures > failures:
                    return peer.last_error or "replication failed"
                if peer.stopped:
                    return "replication stream stopped"
                left = deadline - time.monotonic()
                if left <= 0:
                    return "no ack before the write's deadline"
                self.changed.wait(left)

    def wait_for_peer(self, body):
        node_id = field(body, "node_id", "str")
        seq = field(body, "seq", "int", default=None, required=False)
        timeout_ms = field(body, "timeout_ms", "int", default=10000, required=False)
        deadline = time.monotonic() + timeout_ms / 1000.0
        with self.lock:
            peer = self.peers.get(node_id)
            if peer is None:
                raise ApiError(404, f"{node_id} is not a replication peer of the leader")
            target = self.persisted if seq is None else seq
            while peer.acked < target:
                left = deadline - time.monotonic()
                if left <= 0 or peer.stopped:
                    raise ApiError(504, {"error": "follower did not catch up in time",
                                         "node_id": node_id, "target_seq": target,
                                         "acked_seq": peer.acked, "last_error": peer.last_error})
                self.changed.wait(left)
            return peer.view()

    # -- optional hooks -------------------------------------------------------------

    def pause_heartbeats(self, body):
        seconds = field(body, "seconds", "num")
        if not 0 <= seconds <= 3600:
            raise ApiError(400, "seconds must be a number between 0 and 3600")
        self.hb_paused_until = time.monotonic() + seconds
        log(f"heartbeats paused for {seconds} s (fault injection)")
        return {"status": "paused", "seconds": seconds}

    def set_partition(self, body):
        peers = field(body, "peers", "list")
        seconds = field(body, "seconds", "num")
        if not 0 <= seconds <= 3600:
            raise ApiError(400, "seconds must be a number between 0 and 3600")
        if body.get("direction", "both") != "both":
            raise ApiError(400, "one-way partitions need netns hosts; this hook drops both ways")
        until = time.monotonic() + seconds
        if seconds == 0 or not peers:
            self.partition = (set(), 0.0)
            log("partition healed (fault injection)")
            return {"status": "healed"}
        if "registry" in peers:
            self.hb_paused_until = max(self.hb_paused_until, until)
        self.partition = (set(str(p) for p in peers), until)
        log(f"partitioned from {sorted(self.partition[0])} for {seconds} s (fault injection)")
        return {"status": "partitioned", "peers": peers, "seconds": seconds}

    def cut_off(self, peer):
        peers, until = self.partition
        return peer in peers and time.monotonic() < until

    def hold_while_cut_off(self, peer):
        held = False
        while self.cut_off(peer):
            held = True
            time.sleep(0.02)
        return held

    def slow_disk(self, body):
        ms = field(body, "ms", "int")
        seconds = field(body, "seconds", "num")
        if ms > 60000 or not 0 <= seconds <= 3600:
            raise ApiError(400, "ms must be at most 60000 and seconds between 0 and 3600")
        if self.disk is not None:
            self.disk.slow_ms, self.disk.slow_until = ms, time.monotonic() + seconds
        return {"status": "slow", "ms": ms, "seconds": seconds}

    # -- heartbeats and stopping ------------------------------------------------------

    def heartbeat_loop(self):
        client = Client(self.cfg.registry, self, timeout=2.0)
        failing = False
        first = True
        while True:
            if not first:
                time.sleep(self.cfg.heartbeat_interval)
            first = False
            if time.monotonic() < self.hb_paused_until:
                continue
            with self.lock:
                role = self.role
            body = {"node_id": self.id, "port": self.cfg.port, "url": self.url, "role": role,
                    "incarnation": self.incarnation}
            try:
                status, _, answer = client.call("POST", "/heartbeat", body)
                # One connection per beat, closed by us: a registry that
                # restarts is never left with our half of an old one.
                client.close()
            except (OSError, http.client.HTTPException) as e:
                if not failing:
                    log(f"heartbeat failed ({describe(e)}); will keep trying")
                failing = True
                continue
            if status == 409:
                log(f"replaced by a newer incarnation ({answer}): exiting")
                os._exit(EXIT_FENCED)
            if status != 200:
                if not failing:
                    log(f"registry answered {status}: {answer}")
                failing = True
                continue
            if failing:
                log("registry reachable again")
            failing = False

    def deregister(self):
        if not self.cfg.registry:
            return
        try:
            Client(self.cfg.registry, self, timeout=2.0).call(
                "POST", "/deregister", {"node_id": self.id, "incarnation": self.incarnation})
        except (OSError, http.client.HTTPException) as e:
            log(f"could not deregister: {describe(e)}")

    def shutdown(self):
        def stop():
            time.sleep(0.1)           # let this answer reach the caller first
            self.deregister()
            log("stopping (POST /admin/shutdown)")
            os._exit(0)
        threading.Thread(target=stop, daemon=True).start()
        return {"status": "stopping"}


# ---------------------------------------------------------------------------
# Level 4: the leader's stream to one follower
# ---------------------------------------------------------------------------

class StreamError(Exception):
    pass


class Peer:
    def __init__(self, node, cfg, term):
        self.node = node
        self.node_id = cfg["node_id"]
        self.url = cfg["url"]
        self.incarnation = cfg["incarnation"]
        self.sync = cfg["sync"]
        self.term = term
        self.acked = 0
        self.failures = 0
        self.last_error = None
        self.waited_through = 0       # a write waits for this peer up to here
        self.promoted_at = None
        self.stopped = False
        self.thread = threading.Thread(target=self.run, name=f"stream-{self.node_id}", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        with self.node.lock:
            self.stopped = True
            self.node.changed.notify_all()

    def set_sync(self, sync):                # call with node.lock held
        if sync != self.sync:
            self.promoted_at = time.monotonic() if sync else None
            self.sync = sync
            self.node.changed.notify_all()

    def view(self):
        return {"node_id": self.node_id, "url": self.url, "incarnation": self.incarnation,
                "sync": self.sync, "acked_seq": self.acked, "error": self.last_error}

    def due(self, seq, appended_at):
        """When an entry may go to this follower under the lab's delays."""
        d = self.node.cfg
        by_async = appended_at + d.async_delay
        if not self.sync:
            return appended_at + d.sync_delay if seq <= self.waited_through else by_async
        if self.promoted_at is not None and appended_at < self.promoted_at:
            return min(by_async, self.promoted_at + d.sync_delay)
        return appended_at + d.sync_delay

    def record(self, acked=None, error=None):
        with self.node.lock:
            if error is None:
                self.acked = max(self.acked, acked)
                self.last_error = None
            else:
                self.failures += 1
                self.last_error = error
            self.node.changed.notify_all()

    def leading(self):                       # call with node.lock held
        return not self.stopped and self.node.role == "leader" and self.node.term == self.term

    def post(self, client, path, body):
        if self.node.hold_while_cut_off(self.node_id):
            raise StreamError(f"dropped: this node was partitioned from {self.node_id}")
        try:
            status, _, answer = client.call("POST", path, body,
                                            headers={"x-kvlab-term": str(self.term)}, timeout=10.0)
        except (OSError, http.client.HTTPException) as e:
            raise StreamError(describe(e))
        return self.check(status, answer)

    def check(self, status, answer):
        if status != 200:
            detail = answer.get("detail") if isinstance(answer, dict) else answer
            if isinstance(detail, dict) and detail.get("error") == "stale term" and is_int(detail.get("term")):
                self.node.adopt_term(detail["term"])
            raise StreamError(f"HTTP {status}: {json.dumps(detail)}")
        if not isinstance(answer, dict) or not is_int(answer.get("acked_seq")):
            raise StreamError(f"unreadable answer: {answer!r}")
        if answer.get("incarnation") != self.incarnation:
            raise StreamError(f"fenced: expected incarnation {self.incarnation} of {self.node_id}, "
                              f"found {answer.get('incarnation')}")
        return answer

    def handshake(self, client):
        if self.node.hold_while_cut_off(self.node_id):
            raise StreamError(f"dropped: this node was partitioned from {self.node_id}")
        try:
            status, _, answer = client.call("GET", "/replicate",
                                            headers={"x-kvlab-term": str(self.term)}, timeout=5.0)
        except (OSError, http.client.HTTPException) as e:
            raise StreamError(describe(e))
        answer = self.check(status, answer)
        theirs = answer.get("history") or []
        with self.node.lock:
            shared = common_prefix(self.node.history, self.node.appended(), theirs, answer["acked_seq"])
        if shared >= answer["acked_seq"]:
            self.post(client, "/replicate", {"term": self.term, "to_incarnation": self.incarnation,
                                             "entries": []})
            return answer["acked_seq"]
        log(f"{self.node_id}'s log parts from ours after seq {shared} (it holds "
            f"{answer['acked_seq']}): asking it to truncate")
        cut = self.post(client, "/replicate/truncate", {"term": self.term,
                                                        "to_incarnation": self.incarnation,
                                                        "after_seq": shared})
        return min(cut["acked_seq"], shared)

    def plan(self, nxt):
        """('send', entries) | ('snapshot', None) | ('wait', seconds) | ('stop', None)."""
        node = self.node
        with node.lock:
            if not self.leading():
                return "stop", None
            if nxt > node.appended():
                node.changed.wait(1.0)
                return "wait", None
            if nxt < node.log_first:
                return "snapshot", None
            now = time.monotonic()
            batch, size = [], 0
            seq = nxt
            while seq <= node.appended() and len(batch) < MAX_ENTRIES_PER_APPEND and size < BATCH_PAYLOAD_BYTES:
                i = seq - node.log_first
                due = self.due(seq, node.log_times[i])
                if due > now:
                    if not batch:
                        node.changed.wait(min(due - now, 1.0))
                        return "wait", None
                    break
                e = node.log[i]
                batch.append(e)
                size += len(e["key"]) + len(e["value"])
                seq += 1
            return "send", batch

    def send_snapshot(self, client):
        node = self.node
        with node.lock:
            seq, history = node.applied, [list(x) for x in node.history]
            items = [(k, {"value": v[0], "version": v[1]}) for k, v in node.data.items()]
        with node.lock:
            while node.persisted < seq and self.leading():
                node.changed.wait(1.0)
        chunks, current, size = [], {}, 0
        for k, v in items:
            if size >= BATCH_PAYLOAD_BYTES:
                chunks.append(current)
                current, size = {}, 0
            current[k] = v
            size += len(k) + len(v["value"])
        chunks.append(current)
        log(f"{self.node_id} lacks entries our log no longer holds: sending a snapshot at seq {seq} "
            f"({len(items)} keys, {len(chunks)} chunks)")
        acked = 0
        for i, data in enumerate(chunks):
            answer = self.post(client, "/replicate/snapshot",
                               {"term": self.term, "to_incarnation": self.incarnation, "seq": seq,
                                "data": data, "history": history, "chunk": i,
                                "last": i == len(chunks) - 1})
            acked = answer["acked_seq"]
            if acked >= seq:
                break
        return min(acked, seq)

    def run(self):
        client = Client(self.url, self.node, timeout=5.0)
        nxt, backoff = None, 0.05
        try:
            while True:
                with self.node.lock:
                    if not self.leading():
                        return
                try:
                    if nxt is None:
                        acked = self.handshake(client)
                        self.record(acked=acked)
                        nxt = acked + 1
                    what, batch = self.plan(nxt)
                    if what == "stop":
                        return
                    if what == "wait":
                        continue
                    if what == "snapshot":
                        acked = self.send_snapshot(client)
                    else:
                        answer = self.post(client, "/replicate",
                                           {"term": self.term, "to_incarnation": self.incarnation,
                                            "entries": batch})
                        with self.node.lock:
                            self.node.stats["replications_sent"] += len(batch)
                        acked = min(answer["acked_seq"], batch[-1]["seq"])
                    self.record(acked=acked)
                    nxt = acked + 1
                    backoff = 0.05
                except StreamError as e:
                    self.record(error=str(e))
                    nxt = None                 # ask again where it stands
                    client.close()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
        except Exception:                      # never let a stream die silently
            log(f"stream to {self.node_id} crashed:\n{traceback.format_exc()}")
        finally:
            client.close()


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, node, addr):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.node = node
        super().__init__(addr, Handler)

    def handle_error(self, request, client_address):
        log(f"connection from {client_address} failed: {describe(sys.exc_info()[1])}")


ROUTES = {
    ("GET", "/"): lambda n, b: n.info(),
    ("GET", "/health"): lambda n, b: n.health(),
    ("GET", "/stats"): lambda n, b: n.node_stats(),
    ("GET", "/data"): lambda n, b: n.all_data(),
    ("POST", "/data"): lambda n, b: n.single_write(b),
    ("GET", "/snapshot"): lambda n, b: n.snapshot_view(),
    ("POST", "/batch/read"): lambda n, b: n.batch_read(b),
    ("POST", "/batch/write"): lambda n, b: n.batch_write(b),
    ("GET", "/replicate"): lambda n, b: n.replicate_state(),
    ("POST", "/replicate"): lambda n, b: n.replicate_append(b),
    ("POST", "/replicate/truncate"): lambda n, b: n.replicate_truncate(b),
    ("POST", "/replicate/snapshot"): lambda n, b: n.replicate_snapshot(b),
    ("POST", "/admin/promote"): lambda n, b: n.promote(b),
    ("PUT", "/replication/peers"): lambda n, b: n.set_peers(b),
    ("GET", "/replication/peers"): lambda n, b: n.get_peers(),
    ("POST", "/replication/wait"): lambda n, b: n.wait_for_peer(b),
    ("GET", "/replication/links"): lambda n, b: n.links(),
    ("POST", "/admin/shutdown"): lambda n, b: n.shutdown(),
    ("POST", "/admin/pause-heartbeats"): lambda n, b: n.pause_heartbeats(b),
    ("POST", "/admin/partition"): lambda n, b: n.set_partition(b),
    ("POST", "/admin/slow-disk"): lambda n, b: n.slow_disk(b),
}
NEEDS_BODY = {"/data", "/batch/read", "/batch/write", "/replicate", "/replicate/truncate",
              "/replicate/snapshot", "/admin/promote", "/replication/peers", "/replication/wait",
              "/admin/pause-heartbeats", "/admin/partition", "/admin/slow-disk"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive: every answer has a Content-Length
    server_version = "kvlab-python-node"
    timeout = 10                        # an idle keep-alive connection is closed after 10 s

    def log_message(self, fmt, *args):  # no line per request
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def read_body(self):
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            parts, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    self.close_connection = True
                    raise ApiError(413, {"error": "body too large",
                                         "reason": "the request body is larger than this route accepts"})
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length")
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, {"error": "body too large",
                                 "reason": "the request body is larger than this route accepts"})
        return self.rfile.read(length) if length else b""

    def authorized(self):
        given = self.headers.get("x-kvlab-secret")
        secret = self.server.node.secret
        return bool(secret and given and hmac.compare_digest(given.encode(), secret.encode()))

    def dispatch(self, method):
        node = self.server.node
        with node.lock:
            node.stats["active_requests"] += 1
        try:
            status, body = self.route(method, node)
        except ApiError as e:
            status, body = e.status, {"detail": e.detail}
        except Exception as e:   # a bug must not kill the connection thread silently
            log(f"{method} {self.path} failed: {describe(e)}\n{traceback.format_exc()}")
            status, body = 500, {"detail": f"internal error: {describe(e)}"}
        finally:
            with node.lock:
                node.stats["active_requests"] -= 1
        self.answer(status, body)

    def route(self, method, node):
        raw_path = urllib.parse.urlsplit(self.path).path
        path = urllib.parse.unquote(raw_path)
        internal = path.startswith(INTERNAL_PREFIXES)
        if internal and not self.authorized():
            reason = ("this node has no cluster secret, so it serves no internal route"
                      if not node.secret else
                      "internal route: the request has no X-Kvlab-Secret header"
                      if self.headers.get("x-kvlab-secret") is None else
                      "internal route: the X-Kvlab-Secret header is wrong")
            self.read_body()
            return 401, {"detail": {"error": "unauthorized", "reason": reason}}
        # Optional partition hook: traffic from a cut-off peer is held, then dropped.
        if not path.startswith("/admin/") and node.partition[0]:
            sender = self.headers.get("x-kvlab-from")
            names = [sender] if sender else []
            if path.startswith("/replicate"):
                names.append("leader")        # only whoever leads now replicates
            elif not sender:
                names.append("coordinator")   # the coordinator does not name itself
            for name in names:
                if node.hold_while_cut_off(name):
                    self.read_body()
                    return 503, {"detail": f"dropped: this node was partitioned from {name}"}
        body = self.read_body()
        # Terms only from the cluster: a request with the secret and a higher
        # X-Kvlab-Term makes us adopt it; a lower one is refused.
        term_header = self.headers.get("x-kvlab-term")
        if term_header is not None and self.authorized():
            try:
                term = int(term_header)
                if term < 0:
                    raise ValueError
            except ValueError:
                raise ApiError(400, "X-Kvlab-Term must be a whole number")
            node.check_term(term)
        if method == "GET" and path.startswith("/data/"):
            return 200, node.read_key(path[len("/data/"):])
        handler = ROUTES.get((method, path))
        if handler is None:
            if any(p == path for (_, p) in ROUTES):
                raise ApiError(405, f"{method} is not allowed on {path}")
            raise ApiError(404, f"no route {method} {path}")
        parsed = None
        if path in NEEDS_BODY and method != "GET":
            try:
                parsed = json.loads(body) if body else None
            except ValueError as e:
                raise ApiError(400, {"error": "the body is not valid JSON", "reason": str(e)})
            if path != "/admin/shutdown" and not isinstance(parsed, dict):
                raise ApiError(422, {"error": "the body must be a JSON object"})
        return 200, handler(node, parsed)

    def answer(self, status, body):
        node = self.server.node
        payload = json.dumps(body).encode()
        with node.lock:
            role, term = node.role, node.term
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.send_header("x-node-id", node.id)
            self.send_header("x-node-role", role)
            self.send_header("x-node-incarnation", str(node.incarnation))
            self.send_header("x-kvlab-term", str(term))
            if self.close_connection:
                self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True   # the caller went away: nothing to do


def main(argv=None, node_class=Node):
    cfg = Config(argv)
    try:
        node = node_class(cfg)
    except CorruptLog as e:
        log(f"refusing to serve: {e}")
        sys.exit(EXIT_CORRUPT_LOG)
    if not node.secret:
        log("warning: no cluster secret (KVLAB_CLUSTER_SECRET): internal routes answer 401")
    server = Server(node, (cfg.host, cfg.port))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    log(f"{node.id} (incarnation {node.incarnation}, {node.role}, term {node.term}) listening on "
        f"{cfg.host}:{cfg.port}; data {'in ' + cfg.data_dir if cfg.data_dir else 'in memory'}")
    if cfg.registry:
        threading.Thread(target=node.heartbeat_loop, name="heartbeat", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
