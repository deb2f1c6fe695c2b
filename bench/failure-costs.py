#!/usr/bin/env python3
"""failure-costs.py: what the death of each kvlab process costs, measured.

For each scenario it starts a cluster (1 leader + 3 followers, W=2, R=2, no
teaching delays, durable), runs a probe that writes one key after another
through the gateway(s) (a new write as soon as the last one answered, 2 s
timeout, the next gateway of the list when one does not answer), SIGKILLs
one process, brings back what a supervisor would bring back, and reports the
outage the probe saw: the time from the kill to the first acknowledged write
after a failed one (0 if no write failed). Then it checks that every write
the probe saw acknowledged is readable, and stops everything it started.

Usage:  bench/failure-costs.py [MODE ...]     MODE: embedded, components, ha
        (default: all three; `ha` needs `etcd` on the PATH)
Knobs:  KVLAB_BIN=path (default target/release/kvlab), PORT_BASE=26000,
        RUNS=3 (runs of each scenario; the table gives each run's figure)

Stdlib only: it is a script to read, not a framework.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

KVLAB = os.environ.get("KVLAB_BIN", "target/release/kvlab")
PORT_BASE = int(os.environ.get("PORT_BASE", "26000"))
RUNS = int(os.environ.get("RUNS", "3"))
SHAPE = ["--followers", "3", "-W", "2", "-R", "2", "--no-delay"]


def http(method, url, body=None, timeout=2.0):
    """(status, json or None); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (OSError, ValueError):
        return 0, None


def wait_until(what, check, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"failure-costs: gave up waiting for {what}")


class Probe(threading.Thread):
    """Writes probe-0, probe-1, ... back to back; records (time, ok, key, value)."""

    def __init__(self, gateways, prefix):
        super().__init__(daemon=True)
        self.gateways = gateways
        self.prefix = prefix
        self.records = []
        self.stop = threading.Event()

    def run(self):
        n, g = 0, 0
        while not self.stop.is_set():
            key, value = f"{self.prefix}-{n}", f"v{n}"
            status, _ = http("POST", f"{self.gateways[g]}/write", {"key": key, "value": value})
            if status == 0 and len(self.gateways) > 1:
                g = (g + 1) % len(self.gateways)  # that gateway did not answer
            self.records.append((time.monotonic(), status == 200, key, value))
            n += 1
            if status != 200:
                time.sleep(0.02)

    def outage_after(self, t0):
        """Seconds from t0 to the first ok after a failure (0: none failed)."""
        failed = False
        for t, ok, _, _ in self.records:
            if t < t0:
                continue
            if not ok:
                failed = True
            elif failed:
                return t - t0
        return None if failed else 0.0

    def acked(self):
        return [(k, v) for _, ok, k, v in self.records if ok]


class Procs:
    """Everything a scenario started, stopped at its end (the whole group)."""

    def __init__(self):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="kvlab-failure-costs-")

    def start(self, *args):
        log = open(os.path.join(self.dir, f"{len(self.procs)}-{args[0]}.log"), "w")
        p = subprocess.Popen(
            [KVLAB, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # Components started one by one share the user's secret file in
            # $TMPDIR (see src/auth.rs): this run's own.
            env={**os.environ, "TMPDIR": self.dir},
        )
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if os.environ.get("KEEP"):
            print(f"failure-costs: kept {self.dir}")
            return
        # Nodes the coordinator started live in its group; a restarted
        # coordinator adopted them without being their parent.
        subprocess.run(["pkill", "-KILL", "-f", f"kvlab.*{self.dir}"], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def status(where):
    """A coordinator's /status, or (a URL ending in `status`) that one."""
    url = where if where.endswith("status") else f"{where}/status"
    return http("GET", url)[1] or {}


def ready(coordinator):
    s = status(coordinator)
    return s.get("quorum", {}).get("can_write") and s.get("quorum", {}).get("alive_followers") == 3


def verify(probe, gateway):
    lost = [k for k, v in probe.acked() if (http("GET", f"{gateway}/read/{k}")[1] or {}).get("value") != v]
    return len(probe.acked()), lost


def measure(name, gateways, kill, settle=3.0):
    """Runs the probe, calls kill() after `settle` s, returns the outage."""
    probe = Probe(gateways, name.replace(" ", "-"))
    probe.start()
    time.sleep(settle)
    t0 = time.monotonic()
    kill()
    deadline = t0 + 40
    while time.monotonic() < deadline:
        recent = [ok for t, ok, _, _ in probe.records if t > t0]
        if len(recent) > 20 and all(recent[-20:]):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    probe.stop.set()
    probe.join()
    out = probe.outage_after(t0)
    acked, lost = verify(probe, gateways[-1])
    return out, acked, lost


def pid_of(coordinator, node):
    s = status(coordinator)
    nodes = [s.get("leader") or {}] + s.get("followers", [])
    if node == "leader":
        return (s.get("leader") or {}).get("pid")
    return next(n["pid"] for n in nodes if n.get("node_id") == node)


def kill(pid):
    os.kill(pid, signal.SIGKILL)


def embedded(run):
    """kvlab up: gateway, registry and coordinator in one process."""
    results = []
    for victim in os.environ.get("VICTIMS", "follower-1,leader,kvlab up").split(","):
        procs = Procs()
        base = PORT_BASE + 100 * run
        up = ["up", *SHAPE, "--coordinator-port", str(base), "--registry-port", str(base + 1),
              "--node-base-port", str(base + 2), "--gateway-port", str(base + 20),
              "--data-dir", os.path.join(procs.dir, "data")]
        coord, gw = f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 20}"
        try:
            p = procs.start(*up)
            wait_until("the cluster", lambda: ready(coord))
            if victim == "kvlab up":
                def hit():
                    os.kill(p.pid, signal.SIGKILL)  # its nodes live on
                    p.wait()  # its ports are free once it is reaped
                    procs.start(*up)  # started again at once, as a supervisor would
            else:
                pid = pid_of(coord, victim)
                def hit():
                    kill(pid)
            results.append((victim, measure(f"e{run}-{victim}", [gw], hit)))
        finally:
            procs.close()
    return results


def components(run):
    """kvlab registry, kvlab coordinator and kvlab gateway as separate processes."""
    results = []
    for victim in ["registry", "coordinator", "gateway"]:
        procs = Procs()
        base = PORT_BASE + 1000 + 100 * run
        coord, reg, gw = (f"http://127.0.0.1:{p}" for p in (base, base + 1, base + 20))
        reg_args = ["registry", "--port", str(base + 1), "--coordinator", coord]
        coord_args = ["coordinator", "--port", str(base), "--registry", reg, *SHAPE,
                      "--node-base-port", str(base + 2), "--data-dir", os.path.join(procs.dir, "data")]
        gw_args = ["gateway", "--port", str(base + 20), "--coordinator", coord]
        try:
            started = {"registry": procs.start(*reg_args), "coordinator": procs.start(*coord_args),
                       "gateway": procs.start(*gw_args)}
            wait_until("the cluster", lambda: ready(coord))
            again = {"registry": reg_args, "coordinator": coord_args, "gateway": gw_args}[victim]
            def hit():
                os.kill(started[victim].pid, signal.SIGKILL)
                started[victim].wait()
                procs.start(*again)
            results.append((victim, measure(f"c{run}-{victim}", [gw], hit)))
        finally:
            procs.close()
    return results


def ha(run):
    """kvlab up --ha: etcd, three coordinators, two gateways."""
    if not shutil.which("etcd"):
        print("failure-costs: `etcd` is not on the PATH (apt install etcd-server): skipping ha")
        return []
    results = []
    for victim in ["active coordinator", "gateway", "etcd member", "leader"]:
        procs = Procs()
        base = PORT_BASE + 2000 + 200 * run
        # The other coordinators listen at +10 and +20, etcd from +30 to +35,
        # the second gateway one below the first (see src/up/ha.rs).
        up = ["up", "--ha", *SHAPE, "--coordinator-port", str(base), "--registry-port", str(base + 9),
              "--node-base-port", str(base + 3), "--gateway-port", str(base + 2),
              "--data-dir", os.path.join(procs.dir, "data")]
        gateways = [f"http://127.0.0.1:{base + 2}", f"http://127.0.0.1:{base + 1}"]
        # Whoever is in charge answers through a gateway.
        coord = f"{gateways[0]}/cluster-status"
        try:
            procs.start(*up)
            wait_until("the cluster", lambda: ready(coord), timeout=90)
            cp = status(coord)["control_plane"]
            if victim == "active coordinator":
                pid = cp["active"]["pid"]
            elif victim == "gateway":
                pid = int(subprocess.check_output(
                    ["pgrep", "-f", f"kvlab gateway .*--port {base + 2}"]).split()[0])
            elif victim == "etcd member":
                pid = int(subprocess.check_output(["pgrep", "-f", f"etcd .*{procs.dir}"]).split()[0])
            else:
                pid = pid_of(coord, "leader")
            results.append((victim, measure(f"h{run}-{victim}", gateways, lambda: kill(pid))))
        finally:
            procs.close()
    return results


def main():
    modes = sys.argv[1:] or ["embedded", "components", "ha"]
    table = {}
    for run in range(RUNS):
        for mode in modes:
            for victim, (out, acked, lost) in {"embedded": embedded, "components": components, "ha": ha}[mode](run):
                table.setdefault((mode, victim), []).append((out, acked, lost))
                shown = "no write failed" if out == 0 else ("never recovered" if out is None else f"{out:.2f} s")
                print(f"{mode:10} {victim:20} run {run + 1}: outage {shown}; "
                      f"{acked} writes acknowledged, {len(lost)} lost", flush=True)
    print("\n| mode | process killed | outage per run | acknowledged writes lost |")
    print("|---|---|---|---|")
    for (mode, victim), rows in table.items():
        outs = ", ".join("none" if o == 0 else ("never" if o is None else f"{o:.1f} s") for o, _, _ in rows)
        print(f"| {mode} | {victim} | {outs} | {sum(len(l) for _, _, l in rows)} of {sum(a for _, a, _ in rows)} |")


if __name__ == "__main__":
    main()
