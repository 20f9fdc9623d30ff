"""The packed values smsgw stores, one codec each (round trips are property-tested in
``tests/test_codecs.py``).

Keys are built in :mod:`workers.storage.schema`; what some values hold is packed to save bytes
at scale, and each packing is read and written here only:

- a recipient's report in ``recipients_key``: ``"<state letter>|<operator code>|<epoch s>"``
  (:class:`ReportValue`; ``workers.storage.scripts.MERGE_REPORTS`` writes the same form);
- a recipient item on a message or chunk: a mobile, or a 点点通 group ``"mobile,v0,v1"``
  (``workers.text.ddt_group`` builds one, ``workers.text.mobile_of`` reads its mobile);
- a watch ref: ``"m:<mid>"`` or ``"c:<mid>:<n>"`` (``schema.message_ref``, ``chunk_ref``,
  ``parse_ref``);
- a pool entry ``"<mid>|<item>"`` belongs to the coalescing protocol (``workers.coalesce``);
  a folded message to :meth:`workers.storage.schema.Message.fold`; a linkid's 24 bytes to
  ``workers.chunks``.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.storage.schema import ReportState


@dataclass(frozen=True)
class ReportValue:
    """A recipient's final report as stored: its state, the operator's code (``DELIVRD``,
    ``UNDELIV``, ``MK:0001``, … empty for ``unknown``) and when (epoch seconds, as text)."""

    state: ReportState
    code: str
    at: str

    def encode(self) -> str:
        return f"{self.state}|{self.code}|{self.at}"

    @classmethod
    def decode(cls, raw: str | bytes) -> ReportValue:
        text = raw.decode() if isinstance(raw, bytes) else raw
        state, rest = text[:1], text[2:]
        code, _, at = rest.rpartition("|")  # a code may hold '|'; the time never does
        return cls(ReportState(state), code, at)
