#!/usr/bin/env python3
"""A kvlab node: the starter.

Run it in a cluster as a follower:

    kvlab up --node-cmd 'python3 node.py'

or by hand:

    KVLAB_CLUSTER_SECRET=... python3 node.py --id follower-1 --port 7002

Python 3.8+, standard library only: nothing to install.

The plumbing is done: settings, the HTTP server (keep-alive, JSON errors,
the identity headers), the cluster secret, terms in headers, heartbeats,
/health, /stats and the graceful shutdown. It starts, registers and looks
alive, but it does not replicate anything yet: the lessons are the TODOs.
Read docs/node-protocol.md (the protocol) and labs/node/levelN.md (your
brief) first. Search this file for "TODO (level".
"""

import argparse
import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY_BYTES = 64 * 1024 * 1024
INTERNAL_PREFIXES = ("/batch/", "/replicate", "/replication/", "/admin/")


def log(msg):
    """One line in the node's log file (the coordinator collects stderr)."""
    sys.stderr.write(time.strftime("%H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


class ApiError(Exception):
    """Raise it from an endpoint to answer `status` with {"detail": detail}."""

    def __init__(self, status, detail):
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


def need(body, name, kind):
    """body[name], or 422 when it is missing or not of type `kind`."""
    if not isinstance(body, dict) or name not in body:
        raise ApiError(422, {"error": f"missing field `{name}`"})
    value = body[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(422, {"error": f"field `{name}` must be a whole number"})
    if kind is not int and not isinstance(value, kind):
        raise ApiError(422, {"error": f"field `{name}` has the wrong type"})
    return value


# ---------------------------------------------------------------------------
# Settings: flags win over the KVLAB_* variables kvlab up passes
# ---------------------------------------------------------------------------

def settings(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description="a kvlab node (starter)")
    p.add_argument("--id", default=env("KVLAB_NODE_ID", ""))
    p.add_argument("--host", default=env("KVLAB_HOST", "") or "127.0.0.1")
    p.add_argument("--port", type=int, default=int(env("KVLAB_PORT", "0") or 0))
    p.add_argument("--role", default=env("KVLAB_ROLE", "") or "follower")
    p.add_argument("--incarnation", type=int, default=int(env("KVLAB_INCARNATION", "1") or 1))
    p.add_argument("--registry", default=env("KVLAB_REGISTRY", ""))
    p.add_argument("--data-dir", default=env("KVLAB_DATA_DIR", ""))
    p.add_argument("--fsync", default=env("KVLAB_FSYNC", "") or "always")
    p.add_argument("--heartbeat-interval", type=float,
                   default=float(env("KVLAB_HEARTBEAT_INTERVAL", "2") or 2))
    p.add_argument("--sync-delay", type=float, default=float(env("KVLAB_SYNC_DELAY", "0.5") or 0.5))
    p.add_argument("--async-delay", type=float, default=float(env("KVLAB_ASYNC_DELAY", "5") or 5))
    p.add_argument("--log-retain", type=int, default=int(env("KVLAB_LOG_RETAIN", "100000") or 100000))
    args = p.parse_args(argv)
    if not args.id or not args.port:
        p.error("a node needs an id and a port (KVLAB_NODE_ID and KVLAB_PORT, or --id and --port)")
    args.url = f"http://{args.host}:{args.port}"
    args.secret = os.environ.get("KVLAB_CLUSTER_SECRET", "").strip() or None
    return args


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------

class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.id = cfg.id
        self.incarnation = cfg.incarnation
        self.lock = threading.Lock()            # take it around every use of the state
        self.replicate_lock = threading.Lock()  # one replication request at a time
        # The state (docs/node-protocol.md, "The state a follower keeps").
        self.data = {}           # key -> (value, version, seq that wrote it)
        self.applied_seq = 0     # highest seq applied, with every seq before it
        self.acked_seq = 0       # highest seq we hold and may acknowledge
        self.term = 0            # highest term seen
        self.history = []        # [[term, first seq], ...]
        self.reconciled_term = 0 # term of the last leader whose request succeeded
        self.role = "follower"
        self.stats = {"active_requests": 0, "total_writes": 0, "total_reads": 0,
                      "replications_sent": 0, "replications_received": 0}
        self.hb_paused_until = 0.0
        if cfg.data_dir:
            os.makedirs(cfg.data_dir, exist_ok=True)
            # TODO (level 3): recover the state, acked_seq, term and history
            # from cfg.data_dir before the server starts listening. A half
            # written last record is normal after a crash: drop it. Damage
            # anywhere else: print why and sys.exit(65).

    # -- terms: done for you ------------------------------------------------

    def check_term(self, term):
        """A request of `term` (header or body): adopt a higher term.
        TODO (level 4): refuse a lower one with 409
        {"error": "stale term", "term": <ours>, "given": term, "node_id": ...},
        and step down if we lead."""
        with self.lock:
            if term > self.term:
                self.term = term
                log(f"adopted term {term}")
                # TODO (level 3): the term must survive a restart: save it.

    # -- identity -----------------------------------------------------------

    def health(self, body):
        with self.lock:
            return {"status": "ok", "node_id": self.id, "role": self.role,
                    "incarnation": self.incarnation, "term": self.term}

    def info(self, body):
        with self.lock:
            return {"node_id": self.id, "role": self.role, "status": "running",
                    "data_count": len(self.data)}

    def node_stats(self, body):
        with self.lock:
            out = {"node_id": self.id, "role": self.role, "term": self.term,
                   "term_history": self.history, "data_count": len(self.data),
                   "followers": [], "follower_progress": [],
                   "applied_seq": self.applied_seq, "incarnation": self.incarnation}
            out.update(self.stats)
            return out

    # -- level 1: replication ----------------------------------------------

    def position(self):
        """What every replication answer says: where our log stands."""
        with self.lock:
            last_term = 0
            for term, first in self.history:
                if first <= self.acked_seq:
                    last_term = term
            return {"node_id": self.id, "incarnation": self.incarnation,
                    "acked_seq": self.acked_seq, "term": self.term, "last_term": last_term,
                    "history": self.history, "role": self.role}

    def replicate_state(self, body):
        """GET /replicate: the leader's handshake (and the coordinator's election)."""
        with self.replicate_lock:
            return self.position()

    def replicate_append(self, body):
        """POST /replicate {"term", "to_incarnation", "entries": [...]}."""
        with self.replicate_lock:
            # TODO (level 1): refuse (409) an append addressed to another
            # incarnation (body["to_incarnation"]).
            self.check_term(need(body, "term", int))
            entries = need(body, "entries", list)
            # TODO (level 1): apply the entries that continue the log, in seq
            # order: skip the ones we hold, stop at a gap. Keep the term
            # history up to date. Then move acked_seq.
            # TODO (level 2): an entry at a seq we hold, with another term
            # than ours there: refuse the request, 409 "diverged at seq S".
            # TODO (level 3): write the new entries to disk and fsync them
            # BEFORE acked_seq moves.
            # TODO (level 2): record the reconciled term once the request
            # succeeded (even with no entries).
            log(f"TODO: {len(entries)} entries received, none applied")
            return self.position()

    def replicate_truncate(self, body):
        """POST /replicate/truncate {"term", "to_incarnation", "after_seq"}."""
        # TODO (level 2): drop every entry after after_seq (in memory you may
        # start empty), cut the history, move acked_seq down, answer
        # self.position(). TODO (level 3): durably.
        raise ApiError(501, "TODO (level 2): /replicate/truncate")

    def replicate_snapshot(self, body):
        """POST /replicate/snapshot {"term", "to_incarnation", "seq", "data",
        "history", "chunk", "last"}."""
        # TODO (level 2): collect the chunks in order; on the last one replace
        # the whole state. TODO (level 3): durably.
        raise ApiError(501, "TODO (level 2): /replicate/snapshot")

    # -- level 1: reads -----------------------------------------------------

    def read_key(self, key):
        """GET /data/{key}: {"node_id", "key", "value", "version"} or 404."""
        # TODO (level 1)
        raise ApiError(501, "TODO (level 1): GET /data/{key}")

    def all_data(self, body):
        with self.lock:
            data = {k: {"value": v[0], "version": v[1]} for k, v in self.data.items()}
        return {"node_id": self.id, "data": data, "count": len(data)}

    def batch_read(self, body):
        """POST /batch/read {"keys": [...]}:
        {"node_id", "values": [{"value", "version"} or None, ...], "seqs": [...],
         "term": <the reconciled term>}."""
        keys = need(body, "keys", list)
        # TODO (level 1)
        raise ApiError(501, f"TODO (level 1): POST /batch/read ({len(keys)} keys)")

    # -- level 4: leading ---------------------------------------------------

    def promote(self, body):
        # TODO (level 4): POST /admin/promote {"term"}; then /replication/peers,
        # /batch/write, /replication/wait and one stream per follower.
        raise ApiError(501, "this node cannot lead (level 4)")

    # -- heartbeats and stopping: done for you ------------------------------

    def post_json(self, url, body, timeout=2.0):
        """POST with the secret. Returns the status (an HTTPError is a status too)."""
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json",
                                              "x-kvlab-secret": self.cfg.secret or "",
                                              "x-kvlab-from": self.id})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    def heartbeat_loop(self):
        failing = False
        while True:
            if time.monotonic() >= self.hb_paused_until:
                with self.lock:
                    role = self.role
                body = {"node_id": self.id, "port": self.cfg.port, "url": self.cfg.url,
                        "role": role, "incarnation": self.incarnation}
                try:
                    status = self.post_json(self.cfg.registry + "/heartbeat", body)
                    if status == 409:
                        log("the registry says a newer incarnation replaced us: exiting")
                        os._exit(3)
                    if status != 200 and not failing:
                        log(f"heartbeat answered {status}")
                    failing = status != 200
                except OSError as e:
                    if not failing:
                        log(f"heartbeat failed: {e}; will keep trying")
                    failing = True
            time.sleep(self.cfg.heartbeat_interval)

    def shutdown(self, body):
        def stop():
            time.sleep(0.1)   # let the answer go out first
            if self.cfg.registry:
                try:
                    self.post_json(self.cfg.registry + "/deregister",
                                   {"node_id": self.id, "incarnation": self.incarnation})
                except OSError as e:
                    log(f"could not deregister: {e}")
            log("stopping (POST /admin/shutdown)")
            os._exit(0)
        threading.Thread(target=stop, daemon=True).start()
        return {"status": "stopping"}


ROUTES = {
    ("GET", "/"): Node.info,
    ("GET", "/health"): Node.health,
    ("GET", "/stats"): Node.node_stats,
    ("GET", "/data"): Node.all_data,
    ("GET", "/replicate"): Node.replicate_state,
    ("POST", "/replicate"): Node.replicate_append,
    ("POST", "/replicate/truncate"): Node.replicate_truncate,
    ("POST", "/replicate/snapshot"): Node.replicate_snapshot,
    ("POST", "/batch/read"): Node.batch_read,
    ("POST", "/admin/promote"): Node.promote,
    ("POST", "/admin/shutdown"): Node.shutdown,
}


# ---------------------------------------------------------------------------
# HTTP plumbing: done for you
# ---------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: every answer has a Content-Length
    timeout = 10                    # close a connection idle for 10 s

    def log_message(self, fmt, *args):
        pass                        # no line per request

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def has_secret(self):
        secret, given = self.server.node.cfg.secret, self.headers.get("x-kvlab-secret")
        return bool(secret and given and hmac.compare_digest(secret.encode(), given.encode()))

    def handle_any(self, method):
        node = self.server.node
        with node.lock:
            node.stats["active_requests"] += 1
        try:
            status, body = 200, self.route(method, node)
        except ApiError as e:
            status, body = e.status, {"detail": e.detail}
        except Exception as e:     # a bug in an endpoint: answer 500, keep serving
            log(f"{method} {self.path} failed: {type(e).__name__}: {e}")
            status, body = 500, {"detail": f"internal error: {type(e).__name__}: {e}"}
        finally:
            with node.lock:
                node.stats["active_requests"] -= 1
        self.reply(status, body)

    def route(self, method, node):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        length = int(self.headers.get("content-length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(413, "the request body is too large")
        raw = self.rfile.read(length) if length else b""
        # The cluster's own routes need the secret (docs/node-protocol.md,
        # "Authentication").
        if path.startswith(INTERNAL_PREFIXES) and not self.has_secret():
            raise ApiError(401, {"error": "unauthorized",
                                 "reason": "internal route: missing or wrong X-Kvlab-Secret"})
        # Terms only from the cluster (docs/node-protocol.md, "Terms").
        term = self.headers.get("x-kvlab-term")
        if term is not None and self.has_secret():
            if not term.isdigit():
                raise ApiError(400, "X-Kvlab-Term must be a whole number")
            node.check_term(int(term))
        if method == "GET" and path.startswith("/data/"):
            return node.read_key(path[len("/data/"):])
        endpoint = ROUTES.get((method, path))
        if endpoint is None:
            raise ApiError(404, f"no route {method} {path}")
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise ApiError(400, f"the body is not valid JSON: {e}")
        return endpoint(node, body)

    def reply(self, status, body):
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
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True   # the caller went away


def main():
    cfg = settings()
    node = Node(cfg)
    server = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    server.daemon_threads = True
    server.node = node
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if not cfg.secret:
        log("no KVLAB_CLUSTER_SECRET: every internal route will answer 401")
    log(f"{node.id} (incarnation {node.incarnation}) listening on {cfg.host}:{cfg.port}")
    if cfg.registry:
        threading.Thread(target=node.heartbeat_loop, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
