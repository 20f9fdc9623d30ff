"""smsgw's RQ queues, in the order workers take them.

A worker listens to all three in this order, so a verification code (``high``) is never stuck
behind a million-recipient campaign (``bulk``). Callbacks to client services get their own queue
(delivery-report issue) so a slow receiver never delays a send.
"""

from __future__ import annotations

PRIORITIES = ("high", "normal", "bulk")
QUEUE_NAMES = {p: f"smsgw-{p}" for p in PRIORITIES}
CALLBACK_QUEUE = "smsgw-callbacks"
#: Every queue smsgw enqueues to, in the order a worker serves them: callbacks to client services
#: last, so they never delay a send.
WORKER_QUEUES = (*(QUEUE_NAMES[p] for p in PRIORITIES), CALLBACK_QUEUE)
