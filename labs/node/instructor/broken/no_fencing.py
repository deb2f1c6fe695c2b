#!/usr/bin/env python3
"""BROKEN NODE: forgets to fence a stale term (instructors only).

The bug (level 4): the node adopts a higher term when it hears one, but it
never refuses a request from a lower term. A deposed leader (paused past
the registry's timeout, or cut off, while another node was promoted) keeps
streaming its old term's entries to followers and taking writes: followers
built from this node accept them, and this node, as a deposed leader, never
learns from a 409 that it must step down and keeps answering writes
in its old term.

What the grader should say (level 4): FAIL on `L4-stale-term-refused`,
with a message like

    the node heard term 3 (GET /replicate with x-kvlab-term: 3), then got
    POST /replicate from term 2: it answered 200 and applied seq 7. A node
    refuses every request of a term older than the highest it has seen:
    409 {"detail": {"error": "stale term", "term": 3, ...}}.

Levels 1 to 3 pass. In a real cluster (`kvlab check` at level 4 with a
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
