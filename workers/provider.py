"""The client of the 通用短信平台 HTTP API (see docs/provider.md), one method per operation.

GB2312 on the wire both ways; every answer is parsed by its leading code and becomes either a
typed result or one exception of this family::

    ProviderError                    code, text, ambiguous
    ├── ProviderRejected             the provider answered a known non-zero code
    │   ├── BadCredentials           1  wrong uid or password
    │   ├── InsufficientBalance      2
    │   ├── TooManyRecipients        3  more mobiles or groups than one submission takes
    │   ├── NotAllowed               4  this uid may not send
    │   ├── EmptyMessage             5  empty mobile or text
    │   ├── SensitiveWords           6  含有敏感字 (undocumented, seen in real clients)
    │   ├── TextTooLong              7  .max_chars: the channel's XX when the text gives it
    │   └── AccountFrozen            8
    ├── UnknownAnswer                an answer of no known shape; .text is the raw body
    └── TransportError               nothing usable came back
        ├── ConnectError             the request never reached the provider: safe to retry
        ├── ReadTimeout              sent, no answer in time: ambiguous=True (it may have
        │                            been accepted)
        └── HTTPStatusError          HTTP status >= 400; .status

Secrets: the password is MD5'ed once at construction, and neither it nor its MD5 (itself the
credential) appears in a log line, an exception or a ``repr``. ``requests`` puts the whole URL
(with ``pwd=``) into its exception text, and RQ stores a failed job's traceback in Redis, where
the dashboard shows it; so our exceptions are built from scrubbed parts and raised *outside* the
``except`` block, leaving no ``__cause__`` or ``__context__`` that would print the URL.

There is no automatic transport retry: a retried POST is a silent double send. Every
resubmission goes through the job layer, which knows about linkids.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import ClassVar
from urllib.parse import quote, unquote_plus, unquote_to_bytes, urlencode

import requests

from workers.settings import AccountSettings

ENCODING = "gb2312"


class ProviderError(Exception):
    code: int | None = None
    ambiguous: bool = False

    def __init__(self, text: str, *, code: int | None = None, endpoint: str = "") -> None:
        super().__init__(f"{endpoint}: {text}" if endpoint else text)
        self.text = text
        self.endpoint = endpoint
        if code is not None:
            self.code = code


class ProviderRejected(ProviderError):
    pass


class BadCredentials(ProviderRejected):
    code = 1


class InsufficientBalance(ProviderRejected):
    code = 2


class TooManyRecipients(ProviderRejected):
    code = 3


class NotAllowed(ProviderRejected):
    code = 4


class EmptyMessage(ProviderRejected):
    code = 5


class SensitiveWords(ProviderRejected):
    code = 6


class TextTooLong(ProviderRejected):
    code = 7

    def __init__(self, text: str, *, code: int | None = None, endpoint: str = "") -> None:
        super().__init__(text, code=code, endpoint=endpoint)
        match = re.search(r"(\d+)\s*个字", text)
        self.max_chars: int | None = int(match.group(1)) if match else None


class AccountFrozen(ProviderRejected):
    code = 8


class UnknownAnswer(ProviderError):
    pass


class TransportError(ProviderError):
    pass


class ConnectError(TransportError):
    pass


class ReadTimeout(TransportError):
    ambiguous = True


class HTTPStatusError(TransportError):
    def __init__(self, text: str, *, status: int, endpoint: str = "") -> None:
        super().__init__(text, endpoint=endpoint)
        self.status = status


REJECTIONS: dict[int, type[ProviderRejected]] = {
    cls.code: cls
    for cls in (
        BadCredentials,
        InsufficientBalance,
        TooManyRecipients,
        NotAllowed,
        EmptyMessage,
        SensitiveWords,
        TextTooLong,
        AccountFrozen,
    )
}


@dataclass(frozen=True)
class SendResult:
    """The provider accepted the submission (code 0)."""

    code: int
    text: str
    linkid: str


@dataclass(frozen=True)
class Report:
    """A status report: ``status`` is the operator's code, ``DELIVRD`` when delivered."""

    mobile: str
    time: str
    linkid: str
    status: str
    subcode: str

    @property
    def delivered(self) -> bool:
        return self.status == "DELIVRD"


@dataclass(frozen=True)
class PulledReply:
    """A reply (MO) from a mobile as the provider hands it over (stored as ``schema.Reply``);
    ``linkid`` ties it to a submission when it carries one."""

    mobile: str
    time: str
    linkid: str
    content: str
    subcode: str


class ParseError(ValueError):
    """A pulled line that does not have the provider's shape; kept with the raw line."""

    def __init__(self, line: str, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


_CODE_ANSWER = re.compile(r"^\s*(\d+)\s*(.*?)\s*$", re.S)
_BALANCE = re.compile(r"剩余资费\s*=\s*(-?[\d.]+)")


def parse_report_line(line: str) -> Report:
    """``mobile/date/linkid/status/subcode``."""
    parts = line.split("/")
    if len(parts) != 5 or not parts[0].strip():
        raise ParseError(line, f"a report has 5 fields joined by '/', this line has {len(parts)}")
    mobile, time, linkid, status, subcode = (p.strip() for p in parts)
    if not status:
        raise ParseError(line, "a report without a status")
    return Report(mobile, time, linkid, status, subcode)


def parse_reply_line(line: str, *, urlencoded: bool = True) -> PulledReply:
    """``mobile/date/linkid/content/subcode``; the content may itself hold ``/``.

    The three leading fields and the trailing one never hold ``/``, so the content is whatever
    lies between them. ``reve_urlencode`` encodes it as GB2312 bytes.
    """
    head = line.split("/", 3)
    if len(head) != 4 or "/" not in head[3] or not head[0].strip():
        raise ParseError(line, "a reply has 5 fields joined by '/'")
    content, subcode = head[3].rsplit("/", 1)
    if urlencoded:
        try:
            content = unquote_plus(content, encoding=ENCODING, errors="strict")
        except UnicodeDecodeError:
            raise ParseError(line, "the content is not URL-encoded GB2312") from None
    return PulledReply(head[0].strip(), head[1].strip(), head[2].strip(), content, subcode.strip())


class ProviderClient:
    """One provider account. Thread-safe as ``requests.Session`` is for plain requests.

    ``variant`` picks the send endpoint: ``md5`` (``post_send_md5``, the clear password never
    travels) or ``urldecode`` (``post_send_urldecode``: ``uid`` and ``msg`` are URL-decoded once
    more by the server, so we encode them once before the form encoding).
    """

    MAX_MOBILES: ClassVar[int] = 1000

    def __init__(
        self,
        base_url: str,
        uid: str,
        password: str,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        variant: str = "md5",
        charset: str = ENCODING,
        session: requests.Session | None = None,
    ) -> None:
        if variant not in ("md5", "urldecode"):
            raise ValueError(f"unknown send variant {variant!r}")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.uid = uid
        self.variant = variant
        self.charset = charset
        self.timeout = (connect_timeout, read_timeout)
        self._password = password
        self._pwd_md5 = hashlib.md5(password.encode(charset)).hexdigest()
        self._session = session or requests.Session()

    @classmethod
    def for_account(cls, account: AccountSettings, session: requests.Session | None = None) -> ProviderClient:
        return cls(
            account.url,
            account.uid,
            account.password.reveal(),
            connect_timeout=account.connect_timeout,
            read_timeout=account.read_timeout,
            variant=account.variant,
            charset=account.charset,
            session=session,
        )

    def __repr__(self) -> str:
        return f"ProviderClient(base_url={self.base_url!r}, uid={self.uid!r}, variant={self.variant!r})"

    @property
    def send_endpoint(self) -> str:
        return "post_send_md5" if self.variant == "md5" else "post_send_urldecode"

    # -- operations ---------------------------------------------------------------------------

    def send(self, mobiles: list[str], text: str, *, linkid: str, dtime: str | None = None) -> SendResult:
        """Submit one text to up to 1000 mobiles under ``linkid``."""
        if self.variant == "md5":
            endpoint = "post_send_md5"
            form = {"uid": self.uid, "pwd": self._pwd_md5, "msg": text}
        else:
            endpoint = "post_send_urldecode"
            form = {
                "uid": _pre_encode(self.uid, self.charset),
                "pwd": self._password,
                "msg": _pre_encode(text, self.charset),
            }
        form.update({"mobile": ";".join(mobiles), "dtime": dtime or "", "linkid": linkid})
        answer = self._call("POST", endpoint, form)
        return self._send_result(endpoint, answer, linkid)

    def send_personalized(
        self, template: str, groups: list[str], *, linkid: str, dtime: str | None = None
    ) -> SendResult:
        """点点通: ``template`` uses ``{value0}`` …; each group is ``mobile,v0,v1`` (see
        :func:`workers.text.ddt_group`). ``msg`` and ``params`` are URL-decoded twice by the
        server, so they are encoded once here before the form encoding."""
        form = {
            "uid": self.uid,
            "pwd": self._pwd_md5,
            "msg": _pre_encode(template, self.charset),
            "params": _pre_encode(";".join(groups), self.charset),
            "dtime": dtime or "",
            "linkid": linkid,
        }
        answer = self._call("POST", "post_send_ddt", form)
        return self._send_result("post_send_ddt", answer, linkid)

    def balance(self) -> Decimal:
        answer = self._call("GET", "user_info", self._clear_auth())
        match = _BALANCE.search(answer)
        if match:
            try:
                return Decimal(match.group(1))
            except InvalidOperation:
                pass
        raise self._code_error("user_info", answer)

    def sensitive_words(self, text: str) -> list[str]:
        answer = self._call("GET", "mgz", {**self._clear_auth(), "msg": text}).strip()
        if answer.startswith("不含敏感字"):
            return []
        if answer.startswith("敏感字"):
            words = answer.split(":", 1)[1] if ":" in answer else answer.split("：", 1)[-1]
            return [w for w in words.split(";") if w]
        raise self._code_error("mgz", answer)

    def pull_reports(self) -> list[Report]:
        """Up to 20 status reports; each is returned once by the provider and never again."""
        raw = self.pull_raw("report")
        return [parse_report_line(line) for line in raw.splitlines() if line.strip()]

    def pull_replies(self) -> list[PulledReply]:
        """Up to 20 replies (``reve_urlencode``: the only safe way, a reply may hold ``/``)."""
        raw = self.pull_raw("reve_urlencode")
        return [parse_reply_line(line) for line in raw.splitlines() if line.strip()]

    def pull_raw(self, endpoint: str) -> str:
        """The raw lines of a pull, ``""`` when there is nothing (150 / 160).

        Callers that must not lose items store this text before parsing it.
        """
        if endpoint not in ("report", "reve", "reve_urlencode"):
            raise ValueError(f"{endpoint!r} is not a pull endpoint")
        answer = self._call("GET", endpoint, self._clear_auth())
        stripped = answer.strip()
        if stripped in ("150", "160"):
            return ""
        if "/" not in stripped:
            raise self._code_error(endpoint, answer)
        return answer

    # -- the wire -----------------------------------------------------------------------------

    def _clear_auth(self) -> dict[str, str]:
        # The GET endpoints know only the clear password; it travels in the query string.
        return {"uid": self.uid, "pwd": self._password}

    def _call(self, method: str, endpoint: str, params: dict[str, str]) -> str:
        """Send, apply the timeouts, map failures to our exceptions, decode GB2312."""
        url = self.base_url + endpoint + "/"
        body = urlencode(params, encoding=self.charset)
        failure: ProviderError | None = None
        try:
            if method == "GET":
                response = self._session.get(url + "?" + body, timeout=self.timeout)
            else:
                response = self._session.post(
                    url,
                    data=body.encode("ascii"),
                    headers={"Content-Type": "application/x-www-form-urlencoded; charset=GB2312"},
                    timeout=self.timeout,
                )
        except requests.ConnectTimeout:
            failure = ConnectError("connect timeout", endpoint=endpoint)
        except requests.ConnectionError as e:
            # A connection reset after the request was written is as ambiguous as a timeout.
            sent = isinstance(e, requests.exceptions.ChunkedEncodingError) or _was_sent(e)
            failure = (ReadTimeout if sent else ConnectError)(
                f"connection failed ({type(e).__name__})", endpoint=endpoint
            )
        except requests.Timeout:
            failure = ReadTimeout("no answer within the read timeout", endpoint=endpoint)
        except requests.RequestException as e:
            failure = TransportError(f"request failed ({type(e).__name__})", endpoint=endpoint)
        if failure is not None:
            raise failure
        if response.status_code >= 400:
            raise HTTPStatusError(f"HTTP {response.status_code}", status=response.status_code, endpoint=endpoint)
        return response.content.decode(self.charset, errors="replace")

    def _send_result(self, endpoint: str, answer: str, linkid: str) -> SendResult:
        match = _CODE_ANSWER.match(answer)
        if match and int(match.group(1)) == 0 and "/" not in answer:
            return SendResult(0, match.group(2), linkid)
        raise self._code_error(endpoint, answer)

    @staticmethod
    def _code_error(endpoint: str, answer: str) -> ProviderError:
        match = _CODE_ANSWER.match(answer)
        if match and "\n" not in answer.strip():
            code = int(match.group(1))
            cls = REJECTIONS.get(code)
            if cls is not None:
                return cls(match.group(2) or answer.strip(), code=code, endpoint=endpoint)
        return UnknownAnswer(f"unexpected answer {answer[:200]!r}", endpoint=endpoint)


def parse_form(raw: bytes) -> dict[str, bytes]:
    """Form or query bytes → raw values after one percent-decoding, still bytes: the charset
    is the caller's to decide (Werkzeug would decode them as UTF-8 whatever they are)."""
    out: dict[str, bytes] = {}
    for pair in raw.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        out[unquote_to_bytes(key.replace(b"+", b" ")).decode("latin-1")] = unquote_to_bytes(value.replace(b"+", b" "))
    return out


def _pre_encode(value: str, charset: str) -> str:
    """The first of two URL encodings, for fields the server decodes twice."""
    return quote(value, safe="", encoding=charset)


def _was_sent(error: requests.ConnectionError) -> bool:
    """Whether the connection failed after the request went out (reset, closed, bad answer).

    urllib3 wraps those as ProtocolError; a refused or unresolvable connection is a
    NewConnectionError/NameResolutionError inside MaxRetryError.
    """
    import urllib3.exceptions as u3

    reason = error.args[0] if error.args else None
    if isinstance(reason, u3.MaxRetryError):
        reason = reason.reason
    return isinstance(reason, u3.ProtocolError | ConnectionResetError | u3.ReadTimeoutError)
