"""Text rules: which characters the channel can carry, how the provider counts length, and
点点通 templates.

The API checks every message with these functions before queueing it, and the workers build
the provider's parameters with the same ones, so a text the door accepted is a text the
provider accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

FULL_WIDTH = {",": "，", ";": "；"}


@dataclass(frozen=True)
class CharProblem:
    """A character the charset cannot encode, at ``index`` (in characters) of the text."""

    index: int
    char: str

    @property
    def codepoint(self) -> str:
        return f"U+{ord(self.char):04X}"


@lru_cache(maxsize=65536)
def _encodable(char: str, charset: str) -> bool:
    try:
        char.encode(charset)
    except UnicodeEncodeError:
        return False
    return True


def gb2312_problems(text: str, charset: str = "gb2312", limit: int = 100) -> list[CharProblem]:
    """The first ``limit`` characters of ``text`` that ``charset`` cannot encode, with their
    index (bounded: a text of a million such characters costs one error list, not a million).

    The charset is the account's own: Python's ``gbk`` accepts 體 or 堃, which a GB2312 channel
    cannot carry, so never check with a wider one by accident. The fast path encodes the whole
    text once; only a failing text is walked character by character.
    """
    try:
        text.encode(charset)
    except UnicodeEncodeError:
        found: list[CharProblem] = []
        for i, c in enumerate(text):
            if not _encodable(c, charset):
                found.append(CharProblem(i, c))
                if len(found) >= limit:
                    break
        return found
    return []


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def control_problems(text: str, limit: int = 10) -> list[CharProblem]:
    """Control characters (NUL, tab, carriage return, escape, …): newline is the only one a
    text message may carry; the rest reach a phone as garbage or cut the provider's form."""
    found = []
    for match in _CONTROL.finditer(text):
        found.append(CharProblem(match.start(), match.group()))
        if len(found) >= limit:
            break
    return found


def billable_parts(text: str, single: int = 70, each: int = 67) -> int:
    """Parts the operator bills: one up to ``single`` characters, else ``ceil(n / each)`` (a
    long SMS carries its concatenation header in every part)."""
    length = provider_length(text)
    return 1 if length <= single else -(-length // each)


_SIGNATURE = re.compile(r"【[^【】]+】")


def signatures(text: str) -> list[str]:
    """The 【…】 signatures in a text, in order."""
    return _SIGNATURE.findall(text)


def provider_length(text: str) -> int:
    """Length as the provider counts it: characters, a Latin letter the same as a Chinese one."""
    return len(text)


class TemplateError(ValueError):
    """A 点点通 template or a recipient's variables do not fit together."""


_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Template:
    """A template with named variables, ready for 点点通.

    ``provider_text`` has ``{value0}``, ``{value1}`` … in order of first appearance of the
    names; ``names`` lists those names in that order.
    """

    source: str
    provider_text: str
    names: tuple[str, ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        names: list[str] = []
        for match in _VARIABLE.finditer(source):
            if match.group(1) not in names:
                names.append(match.group(1))
        if not names:
            raise TemplateError("the template has no {variable}; send it as a plain text")
        provider_text = _VARIABLE.sub(lambda m: f"{{value{names.index(m.group(1))}}}", source)
        return cls(source, provider_text, tuple(names))

    def render(self, values: dict[str, str]) -> str:
        """The text this recipient will actually receive."""
        return _VARIABLE.sub(lambda m: values[m.group(1)], self.source)

    def values_in_order(self, values: dict[str, str]) -> list[str]:
        return [values[name] for name in self.names]


def check_vars(template: Template, values: dict[str, str]) -> list[str]:
    """Problems with one recipient's variables: missing ones, extra ones."""
    problems = [f"variable {n!r} is missing" for n in template.names if n not in values]
    problems += [f"variable {n!r} is not in the template" for n in values if n not in template.names]
    return problems


def separator_problem(value: str) -> str | None:
    """A 点点通 value may not hold ``,`` or ``;``: they separate values and groups on the wire."""
    for char in (",", ";"):
        if char in value:
            return f"contains {char!r}, which separates 点点通 values"
    return None


_PROVIDER_VARIABLE = re.compile(r"\{value\d+\}")


def expansion_problem(value: str) -> str | None:
    """A value holding ``{valueN}`` is expanded again by the provider (each replacement runs
    over the text the previous one made): a short value becomes a long text, and the length
    and content checked here would not be what is sent."""
    found = _PROVIDER_VARIABLE.search(value)
    return f"holds {found.group(0)}, which the provider would replace with another value" if found else None


def replace_separators(value: str) -> str:
    """Opt-in repair: ``,`` and ``;`` become the full-width ``，`` and ``；``."""
    return value.replace(",", FULL_WIDTH[","]).replace(";", FULL_WIDTH[";"])


def item_parts(kind: str, text: str, item: str, single: int = 70, each: int = 67) -> int:
    """Billable parts of one recipient item: the text's, or its 点点通 rendering's (``text`` the
    provider's template, ``item`` a group ``"mobile,v0,v1"``), as :func:`billable_parts` counts."""
    if kind != "p":
        return billable_parts(text, single, each)
    values = item.split(",")[1:]
    for i, value in enumerate(values):
        text = text.replace(f"{{value{i}}}", value)
    return billable_parts(text, single, each)


def mobile_of(item: str) -> str:
    """The mobile of a recipient item: the item itself, or a 点点通 group's first value."""
    return item.split(",", 1)[0]


def ddt_group(mobile: str, values: list[str]) -> str:
    """One 点点通 parameter group: the mobile first, then the values, joined by ``,``."""
    return ",".join([mobile, *values])


def parse_ddt_params(params: str) -> list[list[str]]:
    """The provider's reading of ``params``: groups by ``;``, values by ``,``."""
    return [group.split(",") for group in params.split(";") if group]
