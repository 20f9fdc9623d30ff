"""What smsgw does with each provider outcome: one table, read top to bottom.

The send job asks :func:`classify` and acts on the answer; nothing else decides retries, and no
decision is taken by matching exception text. Holds are per account and live in Redis, so every
worker on every host stops at once.

The one promise the table keeps above all: a linkid that may have reached the provider is never
submitted again (the provider's rule: 不得重复). Only a failure before the request left (connection
refused, DNS, TLS, a connect timeout) is retried under the same linkid; an HTTP error status, an
unparseable answer, a reset after sending and a read timeout may each hide an accepted
submission (a 502 from a proxy says nothing about the backend), so they are ambiguous, and an
unknown error class is treated as ambiguous too.
"""

from __future__ import annotations

import random
from enum import Enum

from workers import provider as p


class Action(Enum):
    SUBMITTED = "submitted"  # chunk done
    RETRY = "retry"  # nothing reached the provider: backoff with jitter, same linkid, within the budget
    AMBIGUOUS = "ambiguous"  # may have been accepted: never the same linkid again (jobs.handle_ambiguous)
    HOLD = "hold"  # hold the account; the chunk waits, burning no attempt
    SPLIT = "split"  # halve the chunk under new linkids, lower the account's chunk size
    FAIL = "fail"  # permanent: a defect of validation, logged as such


#: provider outcome → action. Looked up along the exception's class hierarchy.
POLICY: dict[type[p.ProviderError], Action] = {
    p.ConnectError: Action.RETRY,
    p.HTTPStatusError: Action.AMBIGUOUS,
    p.UnknownAnswer: Action.AMBIGUOUS,
    p.TransportError: Action.AMBIGUOUS,
    p.ReadTimeout: Action.AMBIGUOUS,
    p.InsufficientBalance: Action.HOLD,
    p.AccountFrozen: Action.HOLD,
    p.BadCredentials: Action.HOLD,
    p.NotAllowed: Action.HOLD,
    p.TooManyRecipients: Action.SPLIT,
    p.EmptyMessage: Action.FAIL,
    p.SensitiveWords: Action.FAIL,
    p.TextTooLong: Action.FAIL,
}

HOLD_REASONS = {
    2: "insufficient balance",
    8: "account frozen",
    1: "wrong uid or password",
    4: "account not allowed to send",
}


def classify(error: p.ProviderError | None) -> Action:
    if error is None:
        return Action.SUBMITTED
    for cls in type(error).__mro__:
        if cls in POLICY:
            return POLICY[cls]  # type: ignore[index]
    return Action.AMBIGUOUS


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before attempt ``attempt + 1``: exponential, capped, with full jitter on the
    upper half so a fleet of workers does not retry in step."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return ceiling * (0.5 + (rng or random).random() / 2)
