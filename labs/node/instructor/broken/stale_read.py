#!/usr/bin/env python3
"""BROKEN NODE: serves reads it cannot vouch for (instructors only).

The bug (level 2): every read answer carries a term (`term` in
`POST /batch/read`), and the coordinator counts an answer only if that term
is the current one. It must be the term of the last leader that
*reconciled* the follower's log (a handshake followed by an append,
a truncation or a snapshot that succeeded), because only then is the
follower's log known to be a prefix of that leader's. This node puts the
highest term it has *heard of* there instead. It hears the new term from the
coordinator's election or the new leader's handshake (`GET /replicate` with
`x-kvlab-term`), before its log was checked: a follower that came back
holding entries the new leader is about to cut (a deposed leader's
unacknowledged tail, say) serves them as if they were current.

What the grader says (kvlab grade-node, checked): FAIL on
`vouches_for_reads` (level 2), with

    sent GET /replicate of term 2 (a new leader's handshake), then POST
    /batch/read
    got 200 {"node_id":"follower-1","seqs":[1],"term":2,...}
    expected "term": 1: the leader of term 2 has not yet confirmed (with an
    append, a truncation or a snapshot) that your log is a prefix of its
    own, so your reads are only vouched for by term 1's leader. Reporting
    the newest term you heard of lets the coordinator count a read the new
    leader may take back

Level 1 passes. In a real cluster (level 4 faults, a leader paused past the
timeout and back), the checker can report a stale or phantom read.

Everything else is the reference solution (../node.py).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import node as reference  # noqa: E402


class StaleReadNode(reference.Node):
    def read_term(self):
        # BUG: the highest term heard of, not the term that reconciled us.
        return self.term


if __name__ == "__main__":
    reference.main(node_class=StaleReadNode)
