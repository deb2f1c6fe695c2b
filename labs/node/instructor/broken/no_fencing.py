#!/usr/bin/env python3
"""BROKEN NODE: forgets to fence a stale term (instructors only).

The bug (graded from level 1, the lesson of level 4): the node adopts a higher term when it hears one, but it
never refuses a request from a lower term. A deposed leader (paused past
the registry's timeout, or cut off, while another node was promoted) keeps
streaming its old term's entries to followers and taking writes: followers
built from this node accept them, and this node, as a deposed leader, never
learns from a 409 that it must step down and keeps answering writes
in its old term.

What the grader says (kvlab grade-node, checked): FAIL on `fencing`
(level 1), with

    sent POST /replicate of term 1 after a leader of term 2 spoke
    got 200 {"acked_seq":1, ... "term":2}
    expected 409 with {"detail": {"error": "stale term", "term": 2, ...}}:
    a deposed leader's entries are refused, and the refusal tells it the
    newer term

and at level 3 also on `recovers_term`. Every other test passes. In a real cluster (`kvlab check` at level 4 with a
leader paused past the timeout) the checker can report lost or phantom
writes.

Everything else is the reference solution (../node.py).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import node as reference  # noqa: E402


class NoFencingNode(reference.Node):
    def check_term(self, term):
        # BUG: a higher term is adopted, a lower one is let through.
        with self.lock:
            current = self.term
        if term > current:
            self.adopt_term(term)


if __name__ == "__main__":
    reference.main(node_class=NoFencingNode)
