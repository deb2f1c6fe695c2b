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

What the grader should say (level 2): FAIL on
`L2-not-reconciled-before-append`, with a message like

    the node holds seqs 1-6, and 5-6 were written in term 1 by a leader that
    was then deposed. The leader of term 2 (whose log ends at seq 4)
    sent the handshake GET /replicate with x-kvlab-term: 2, and before it
    sent anything else POST /batch/read answered `term: 2` with the value of
    seq 6. A follower may claim term 2 only after the leader of term 2 has
    reconciled its log (the empty append or the truncation that follows the
    handshake); until then it must answer the term of the last leader that
    did (here 1).

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
