#!/usr/bin/env python3
"""BROKEN NODE: applies entries out of order (instructors only).

The bug (level 1): the follower applies every entry it is sent, without
checking that the entry is the next one (seq == applied_seq + 1). After a
gap it applies what comes after the gap and acknowledges the highest seq it
saw, although it never held the entries in between; a retransmitted older
entry overwrites the newer value of its key.

What the grader says (kvlab grade-node, checked): FAIL on `refuses_gaps`,
with

    sent POST /replicate with the entry at seq 4 while the node holds 1..2
    got 200 {"acked_seq":4, ...}
    expected acked_seq 2 (or a 4xx refusal): seq 3 is missing, so the entry
    at seq 4 cannot be applied yet. Apply an entry only if its seq is
    exactly one more than the last one you hold

and on `ignores_duplicates` (a resent seq 2 turned key `a` back from
version 3 to version 2). selftest.py also fails it on `refuses_diverged`
(an entry at a seq it holds with another term is taken, not refused). In a real cluster the symptom is rarer: a leader
only resends after a failed request, and reads can then go back a version.

Everything else is the reference solution (../node.py).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import node as reference  # noqa: E402


class OutOfOrderNode(reference.Node):
    def apply_entries(self, entries):
        fresh = []
        for e in entries:
            # BUG: no "is this the next entry?" check: gaps and old entries
            # are applied as they come, and the highest seq seen is acked.
            self.data[e["key"]] = [e["value"], e["version"], e["seq"]]
            self.applied = max(self.applied, e["seq"])
            reference.record_term(self.history, e["seq"], e["term"])
            self._push(e, 0.0)
            fresh.append(e)
        return fresh


if __name__ == "__main__":
    reference.main(node_class=OutOfOrderNode)
