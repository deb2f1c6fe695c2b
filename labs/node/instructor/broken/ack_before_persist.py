#!/usr/bin/env python3
"""BROKEN NODE: acknowledges before persisting (instructors only).

The bug (level 3): the node keeps new entries in a memory buffer and writes
them to its log file in the background, every half second ("write-behind").
It applies them and answers the leader at once, so it acknowledges entries
that are not on disk yet. A crash in that half second loses entries the
leader already counted as held, and that may have completed a client's
write (W sync acks).

(Why a buffer rather than a missing fsync? The grader crashes nodes with
SIGKILL, which loses what a process holds in memory but not what it has
already handed to the kernel with write(): only a power cut loses that. A
missing fsync is the same bug, but only a power cut shows it.)

What the grader says (kvlab grade-node, checked): FAIL on
`survives_crash`, with

    round 1: sent entries 1..=1, got acked_seq 1, then SIGKILLed the node
    at once and started it again (same KVLAB_DATA_DIR)
    GET /replicate after a SIGKILL and a restart got 200 {"acked_seq":0, ...}
    expected acked_seq >= 1: an acknowledged entry must be on disk before
    the answer goes out (write it, flush, fsync, then answer)

Levels 1 and 2 pass: without a data directory the node keeps nothing on
disk anyway. In a real cluster (`kvlab check` with crashes at level 3) the
checker reports lost writes after a follower crash and a failover.

Everything else is the reference solution (../node.py).
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import node as reference  # noqa: E402


class WriteBehindDisk(reference.Disk):
    def write(self, entries):
        # BUG: the entries only reach a buffer here; the caller then
        # "syncs" (nothing is written yet) and acknowledges them.
        if not entries:
            return
        with self.fsync_lock:
            if not hasattr(self, "buffer"):
                self.buffer = []
                threading.Thread(target=self.write_behind, daemon=True).start()
            self.buffer.extend(entries)

    def write_behind(self):
        while True:
            time.sleep(0.5)
            with self.fsync_lock:
                pending, self.buffer = self.buffer, []
                if pending and self.fd is not None:
                    reference.Disk.write(self, pending)
                    os.fsync(self.fd)


class AckBeforePersistNode(reference.Node):
    disk_class = WriteBehindDisk


if __name__ == "__main__":
    reference.main(node_class=AckBeforePersistNode)
