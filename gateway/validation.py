"""Everything a request must be before anything is queued.

Two layers: pydantic checks the shape (unknown fields, types, required fields) with exact JSON
paths; then smsgw's own rules check what pydantic cannot know: mobiles, the account's charset
and length limit, 点点通 variables, ``send_at``. Every problem found is reported, not just the
first, so a caller fixes a request in one round.

JSON itself is parsed strictly here, not by Flask: duplicate keys, ``NaN``/``Infinity`` and
nesting deep enough to blow the parser's stack are 400s, not silent surprises or 500s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.problems import ErrorList, Problem, validation_problem
from workers.egress import door_problem
from workers.mobiles import normalise, normalise_all
from workers.settings import VALID_FOR_MAX, AccountSettings, Settings
from workers.text import (
    Template,
    TemplateError,
    billable_parts,
    check_vars,
    control_problems,
    ddt_group,
    expansion_problem,
    gb2312_problems,
    provider_length,
    replace_separators,
    separator_problem,
    signatures,
)

SEND_AT_PAST_TOLERANCE = timedelta(seconds=30)


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: str = Field(max_length=32, description="a mainland mobile; +86, spaces and dashes are fine")
    vars: dict[str, str] = Field(description="one value per template variable")


class MessageRequest(BaseModel):
    """``to`` + ``text`` (plain) or ``template`` + ``recipients`` (personalised, via 点点通)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    to: list[str] | None = Field(None, min_length=1, description="mobiles for a plain message")
    text: str | None = Field(None, min_length=1, description="the text of a plain message")
    template: str | None = Field(None, min_length=1, description="a template with {name} variables")
    recipients: list[Recipient] | None = Field(None, min_length=1)
    send_at: str | None = Field(None, description="ISO 8601 with an offset; held until then")
    priority: Literal["high", "normal", "bulk"] = "normal"
    reference: str | None = Field(None, max_length=128, description="your own id, echoed back")
    callback_url: str | None = Field(None, max_length=2048)
    account: str | None = Field(None, max_length=64, description="a named provider account")
    on_invalid: Literal["reject", "skip"] = "reject"
    valid_for: int | None = Field(
        None,
        ge=1,
        le=VALID_FOR_MAX,
        description="seconds the message stays worth sending, from send_at or now; then it ends expired, unsent",
    )
    redact: bool = Field(False, description="drop the text from storage once sent (always done for priority high)")
    replace_separators: bool = Field(
        False, description="点点通 values: turn , and ; into ， and ； instead of rejecting them"
    )

    @model_validator(mode="after")
    def one_shape(self) -> MessageRequest:
        plain = self.to is not None or self.text is not None
        personal = self.template is not None or self.recipients is not None
        if plain and personal:
            raise ValueError("send either to+text or template+recipients, not both")
        if plain and (self.to is None or self.text is None):
            raise ValueError("a plain message needs both 'to' and 'text'")
        if personal and (self.template is None or self.recipients is None):
            raise ValueError("a personalised message needs both 'template' and 'recipients'")
        if not plain and not personal:
            raise ValueError("send to+text or template+recipients")
        return self


class SensitiveWordsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1, max_length=2000)
    account: str | None = None


@dataclass
class Accepted:
    """A request that passed every check: what goes into Redis."""

    kind: Literal["t", "p"]
    account: str
    text: str  # the text, or the provider's {valueN} template
    items: list[str]  # mobiles, or 点点通 groups "mobile,v0,v1"
    duplicates: int
    invalid: list[dict[str, Any]] = field(default_factory=list)
    send_at: datetime | None = None
    item_parts: list[int] = field(default_factory=list)  # billable parts of each item
    suppressed: list[dict[str, str]] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)  # SMSGW_CONTENT_CHECK=flag
    variables: tuple[str, ...] = ()  # a template's variable names, in {valueN} order

    @property
    def parts(self) -> int:
        """Billable parts, all recipients together."""
        return sum(self.item_parts)

    def suppress(self, indices: set[int]) -> None:
        """Drop these items (caps, opt-outs): they are not sent and not charged."""
        self.items = [item for i, item in enumerate(self.items) if i not in indices]
        self.item_parts = [p for i, p in enumerate(self.item_parts) if i not in indices]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


#: JSON objects and arrays a body may open, per recipient allowed: a personalised recipient is
#: two (itself and its vars). A body of nothing but ``{},{},…`` would otherwise make millions of
#: Python dicts (8 MB of them took an API process from 62 to 290 MB) before any check could run.
CONTAINERS_PER_RECIPIENT = 2
CONTAINERS_SLACK = 1000


def parse_json(body: bytes, max_recipients: int) -> Any:
    """The body as JSON, strictly; refused before parsing when it opens more objects and arrays
    than a request of ``max_recipients`` can need (counted over the raw bytes, so a brace
    inside a string counts too: the bound is generous)."""
    limit = CONTAINERS_PER_RECIPIENT * max_recipients + CONTAINERS_SLACK
    if body.count(b"{") + body.count(b"[") > limit:
        detail = f"the body opens more than {limit} JSON objects and arrays, more than a request can hold"
        raise Problem(413, "Content Too Large", detail)
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise Problem(400, "Malformed JSON", f"the body is not UTF-8 (byte {e.start})") from None
    except RecursionError:
        raise Problem(400, "Malformed JSON", "nested too deeply") from None
    except ValueError as e:
        raise Problem(400, "Malformed JSON", str(e)) from None


def pointer(loc: tuple[Any, ...]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def model_errors(error: ValidationError) -> list[dict[str, str]]:
    errors = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        # pydantic prefixes the validators' own sentences with "Value error, ": not for callers.
        detail = "unknown field" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        errors.append({"pointer": pointer(loc), "detail": detail})
    return errors


def parse_model(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_problem(model_errors(e)) from None


def charset_errors(text: str, charset: str, where: str, what: str = "") -> list[dict[str, str]]:
    """Characters the channel cannot carry, and control characters other than newline."""
    errors = [
        {
            "pointer": where,
            "detail": f"{what}character {p.char!r} ({p.codepoint}) at index {p.index} is not in {charset.upper()}",
        }
        for p in gb2312_problems(text, charset)
    ]
    errors += [
        {
            "pointer": where,
            "detail": f"{what}control character {p.codepoint} at index {p.index}: only newline is allowed",
        }
        for p in control_problems(text)
    ]
    return errors


def check_message(req: MessageRequest, settings: Settings, now: datetime | None = None) -> Accepted:
    """Apply smsgw's rules; raise one 422 problem listing everything wrong."""
    errors = ErrorList()
    account_name = req.account or settings.default_account
    if account_name not in settings.accounts:
        raise validation_problem([{"pointer": "/account", "detail": f"unknown account {account_name!r}"}])
    account = settings.accounts[account_name]
    charset, limit = account.charset, account.max_chars

    send_at = None
    if req.send_at is not None:
        send_at = _check_send_at(req.send_at, settings, now or datetime.now(UTC), errors)
    if req.callback_url is not None:
        try:
            parts = urlsplit(req.callback_url)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:  # a malformed port, or a bracket left open ("http://[::1/")
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            errors.append({"pointer": "/callback_url", "detail": "must be an http:// or https:// URL"})
        elif (
            problem := door_problem(parts.hostname, settings.callback_allow_networks, settings.callback_allow_loopback)
        ) is not None:
            errors.append({"pointer": "/callback_url", "detail": f"the host {problem}"})
        elif settings.callback_hosts and parts.hostname.lower() not in settings.callback_hosts:
            errors.append(
                {"pointer": "/callback_url", "detail": f"host {parts.hostname!r} is not in SMSGW_CALLBACK_HOSTS"}
            )

    rule = (settings.part_chars, settings.long_part_chars)
    if req.to is not None and req.text is not None:
        text = _signed(req.text, account, "/text", errors)
        accepted = _check_plain(req.to, text, req.on_invalid, charset, limit, errors)
        accepted.item_parts = [billable_parts(text, *rule)] * len(accepted.items)
        if req.priority == "bulk" and account.optout_hint and account.optout_hint not in text:
            hint = account.optout_hint
            errors.append({"pointer": "/text", "detail": f"a bulk text must carry the opt-out hint {hint}"})
    else:
        assert req.template is not None and req.recipients is not None
        source = _signed(req.template, account, "/template", errors)
        accepted = _check_personal(req, source, charset, limit, errors, rule, account.optout_hint)
    if len(accepted.items) > settings.max_recipients:
        errors.append(
            {
                "pointer": "/to" if req.to else "/recipients",
                "detail": f"{len(accepted.items)} recipients; at most {settings.max_recipients} per request",
            }
        )
    if errors:
        raise validation_problem(errors)
    accepted.account = account_name
    accepted.send_at = send_at
    return accepted


def _check_send_at(raw: str, settings: Settings, now: datetime, errors: list[dict[str, str]]) -> datetime | None:
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        errors.append({"pointer": "/send_at", "detail": "not an ISO 8601 date-time"})
        return None
    if when.tzinfo is None:
        errors.append({"pointer": "/send_at", "detail": "needs an offset, e.g. +08:00 or Z"})
        return None
    try:
        when = when.astimezone(UTC)  # 9999-12-31T23:59:59-14:00 is past the end of time in UTC
    except OverflowError:
        errors.append({"pointer": "/send_at", "detail": "is out of range"})
        return None
    if when < now - SEND_AT_PAST_TOLERANCE:
        errors.append({"pointer": "/send_at", "detail": "is in the past"})
    elif when > now + timedelta(days=settings.send_at_max_days):
        errors.append(
            {
                "pointer": "/send_at",
                "detail": f"is more than {settings.send_at_max_days} days ahead",
            }
        )
    return when.astimezone(UTC)


def _check_plain(
    to: list[str],
    text: str,
    on_invalid: str,
    charset: str,
    limit: int,
    errors: list[dict[str, str]],
) -> Accepted:
    errors += charset_errors(text, charset, "/text")
    if not text.strip():
        errors.append({"pointer": "/text", "detail": "is empty once blanks are removed"})
    length = provider_length(text)
    if length > limit:
        errors.append(
            {
                "pointer": "/text",
                "detail": f"{length} characters; the channel takes at most {limit}",
            }
        )
    recipients = normalise_all(to)
    invalid = [{"index": i, "value": v} for i, v in recipients.invalid]
    if on_invalid == "reject":
        errors += [
            {"pointer": f"/to/{i}", "detail": f"not a mainland China mobile: {v!r}"} for i, v in recipients.invalid
        ]
    if not recipients.valid and not (on_invalid == "reject" and recipients.invalid):
        errors.append({"pointer": "/to", "detail": "no valid mobile left"})
    return Accepted("t", "", text, recipients.valid, recipients.duplicates, invalid)


def _signed(text: str, account: AccountSettings, where: str, errors: list[dict[str, str]]) -> str:
    """The text with the account's signature: required (422 naming it when missing) or appended.
    More than one 【…】 signature is always refused: operators reject such texts."""
    found = signatures(text)
    if len(found) > 1:
        errors.append({"pointer": where, "detail": f"has {len(found)} signatures ({''.join(found)}); a text takes one"})
        return text
    wanted = account.signature
    if not wanted:
        return text
    signed = text.startswith(wanted) or text.endswith(wanted)
    if signed:
        return text
    if account.signature_mode == "append" and not found:
        return text + wanted
    detail = f"must carry the signature {wanted} at its start or end"
    errors.append({"pointer": where, "detail": detail + (f", not {found[0]}" if found else "")})
    return text


def _check_personal(
    req: MessageRequest,
    source: str,
    charset: str,
    limit: int,
    errors: list[dict[str, str]],
    rule: tuple[int, int],
    hint: str,
) -> Accepted:
    assert req.recipients is not None
    parts: list[int] = []
    try:
        template = Template.parse(source)
    except TemplateError as e:
        errors.append({"pointer": "/template", "detail": str(e)})
        return Accepted("p", "", "", [], 0)
    errors += charset_errors(template.source, charset, "/template")
    groups: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    invalid: list[dict[str, Any]] = []
    for i, recipient in enumerate(req.recipients):
        where = f"/recipients/{i}"
        mobile = normalise(recipient.to)
        if mobile is None:
            invalid.append({"index": i, "value": recipient.to})
            if req.on_invalid == "reject":
                errors.append(
                    {
                        "pointer": f"{where}/to",
                        "detail": f"not a mainland China mobile: {recipient.to!r}",
                    }
                )
            continue
        problems = check_vars(template, recipient.vars)
        if problems:
            errors += [{"pointer": f"{where}/vars", "detail": p} for p in problems]
            continue
        values = dict(recipient.vars)
        for name, value in recipient.vars.items():
            here = f"{where}/vars/{name}"
            if req.replace_separators:
                values[name] = replace_separators(value)
            elif (problem := separator_problem(value)) is not None:
                errors.append(
                    {
                        "pointer": here,
                        "detail": f"recipient {recipient.to}, variable {name!r} {problem}",
                    }
                )
            if (problem := expansion_problem(value)) is not None:
                errors.append({"pointer": here, "detail": f"recipient {recipient.to}, variable {name!r} {problem}"})
            errors += charset_errors(values[name], charset, here, f"recipient {recipient.to}, variable {name!r}: ")
        rendered = template.render(values)
        if not rendered.strip():
            errors.append({"pointer": where, "detail": f"the text for {recipient.to} is empty"})
        length = provider_length(rendered)
        this_parts = billable_parts(rendered, *rule)
        if length > limit:
            detail = f"the text for {recipient.to} is {length} characters; the channel takes at most {limit}"
            errors.append({"pointer": where, "detail": detail})
        if mobile in seen:
            duplicates += 1
            continue
        seen.add(mobile)
        groups.append(ddt_group(mobile, template.values_in_order(values)))
        parts.append(this_parts)
    if not groups and not errors:
        errors.append({"pointer": "/recipients", "detail": "no valid recipient left"})
    accepted = Accepted("p", "", template.provider_text, groups, duplicates, invalid)
    accepted.item_parts = parts
    accepted.variables = template.names
    if req.priority == "bulk" and hint and hint not in template.source:
        errors.append({"pointer": "/template", "detail": f"a bulk text must carry the opt-out hint {hint}"})
    return accepted
