#!/usr/bin/env python3
"""A small conformance check of a node, without a cluster (instructors only).

    python3 selftest.py --level 3 'python3 ../node.py'
    python3 selftest.py --level 1 'python3 broken/out_of_order.py'

It starts the node the way `kvlab up --node-cmd` does (KVLAB_* variables,
`sh -c 'exec CMD'`), plays the registry, the coordinator and the leader
itself, and runs tests up to the level: those named as `kvlab grade-node`
names them (`fencing` is split in two here), plus a few the grader leaves to
its cluster run (`exits_when_replaced`, `reports_history`,
`refuses_diverged`, `truncation_survives`, `leads`).
It is a sanity check of the course material (the reference passes, each
broken node fails the test aimed at its bug); `kvlab grade-node` is the
grader. Exit code 0 when every test passed. Standard library only.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "selftest-" + os.urandom(12).hex()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """Records heartbeats; answers 409 to ids listed in `fence`."""

    def __init__(self):
        self.beats, self.deregistered, self.fence = [], [], set()
        reg = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                ok = self.headers.get("x-kvlab-secret") == SECRET
                if self.path == "/heartbeat":
                    reg.beats.append((time.monotonic(), body, ok))
                    status = 409 if body.get("node_id") in reg.fence else 200 if ok else 401
                else:
                    reg.deregistered.append((body, ok))
                    status = 200
                out = json.dumps({"status": "ok", "nodes": []}).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None   # a node that exits resets its connection
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Proc:
    def __init__(self, cmd, node_id, registry, data_dir="", incarnation=1, port=None, role="follower"):
        self.port = port or free_port()
        self.node_id, self.incarnation = node_id, incarnation
        env = dict(os.environ, KVLAB_NODE_ID=node_id, KVLAB_HOST="127.0.0.1", KVLAB_PORT=str(self.port),
                   KVLAB_ROLE=role, KVLAB_INCARNATION=str(incarnation), KVLAB_REGISTRY=registry,
                   KVLAB_DATA_DIR=data_dir, KVLAB_FSYNC="always", KVLAB_HEARTBEAT_INTERVAL="0.3",
                   KVLAB_SYNC_DELAY="0", KVLAB_ASYNC_DELAY="0", KVLAB_LOG_RETAIN="100000",
                   KVLAB_CLUSTER_SECRET=SECRET)
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(["sh", "-c", "exec " + cmd], env=env, stdout=self.log,
                                  stderr=subprocess.STDOUT)
        self.conn = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
            if self.p.poll() is not None:
                break
        raise Fail(f"the node did not answer GET /health within 10 s: {self.output()}")

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def call(self, method, path, body=None, secret=True, term=None):
        headers = {"content-type": "application/json"}
        if secret:
            headers["x-kvlab-secret"] = SECRET if secret is True else secret
        if term is not None:
            headers["x-kvlab-term"] = str(term)
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, body=None if body is None else json.dumps(body),
                                  headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = raw.decode(errors="replace")
                return r.status, data, r.headers
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise OSError("unreachable")

    def kill(self, sig=signal.SIGKILL):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        self.p.wait(10)
        if self.conn:
            self.conn.close()
            self.conn = None


class Fail(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


def entry(seq, key, value, version, term=1):
    return {"seq": seq, "term": term, "key": key, "value": value, "version": version}


def append(n, entries, term=1, inc=None):
    return n.call("POST", "/replicate", {"term": term, "to_incarnation": inc or n.incarnation,
                                         "entries": entries}, term=term)


def acked(n):
    s, a, _ = n.call("GET", "/replicate")
    expect(s == 200, f"GET /replicate answered {s}: {a}")
    return a["acked_seq"]


def read_batch(n, keys):
    s, a, _ = n.call("POST", "/batch/read", {"keys": keys})
    expect(s == 200, f"POST /batch/read answered {s}: {a}")
    return a


# ---------------------------------------------------------------------------
# the tests, by level
# ---------------------------------------------------------------------------

def t_health(ctx):
    n = ctx.node()
    s, h, headers = n.call("GET", "/health", secret=False)
    expect(s == 200 and h.get("status") == "ok" and h.get("node_id") == n.node_id
           and h.get("incarnation") == n.incarnation,
           f"GET /health must answer {{status: ok, node_id, role, incarnation}}; got {s} {h}")
    for name in ("x-node-id", "x-node-role", "x-node-incarnation", "x-kvlab-term"):
        expect(headers.get(name) is not None, f"the answer lacks the header {name}")
    expect(headers.get("x-node-incarnation") == str(n.incarnation), "x-node-incarnation is wrong")


def t_auth(ctx):
    n = ctx.node()
    for method, path, body in (("GET", "/replicate", None), ("POST", "/replicate", {}),
                               ("POST", "/batch/read", {"keys": ["a"]}),
                               ("POST", "/admin/shutdown", None)):
        for secret, what in ((False, "without"), ("wrong-secret-0123456789", "with a wrong")):
            s, a, _ = n.call(method, path, body, secret=secret)
            expect(s == 401, f"{method} {path} {what} x-kvlab-secret answered {s} ({a}), expected 401")
    s, a, _ = n.call("GET", "/data/nothing", secret=False)
    expect(s == 404, f"GET /data/nothing (open route, no secret) answered {s}, expected 404")
    expect(n.p.poll() is None, "the node exited after an unauthorized /admin/shutdown")


def t_registers(ctx):
    n = ctx.node()
    time.sleep(1.0)
    mine = [b for b in ctx.registry.beats if b[1].get("node_id") == n.node_id]
    expect(len(mine) >= 2, f"{len(mine)} heartbeats in 1 s with KVLAB_HEARTBEAT_INTERVAL=0.3")
    _, body, ok = mine[-1]
    expect(ok, "heartbeats must carry x-kvlab-secret")
    for k, v in (("node_id", n.node_id), ("port", n.port), ("role", "follower"),
                 ("incarnation", n.incarnation), ("url", f"http://127.0.0.1:{n.port}")):
        expect(body.get(k) == v, f"heartbeat field {k} is {body.get(k)!r}, expected {v!r}")


def t_handshake(ctx):
    n = ctx.node()
    s, a, _ = n.call("GET", "/replicate", term=1)
    expect(s == 200, f"GET /replicate answered {s}: {a}")
    want = {"node_id": n.node_id, "incarnation": n.incarnation, "acked_seq": 0, "history": []}
    for k, v in want.items():
        expect(a.get(k) == v, f"GET /replicate on a fresh node: {k} is {a.get(k)!r}, expected {v!r}")
    expect(a.get("term") == 1, f"the handshake carried x-kvlab-term 1; the answer's term is {a.get('term')}")


def t_append(ctx):
    n = ctx.node()
    s, a, _ = append(n, [entry(1, "a", "x", 1), entry(2, "b", "y", 1), entry(3, "a", "z", 2)])
    expect(s == 200 and a["acked_seq"] == 3, f"entries 1-3: answered {s} {a}, expected acked_seq 3")
    s, v, _ = n.call("GET", "/data/a", secret=False)
    expect(s == 200 and v.get("value") == "z" and v.get("version") == 2,
           f"GET /data/a after seq 3: {s} {v}, expected value z version 2")
    r = read_batch(n, ["a", "b", "c"])
    expect(r["values"] == [{"value": "z", "version": 2}, {"value": "y", "version": 1}, None],
           f"/batch/read values: {r['values']}")
    expect(r.get("seqs") == [3, 2, 0], f"/batch/read seqs: {r.get('seqs')}, expected [3, 2, 0]")
    expect(r.get("term") == 1, f"/batch/read term: {r.get('term')}, expected 1 (the leader of term 1 "
                               f"sent the appends)")
    s, st, _ = n.call("GET", "/stats", secret=False)
    for k in ("node_id", "role", "active_requests", "total_writes", "total_reads", "replications_sent",
              "replications_received", "data_count", "followers", "applied_seq", "incarnation"):
        expect(k in st, f"/stats lacks {k}")
    expect(st["applied_seq"] == 3, f"/stats applied_seq {st['applied_seq']}, expected 3")


def t_duplicates(ctx):
    n = ctx.node()
    append(n, [entry(1, "a", "x", 1), entry(2, "a", "y", 2), entry(3, "a", "z", 3)])
    s, a, _ = append(n, [entry(2, "a", "y", 2)])
    expect(s == 200 and a["acked_seq"] == 3, f"a resent seq 2: {s} {a}, expected 200 acked_seq 3")
    s, v, _ = n.call("GET", "/data/a", secret=False)
    expect(v.get("version") == 3, f"a resent seq 2 turned key a back to version {v.get('version')}")


def t_gap(ctx):
    n = ctx.node()
    append(n, [entry(1, "a", "1", 1), entry(2, "b", "1", 1), entry(3, "c", "1", 1)])
    s, a, _ = append(n, [entry(5, "e", "1", 1), entry(6, "f", "1", 1)])
    expect(s == 200 and a["acked_seq"] == 3,
           f"sent entries 1-3, then 5-6 (seq 4 left out): answered {s} acked_seq "
           f"{a.get('acked_seq') if isinstance(a, dict) else a}, but the node never received seq 4; "
           f"expected acked_seq 3")
    s, _, _ = n.call("GET", "/data/e", secret=False)
    expect(s == 404, "the node serves key e (seq 5) although seq 4 never arrived")


def t_incarnation(ctx):
    n = ctx.node(incarnation=5)
    s, a, _ = append(n, [entry(1, "a", "1", 1)], inc=4)
    expect(s == 409, f"an append addressed to incarnation 4 (this is 5) answered {s}, expected 409")
    expect(acked(n) == 0, "the append meant for another incarnation was applied")


def t_fenced_exit(ctx):
    n = ctx.node(node_id="follower-9")
    ctx.registry.fence.add("follower-9")
    try:
        n.p.wait(5)
    except subprocess.TimeoutExpired:
        raise Fail("the registry answered 409 to the heartbeats for 5 s; the node must exit")
    finally:
        ctx.registry.fence.discard("follower-9")


def t_shutdown(ctx):
    n = ctx.node(node_id="follower-8")
    s, a, _ = n.call("POST", "/admin/shutdown")
    expect(s == 200, f"POST /admin/shutdown answered {s}: {a}")
    try:
        n.p.wait(5)
    except subprocess.TimeoutExpired:
        raise Fail("the node still runs 5 s after POST /admin/shutdown")
    expect(any(d[0].get("node_id") == "follower-8" for d in ctx.registry.deregistered),
           "the node did not POST /deregister to the registry")


def t_diverged(ctx):
    n = ctx.node()
    append(n, [entry(1, "a", "1", 1), entry(2, "a", "2", 2), entry(3, "a", "3", 3)])
    s, a, _ = append(n, [entry(3, "a", "other", 3, term=2)], term=2)
    expect(s == 409 and "diverged at seq 3" in json.dumps(a),
           f"seq 3 of term 2 sent to a node holding seq 3 of term 1: {s} {a}, expected 409 diverged at seq 3")


def t_history(ctx):
    n = ctx.node()
    append(n, [entry(1, "a", "1", 1), entry(2, "a", "2", 2)])
    append(n, [entry(3, "a", "3", 3, term=3), entry(4, "b", "1", 1, term=3)], term=3)
    s, a, _ = n.call("GET", "/replicate")
    expect(a.get("history") == [[1, 1], [3, 3]] and a.get("last_term") == 3,
           f"history after seqs 1-2 of term 1 and 3-4 of term 3: {a.get('history')}, "
           f"last_term {a.get('last_term')}; expected [[1, 1], [3, 3]] and 3")


def t_truncate(ctx):
    n = ctx.node()
    append(n, [entry(i, f"k{i}", "1", 1) for i in range(1, 7)])
    s, a, _ = n.call("GET", "/replicate", term=2)
    s, a, _ = n.call("POST", "/replicate/truncate", {"term": 2, "to_incarnation": n.incarnation,
                                                     "after_seq": 4}, term=2)
    expect(s == 200 and a["acked_seq"] <= 4, f"truncate after 4: {s} {a}, expected acked_seq <= 4")
    for k in ("k5", "k6"):
        s, _, _ = n.call("GET", f"/data/{k}", secret=False)
        expect(s == 404, f"{k} (seq > 4) is still served after the truncation")
    held = a["acked_seq"]
    s, a, _ = append(n, [entry(i, f"k{i}", "2", 1 if i > 4 else 2, term=2 if i > 4 else 1)
                         for i in range(held + 1, 7)], term=2)
    expect(s == 200 and a["acked_seq"] == 6, f"entries after the cut: {s} {a}")


def t_snapshot(ctx):
    n = ctx.node()
    append(n, [entry(1, "a", "1", 1)])
    body = {"term": 1, "to_incarnation": n.incarnation, "seq": 50, "history": [[1, 1]]}
    s, a, _ = n.call("POST", "/replicate/snapshot", dict(body, data={"x": {"value": "1", "version": 4}},
                                                        chunk=0, last=False))
    expect(s == 200, f"snapshot chunk 0: {s} {a}")
    s, _, _ = n.call("GET", "/data/x", secret=False)
    expect(s == 404, "a snapshot must be installed only once its last chunk is in")
    s, a, _ = n.call("POST", "/replicate/snapshot", dict(body, data={"y": {"value": "2", "version": 1}},
                                                        chunk=2, last=True))
    expect(s == 409, f"chunk 2 after chunk 0: {s}, expected 409 (out of order)")
    n.call("POST", "/replicate/snapshot", dict(body, data={"x": {"value": "1", "version": 4}},
                                              chunk=0, last=False))
    s, a, _ = n.call("POST", "/replicate/snapshot", dict(body, data={"y": {"value": "2", "version": 1}},
                                                        chunk=1, last=True))
    expect(s == 200 and a["acked_seq"] == 50, f"last chunk: {s} {a}, expected acked_seq 50")
    r = read_batch(n, ["x", "y", "a"])
    expect(r["values"] == [{"value": "1", "version": 4}, {"value": "2", "version": 1}, None],
           f"after the snapshot: {r['values']} (the snapshot replaces the whole state)")
    s, a, _ = append(n, [entry(51, "x", "2", 5)])
    expect(a["acked_seq"] == 51, f"an append after the snapshot: {a}")


def t_reconciled(ctx):
    n = ctx.node()
    append(n, [entry(i, "k", str(i), i) for i in range(1, 7)])
    expect(read_batch(n, ["k"])["term"] == 1, "the read term after appends of term 1 must be 1")
    s, a, _ = n.call("GET", "/replicate", term=2)
    r = read_batch(n, ["k"])
    expect(r["term"] == 1,
           f"the node holds seqs 1-6 of term 1; the leader of term 2 sent only the handshake GET "
           f"/replicate (x-kvlab-term: 2), and POST /batch/read already answered term "
           f"{r['term']}. A follower may claim term 2 only once that leader has reconciled its log "
           f"(the empty append or truncation after the handshake); until then: 1")
    n.call("POST", "/replicate/truncate", {"term": 2, "to_incarnation": n.incarnation, "after_seq": 4},
           term=2)
    expect(read_batch(n, ["k"])["term"] == 2, "after the truncation of term 2 the read term must be 2")


def t_sigkill(ctx):
    d = ctx.tmpdir()
    n = ctx.node(data_dir=d)
    seq = 0
    last = 0
    for b in range(30):
        es = []
        for _ in range(10):
            seq += 1
            es.append(entry(seq, f"k{seq % 7}", f"v{seq}", seq // 7 + 1, term=1 if seq < 150 else 2))
        s, a, _ = append(n, es, term=1 if seq < 150 else 2)
        last = a["acked_seq"]
    n.kill()
    m = ctx.node(data_dir=d, incarnation=2, port=n.port)
    s, a, _ = m.call("GET", "/replicate")
    expect(a["acked_seq"] >= last,
           f"the node acknowledged seq {last}, was killed with SIGKILL right after, and restarted on "
           f"the same data directory: it now holds the log up to seq {a['acked_seq']}. An "
           f"acknowledged entry must survive a crash: write it and fsync before you answer")
    expect(a.get("history") == [[1, 1], [2, 150]], f"history after the restart: {a.get('history')}")
    s, v, _ = m.call("GET", f"/data/k{300 % 7}", secret=False)
    expect(v.get("value") == "v300", f"key k{300 % 7} after the restart: {v}")
    expect(a.get("term") == 2, f"the term after a restart: {a.get('term')}, expected 2")


def t_truncate_durable(ctx):
    d = ctx.tmpdir()
    n = ctx.node(data_dir=d)
    append(n, [entry(i, f"k{i}", "1", 1) for i in range(1, 9)])
    n.call("POST", "/replicate/truncate", {"term": 2, "to_incarnation": 1, "after_seq": 5}, term=2)
    n.kill()
    m = ctx.node(data_dir=d, incarnation=2, port=n.port)
    expect(acked(m) <= 5, f"a truncation after seq 5 did not survive a restart: acked_seq {acked(m)}")
    s, _, _ = m.call("GET", "/data/k7", secret=False)
    expect(s == 404, "k7 (cut) is back after a restart")


def t_stale_term(ctx):
    n = ctx.node()
    append(n, [entry(1, "a", "1", 1)])
    n.call("GET", "/replicate", term=3)
    s, a, _ = append(n, [entry(2, "a", "2", 2, term=2)], term=2)
    expect(s == 409 and "stale term" in json.dumps(a),
           f"the node heard term 3, then got POST /replicate of term 2: it answered {s} {a}; "
           f"expected 409 {{\"detail\": {{\"error\": \"stale term\", \"term\": 3}}}}")


def t_leader(ctx):
    f = ctx.node(node_id="follower-1", cmd=ctx.reference)
    n = ctx.node(node_id="leader")
    s, a, _ = n.call("POST", "/admin/promote", {"term": 2}, term=2)
    expect(s == 200 and a.get("term") == 2, f"POST /admin/promote term 2: {s} {a}")
    s, a, _ = n.call("PUT", "/replication/peers", {"peers": [
        {"node_id": "follower-1", "url": f"http://127.0.0.1:{f.port}", "incarnation": 1, "sync": True}]},
        term=2)
    expect(s == 200, f"PUT /replication/peers: {s} {a}")
    s, a, h = n.call("POST", "/batch/write", {"writes": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}],
                                              "sync": [{"node_id": "follower-1", "incarnation": 1}],
                                              "ack_timeout_ms": 3000}, term=2)
    expect(s == 200 and [r["seq"] for r in a["results"]] == [1, 2]
           and [r["version"] for r in a["results"]] == [1, 2]
           and all(r["acked_by"] == ["follower-1"] for r in a["results"]),
           f"POST /batch/write with follower-1 in the sync set: {s} {a}")
    expect(h.get("x-kvlab-term") == "2", "the leader's answer must carry x-kvlab-term: 2")
    s, v, _ = f.call("GET", "/data/a", secret=False)
    expect(v.get("version") == 2, f"the sync follower does not hold the write it acknowledged: {v}")
    s, a, _ = n.call("POST", "/replication/wait", {"node_id": "follower-1", "timeout_ms": 2000})
    expect(s == 200 and a.get("acked_seq") == 2, f"POST /replication/wait: {s} {a}")
    s, a, _ = n.call("POST", "/batch/write", {"writes": [{"key": "b", "value": "1"}]}, term=1)
    expect(s == 409, f"a write of term 1 to the leader of term 2 answered {s}, expected 409 stale term")
    n.call("GET", "/replicate", term=3)
    s, a, _ = n.call("POST", "/batch/write", {"writes": [{"key": "b", "value": "1"}]}, term=3)
    expect(s in (403, 409), f"after hearing term 3 the old leader still took a write: {s} {a}")


TESTS = [
    (1, "starts", t_health), (1, "guards_internal_routes", t_auth), (1, "heartbeats", t_registers),
    (1, "handshake", t_handshake), (1, "applies_in_order", t_append),
    (1, "ignores_duplicates", t_duplicates), (1, "refuses_gaps", t_gap),
    (1, "fencing", t_incarnation), (1, "exits_when_replaced", t_fenced_exit),
    (1, "shutdown", t_shutdown),
    (2, "reports_history", t_history), (2, "refuses_diverged", t_diverged), (2, "truncates", t_truncate),
    (2, "installs_snapshot", t_snapshot), (2, "vouches_for_reads", t_reconciled),
    (3, "survives_crash", t_sigkill), (3, "truncation_survives", t_truncate_durable),
    (1, "fencing_stale_term", t_stale_term), (4, "leads", t_leader),
]


class Ctx:
    def __init__(self, cmd, reference):
        self.cmd, self.reference = cmd, reference
        self.registry = Registry()
        self.procs, self.dirs = [], []

    def node(self, node_id="follower-1", incarnation=1, data_dir="", port=None, cmd=None):
        p = Proc(cmd or self.cmd, node_id, self.registry.url, data_dir, incarnation, port)
        self.procs.append(p)
        return p

    def tmpdir(self):
        d = tempfile.mkdtemp(prefix="kvlab-selftest-")
        self.dirs.append(d)
        return d

    def close(self):
        for p in self.procs:
            p.kill()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.procs, self.dirs = [], []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", help="the node's command, as for kvlab up --node-cmd")
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--only", help="run this test only")
    a = ap.parse_args()
    reference = "python3 " + os.path.join(os.path.dirname(os.path.abspath(__file__)), "node.py")
    failed = 0
    for level, name, test in TESTS:
        if level > a.level or (a.only and a.only != name):
            continue
        ctx = Ctx(a.cmd, reference)
        try:
            test(ctx)
            print(f"PASS {name}")
        except Fail as e:
            failed += 1
            print(f"FAIL {name}: {e}")
        except Exception as e:
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        finally:
            outputs = [p.output() for p in ctx.procs]
            ctx.close()
            for out in outputs:
                if "Traceback" in out:
                    print(f"     (the node's output has a traceback)\n{out}")
    print(f"{failed} failed" if failed else "all passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
