"""smsgw's configuration: the one place that reads the environment.

Every process (API, worker, CLI) builds one frozen :class:`Settings` from ``SMSGW_*`` at start
and passes it down; nothing reads ``os.environ`` anywhere else or at import time. A bad value
fails at once with a message naming the variable, so a misconfigured deployment never starts
half-working.

Provider accounts: the default account comes from ``SMSGW_PROVIDER_*``. More named accounts
(``SMSGW_ACCOUNTS=verification,marketing``) read ``SMSGW_ACCOUNT_<NAME>_<FIELD>`` and fall back
to the default account's value for any field they do not set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from workers import quiet

REAL_PROVIDER_URL = "http://www.smsadmin.cn/smsmarketing/wwwroot/api/"
CHARSETS = ("gb2312", "gbk", "gb18030")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class Secret:
    """A string that never shows itself in ``repr``, ``str``, f-strings or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


#: The default coalescing windows: ``high`` (verification codes) waits least.
COALESCE_MS = {"high": 50, "normal": 200, "bulk": 500}
#: A verification code is useless after ten minutes; other texts keep their value by default.
VALID_FOR = {"high": 600, "normal": 0, "bulk": 0}
VALID_FOR_MAX = 259_200
#: Development only (``dev_defaults`` refuses an empty SMSGW_VERIFY_SECRET in production).
DEV_VERIFY_SECRET = "smsgw-development-verify-secret"
DEFAULT_VERIFY_TEMPLATE = "您的验证码是{code}，{minutes}分钟内有效，请勿告诉他人。"


@dataclass(frozen=True)
class AccountSettings:
    """One provider account: its credentials and the limits of its channel."""

    name: str
    url: str
    uid: str
    password: Secret = field(repr=False)
    variant: Literal["md5", "urldecode"] = "md5"
    charset: str = "gb2312"
    max_chars: int = 70
    chunk_size: int = 1000
    rate_per_second: int = 10
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    signature: str = ""  # e.g. 【某某科技】
    signature_mode: Literal["require", "append"] = "require"
    optout_hint: str = ""  # e.g. 回T退订: a bulk text without it is refused
    low_balance: float = 0.0  # alert once when the balance falls below (0: off)
    daily_limit: int = 0  # billable parts a China day; reached: the account holds (0: none)
    daily_warn: int = 0  # an alert once a day when the day's parts pass it (0: none)
    failover: tuple[str, ...] = ()  # backup accounts, in order, while this one is unhealthy (workers.routes)
    # Per priority: sends wait for the end of this daily window, China time (workers.quiet).
    quiet_hours: Mapping[str, tuple[int, int] | None] = field(default_factory=dict)
    # Plain one-recipient texts that differ (a code inside) may share one 点点通 submission as the
    # template ``{value0}``: opt-in, because the provider then bills and filters them as 点点通.
    coalesce_plain: bool = False


@dataclass(frozen=True)
class ApiKey:
    """An API client: its name (recorded on its messages) and the SHA-256 of its key."""

    name: str
    key_sha256: bytes = field(repr=False)
    # Used to sign callbacks to this client (delivery-report issue); derived, never logged.
    callback_secret: Secret = field(repr=False)
    test: bool = False  # SMSGW_TEST_KEYS: everything but the provider; simulated reports
    rate: int = 0  # requests a second (0: unlimited), with ``burst`` at most at once
    burst: int = 0
    daily: int = 0  # billable parts a day (0: unlimited)


@dataclass(frozen=True)
class Settings:
    redis_url: str
    accounts: Mapping[str, AccountSettings]
    default_account: str = "default"
    api_keys: tuple[ApiKey, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    max_recipients: int = 100_000
    mobile_caps: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    optout_keywords: frozenset[str] = frozenset()
    optout_scope: Literal["account", "all"] = "account"
    content_check: Literal["off", "refuse", "flag"] = "off"
    content_words: frozenset[str] = frozenset()
    chunk_probe_seconds: int = 600
    part_chars: int = 70
    long_part_chars: int = 67
    send_at_max_days: int = 30
    idempotency_ttl: int = 24 * 3600
    retry_max_attempts: int = 6
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    ambiguous_wait_seconds: int = 900
    hold_max_age_seconds: int = 24 * 3600
    balance_check_seconds: int = 60
    sweep_seconds: int = 15
    job_grace_seconds: int = 60
    redis_durability: Literal["warn", "refuse", "ignore"] = "warn"
    alert_webhook_url: str = ""
    alert_webhook_format: Literal["json", "dingtalk", "wecom"] = "json"
    retention_seconds: int = 7 * 24 * 3600
    callback_secret: Secret = field(default_factory=lambda: Secret(""), repr=False)
    callback_hosts: tuple[str, ...] = ()
    callback_allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    callback_max_batch: int = 100
    callback_retry_seconds: int = 3600
    callback_concurrency: int = 8
    callback_deadline_seconds: float = 10.0
    callback_allow_loopback: bool = False
    report_window_seconds: int = 72 * 3600
    pull_interval_seconds: int = 60
    pull_gap_seconds: float = 5.0
    lease_seconds: int = 15
    operator_password: Secret = field(default_factory=lambda: Secret(""), repr=False)
    redis_replica_acks: int = 0
    redis_replica_timeout_ms: int = 500
    redis_socket_timeout: float = 2.0
    #: Counts (fleet, minute chart, usage by day) reach Redis this long after the event, added
    #: up in each process; 0 writes each at once (``workers.tally``).
    count_flush_seconds: float = 1.0
    redis_connect_timeout: float = 1.0
    accept_settle_seconds: int = 30
    #: One-recipient sends wait at most this long (ms, by priority) to share a provider call with
    #: others of the same account and text; 0 sends each on its own (``workers.coalesce``).
    coalesce_ms: Mapping[str, int] = field(default_factory=lambda: dict(COALESCE_MS))
    #: Seconds a message stays worth sending, per priority, when a request names none (0: always).
    valid_for: Mapping[str, int] = field(default_factory=lambda: dict(VALID_FOR))
    #: Failover (workers.routes): which priorities may move to a backup account, after how many
    #: failed calls in a row, and how long a recovered account stays healthy before traffic returns.
    failover_priorities: frozenset[str] = frozenset({"high", "normal"})
    #: Every account that is a primary or a backup in a failover: their calls count towards health.
    failover_accounts: frozenset[str] = frozenset()
    failover_errors: int = 3
    failback_seconds: int = 300
    #: Slow deliveries (Notify's rule): this share of the window's reports took longer than this.
    failover_slow_share: float = 0.15
    failover_slow_window: int = 900
    failover_slow_seconds: int = 300
    #: Alert when, at the last hour's pace, an account's balance runs out sooner than this.
    balance_runway_hours: float = 24.0
    #: ``yes``: RQ's Worker forks a work horse per job; ``no``: RQ's SimpleWorker runs jobs in
    #: the worker process itself (README "Speed, measured" has the figures behind the default).
    worker_fork: Literal["yes", "no"] = "no"
    #: Provider calls a worker keeps in flight at once for one message's chunks (``jobs.send_chunks``).
    sends_in_flight: int = 4
    #: ``host:port`` where ``smsgw api`` serves ``/metrics`` (and only there); empty: on the API's
    #: own port, as in development and tests.
    metrics_bind: str = "0.0.0.0:9090"
    #: Verification codes (workers.verify): the server secret codes are derived from, and the
    #: defaults of ``POST /v1/verifications``.
    verify_secret: Secret = field(default_factory=lambda: Secret(""), repr=False)
    verify_valid_for: int = 600
    verify_template: str = DEFAULT_VERIFY_TEMPLATE
    verify_max_sends: int = 5
    verify_max_checks: int = 5
    #: Conversion (workers.verify): an account whose share of codes used in the last
    #: ``window`` seconds falls this far below its own share over ``baseline`` seconds, with at
    #: least ``min`` codes sent in each, is unhealthy for ``high`` traffic.
    verify_conversion_drop: float = 0.3
    verify_conversion_window: int = 900
    verify_conversion_baseline: int = 6 * 3600
    verify_conversion_min: int = 20

    @property
    def account(self) -> AccountSettings:
        return self.accounts[self.default_account]

    @property
    def metrics_port(self) -> str:
        """The port ``/metrics`` is served on, or ``""`` for the API's own."""
        return self.metrics_bind.rpartition(":")[2] if self.metrics_bind else ""

    @property
    def verify_key(self) -> bytes:
        """The key codes and text digests are derived from. An empty secret (development only:
        :func:`dev_defaults` refuses it elsewhere) falls back to a fixed one."""
        return (self.verify_secret.reveal() or DEV_VERIFY_SECRET).encode()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value > minimum:
        raise SettingsError(f"{name}={value} must be above {minimum}")
    return value


def _networks(env: Mapping[str, str], name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for part in filter(None, (p.strip() for p in env.get(name, "").split(","))):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: {part!r} is not a network like 10.20.0.0/16") from None
    return tuple(out)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def _quiet(env: Mapping[str, str], name: str, inherited: tuple[int, int] | None) -> tuple[int, int] | None:
    if name not in env:
        return inherited
    try:
        return quiet.parse(env[name])
    except ValueError as e:
        raise SettingsError(f"{name}: {e}") from None


def _account(env: Mapping[str, str], name: str, prefix: str, base: AccountSettings | None) -> AccountSettings:
    def get(field_name: str, fallback: str) -> str:
        return env.get(prefix + field_name) or fallback

    # The default account's channel settings are SMSGW_CHARSET and SMSGW_MAX_CHARS; a named
    # account's are SMSGW_ACCOUNT_<NAME>_CHARSET and _MAX_CHARS.
    channel = "SMSGW_" if base is None else prefix

    url = get("URL", base.url if base else REAL_PROVIDER_URL)
    if not url.startswith(("http://", "https://")):
        raise SettingsError(f"{prefix}URL={url!r} must be an http:// or https:// URL")
    if not url.endswith("/"):
        url += "/"
    chunk_size = _int(env, prefix + "CHUNK_SIZE", base.chunk_size if base else 1000, 1)
    if chunk_size > 1000:
        raise SettingsError(f"{prefix}CHUNK_SIZE={chunk_size}: the provider takes at most 1000")
    password = env.get(prefix + "PASSWORD")
    return AccountSettings(
        name=name,
        url=url,
        uid=get("UID", base.uid if base else ""),
        password=Secret(password) if password is not None else (base.password if base else Secret("")),
        variant=_choice(env, prefix + "VARIANT", base.variant if base else "md5", ("md5", "urldecode")),  # type: ignore[arg-type]
        charset=_choice(env, channel + "CHARSET", base.charset if base else "gb2312", CHARSETS),
        max_chars=_int(env, channel + "MAX_CHARS", base.max_chars if base else 70, 1),
        chunk_size=chunk_size,
        rate_per_second=_int(env, prefix + "RATE", base.rate_per_second if base else 10, 1),
        connect_timeout=_float(env, prefix + "CONNECT_TIMEOUT", base.connect_timeout if base else 3.0),
        read_timeout=_float(env, prefix + "TIMEOUT", base.read_timeout if base else 10.0),
        signature=_signature(env, channel + "SIGNATURE", base.signature if base else ""),
        optout_hint=env.get(channel + "OPTOUT_HINT", base.optout_hint if base else "").strip(),
        low_balance=_float(env, channel + "LOW_BALANCE", base.low_balance if base else 0.0, -1.0),
        daily_limit=_int(env, channel + "DAILY_LIMIT", 0, 0),
        failover=tuple(n.strip() for n in env.get(channel + "FAILOVER", "").split(",") if n.strip()),
        quiet_hours={
            p: _quiet(env, f"{channel}QUIET_HOURS_{p.upper()}", base.quiet_hours.get(p) if base else None)
            for p in ("high", "normal", "bulk")
        },
        daily_warn=_int(env, channel + "DAILY_WARN", 0, 0),
        signature_mode=_choice(  # type: ignore[arg-type]
            env, channel + "SIGNATURE_MODE", base.signature_mode if base else "require", ("require", "append")
        ),
        coalesce_plain=_choice(env, prefix + "COALESCE_PLAIN", "1" if base and base.coalesce_plain else "0", ("0", "1"))
        == "1",
    )


def _key_limits(env: Mapping[str, str], key: ApiKey) -> ApiKey:
    """``SMSGW_KEY_<NAME>_RATE`` / ``_BURST`` / ``_DAILY``."""
    prefix = f"SMSGW_KEY_{key.name.upper()}_"
    rate = _int(env, prefix + "RATE", 0, 0)
    burst = _int(env, prefix + "BURST", rate, 0)
    if rate and burst < rate:
        raise SettingsError(f"{prefix}BURST={burst} is below {prefix}RATE={rate}")
    tests = {n.strip() for n in env.get("SMSGW_TEST_KEYS", "").split(",") if n.strip()}
    daily = _int(env, prefix + "DAILY", 0, 0)
    return dataclasses.replace(key, rate=rate, burst=burst, daily=daily, test=key.name in tests)


def _words_file(env: Mapping[str, str], name: str) -> frozenset[str]:
    """One word a line (UTF-8); read once at start like every other setting."""
    path = env.get(name, "")
    if not path:
        return frozenset()
    try:
        with open(path, encoding="utf-8") as f:
            return frozenset(line.strip() for line in f if line.strip() and not line.startswith("#"))
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{name}={path!r} cannot be read ({type(e).__name__})") from None


DEFAULT_CAPS = "1/60,5/3600,10/86400"  # the common verification-code rule
DEFAULT_OPTOUT = "T,TD,退订,N,取消,R"


def _caps(env: Mapping[str, str], name: str, default: str) -> tuple[tuple[int, int], ...]:
    """``count/seconds,…``; an empty value (set but empty) turns caps off."""
    raw = env.get(name, default)
    caps = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        count, sep, seconds = item.partition("/")
        if not sep or not count.isdigit() or not seconds.isdigit() or int(count) < 1 or int(seconds) < 1:
            raise SettingsError(f"{name}: {item!r} is not count/seconds like 5/3600")
        caps.append((int(count), int(seconds)))
    return tuple(caps)


def _signature(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if value and not (value.startswith("【") and value.endswith("】") and value.count("【") == 1):
        raise SettingsError(f"{name}={value!r} must be one signature in 【】, e.g. 【某某科技】")
    return value


@dataclass(frozen=True)
class SentinelUrl:
    """``redis+sentinel://[:password@]host:port[,host:port…]/<service>[/<db>]``."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: Secret = field(default_factory=lambda: Secret(""), repr=False)


def parse_sentinel_url(url: str) -> SentinelUrl:
    rest = url.removeprefix("redis+sentinel://")
    auth, _, hosts = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    hostlist, _, path = hosts.partition("/")
    parts = [p for p in path.split("/") if p]
    where = "SMSGW_REDIS_URL (redis+sentinel://[:password@]host:port[,host:port…]/<service>[/<db>])"
    sentinels = []
    for item in filter(None, hostlist.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{where}: {item!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    if not sentinels or not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise SettingsError(f"{where}: needs at least one sentinel and a service name")
    password = auth.partition(":")[2] if ":" in auth else auth
    return SentinelUrl(tuple(sentinels), parts[0], int(parts[1]) if len(parts) == 2 else 0, Secret(password))


def switched_off(settings: Settings) -> list[tuple[str, str]]:
    """(what, the setting that turns it on) for every feature this configuration leaves off,
    so nothing is silently off: ``smsgw api`` and ``make run`` print them at start."""
    off = [
        ("dashboard and /admin", "SMSGW_OPERATOR_PASSWORD", bool(settings.operator_password)),
        ("the provider's push receiver", "SMSGW_CALLBACK_SECRET", bool(settings.callback_secret)),
        ("alert webhook", "SMSGW_ALERT_WEBHOOK_URL", bool(settings.alert_webhook_url)),
        ("per-key rate and quota", "SMSGW_KEY_<NAME>_RATE / _DAILY", any(k.rate or k.daily for k in settings.api_keys)),
        ("signature", "SMSGW_SIGNATURE", any(a.signature for a in settings.accounts.values())),
        ("content check", "SMSGW_CONTENT_CHECK", settings.content_check != "off"),
        ("low-balance alert", "SMSGW_LOW_BALANCE", any(a.low_balance for a in settings.accounts.values())),
        ("replica acks", "SMSGW_REDIS_REPLICA_ACKS", settings.redis_replica_acks > 0),
    ]
    return [(what, setting) for what, setting, on in off if not on]


#: What `make run` and the compose dev profile use; never in production.
SAMPLE_API_KEY = "local-dev-key-change-me-0123456789"


def dev_defaults(settings: Settings) -> list[str]:
    """The development defaults a production process must not start with."""
    problems = []
    sample = hashlib.sha256(SAMPLE_API_KEY.encode()).digest()
    if any(k.key_sha256 == sample for k in settings.api_keys):
        problems.append("SMSGW_API_KEYS holds the sample key")
    for a in settings.accounts.values():
        where = "SMSGW_PROVIDER_" if a.name == "default" else f"SMSGW_ACCOUNT_{a.name.upper()}_"
        if not a.password:
            problems.append(f"{where}PASSWORD is empty")
        host = a.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].lower()
        if host in ("simulator", "localhost", "127.0.0.1", "::1", "[::1]"):
            problems.append(f"{where}URL points at the simulator ({host})")
    if not settings.verify_secret:
        problems.append("SMSGW_VERIFY_SECRET is empty: verification codes would follow from a public default")
    if settings.callback_allow_loopback:
        problems.append("SMSGW_CALLBACK_ALLOW_LOOPBACK lets callers' callbacks reach this machine")
    return problems


def parse_api_keys(raw: str) -> tuple[ApiKey, ...]:
    """``name:key,name2:key2`` → keys stored hashed; the clear key is not kept."""
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, key = item.partition(":")
        if not sep or not name or len(key) < 16:
            raise SettingsError(
                "SMSGW_API_KEYS must be name:key pairs joined by commas, each key at least "
                f"16 characters (entry {len(keys) + 1} is not)"
            )
        if name in seen:
            raise SettingsError(f"SMSGW_API_KEYS names {name!r} twice")
        seen.add(name)
        digest = hashlib.sha256(key.encode()).digest()
        secret = hashlib.sha256(b"smsgw-callback:" + key.encode()).hexdigest()
        keys.append(ApiKey(name=name, key_sha256=digest, callback_secret=Secret(secret)))
    return tuple(keys)


def settings_from_env(env: Mapping[str, str], *, redis_url: str | None = None) -> Settings:
    """Build the settings from ``SMSGW_*`` variables; raise :class:`SettingsError` on a bad one.

    ``redis_url`` overrides ``SMSGW_REDIS_URL`` (``smsgw run`` passes the embedded server's).
    """
    url = redis_url or env.get("SMSGW_REDIS_URL", "")
    if not url:
        raise SettingsError(
            "SMSGW_REDIS_URL is not set (e.g. redis://localhost:6379/0); `make run` starts a private Redis for you"
        )
    if not url.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        raise SettingsError(
            "SMSGW_REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel:// "
            f"(it starts with {url.split('://')[0]!r})"
        )
    if url.startswith("redis+sentinel://"):
        parse_sentinel_url(url)  # fails now, naming the setting, rather than at first use

    default = _account(env, "default", "SMSGW_PROVIDER_", None)
    accounts = {"default": default}
    for name in filter(None, (n.strip() for n in env.get("SMSGW_ACCOUNTS", "").split(","))):
        if not name.isidentifier():
            raise SettingsError(f"SMSGW_ACCOUNTS: {name!r} is not a valid account name")
        accounts[name] = _account(env, name, f"SMSGW_ACCOUNT_{name.upper()}_", default)
    default_name = env.get("SMSGW_DEFAULT_ACCOUNT") or "default"
    if default_name not in accounts:
        raise SettingsError(f"SMSGW_DEFAULT_ACCOUNT={default_name!r} is not a configured account")
    for account in accounts.values():
        where = "SMSGW_FAILOVER" if account.name == "default" else f"SMSGW_ACCOUNT_{account.name.upper()}_FAILOVER"
        for backup in account.failover:
            if backup not in accounts or backup == account.name:
                raise SettingsError(f"{where}: {backup!r} is not another configured account")
    unknown = set(env.get("SMSGW_FAILOVER_PRIORITIES", "high,normal").replace(" ", "").split(",")) - {
        "high",
        "normal",
        "bulk",
        "",
    }
    if unknown:
        raise SettingsError(f"SMSGW_FAILOVER_PRIORITIES: {', '.join(sorted(unknown))} is not a priority")

    return Settings(
        redis_url=url,
        accounts=accounts,
        default_account=default_name,
        api_keys=tuple(_key_limits(env, k) for k in parse_api_keys(env.get("SMSGW_API_KEYS", ""))),
        max_body_bytes=_int(env, "SMSGW_MAX_BODY_BYTES", 8 * 1024 * 1024, 1024),
        max_recipients=_int(env, "SMSGW_MAX_RECIPIENTS", 100_000, 1),
        mobile_caps={
            p: _caps(env, f"SMSGW_MOBILE_CAPS_{p.upper()}", DEFAULT_CAPS if p == "high" else "")
            for p in ("high", "normal", "bulk")
        },
        optout_keywords=frozenset(
            k.strip().upper() for k in env.get("SMSGW_OPTOUT_KEYWORDS", DEFAULT_OPTOUT).split(",") if k.strip()
        ),
        optout_scope=_choice(env, "SMSGW_OPTOUT_SCOPE", "account", ("account", "all")),  # type: ignore[arg-type]
        content_check=_choice(env, "SMSGW_CONTENT_CHECK", "off", ("off", "refuse", "flag")),  # type: ignore[arg-type]
        content_words=_words_file(env, "SMSGW_CONTENT_WORDS_FILE"),
        chunk_probe_seconds=_int(env, "SMSGW_CHUNK_PROBE_SECONDS", 600, 1),
        part_chars=_int(env, "SMSGW_PART_CHARS", 70, 1),
        long_part_chars=_int(env, "SMSGW_LONG_PART_CHARS", 67, 1),
        send_at_max_days=_int(env, "SMSGW_SEND_AT_MAX_DAYS", 30, 0),
        idempotency_ttl=_int(env, "SMSGW_IDEMPOTENCY_TTL", 24 * 3600, 1),
        retry_max_attempts=_int(env, "SMSGW_RETRY_MAX_ATTEMPTS", 6, 1),
        retry_base_seconds=_float(env, "SMSGW_RETRY_BASE_SECONDS", 5.0),
        retry_max_seconds=_float(env, "SMSGW_RETRY_MAX_SECONDS", 600.0),
        ambiguous_wait_seconds=_int(env, "SMSGW_AMBIGUOUS_WAIT_SECONDS", 900, 0),
        hold_max_age_seconds=_int(env, "SMSGW_HOLD_MAX_AGE_SECONDS", 24 * 3600, 1),
        balance_check_seconds=_int(env, "SMSGW_BALANCE_CHECK_SECONDS", 60, 1),
        sweep_seconds=_int(env, "SMSGW_SWEEP_SECONDS", 15, 1),
        job_grace_seconds=_int(env, "SMSGW_JOB_GRACE_SECONDS", 60, 1),
        redis_durability=_choice(env, "SMSGW_REDIS_DURABILITY", "warn", ("warn", "refuse", "ignore")),  # type: ignore[arg-type]
        alert_webhook_url=env.get("SMSGW_ALERT_WEBHOOK_URL", ""),
        alert_webhook_format=_choice(env, "SMSGW_ALERT_WEBHOOK_FORMAT", "json", ("json", "dingtalk", "wecom")),  # type: ignore[arg-type]
        retention_seconds=_int(env, "SMSGW_RETENTION_SECONDS", 7 * 24 * 3600, 1),
        callback_hosts=tuple(h.strip().lower() for h in env.get("SMSGW_CALLBACK_HOSTS", "").split(",") if h.strip()),
        callback_allow_networks=_networks(env, "SMSGW_CALLBACK_ALLOW_NETWORKS"),
        callback_max_batch=_int(env, "SMSGW_CALLBACK_MAX_BATCH", 100, 1),
        callback_retry_seconds=_int(env, "SMSGW_CALLBACK_RETRY_SECONDS", 3600, 1),
        callback_concurrency=_int(env, "SMSGW_CALLBACK_CONCURRENCY", 8, 0),
        callback_deadline_seconds=_float(env, "SMSGW_CALLBACK_DEADLINE_SECONDS", 10.0),
        callback_allow_loopback=env.get("SMSGW_CALLBACK_ALLOW_LOOPBACK", "") == "1",
        report_window_seconds=_int(env, "SMSGW_REPORT_WINDOW_SECONDS", 72 * 3600, 1),
        pull_interval_seconds=_int(env, "SMSGW_PULL_INTERVAL_SECONDS", 60, 1),
        pull_gap_seconds=_float(env, "SMSGW_PULL_GAP_SECONDS", 5.0),
        lease_seconds=_int(env, "SMSGW_LEASE_SECONDS", 15, 2),
        callback_secret=Secret(env.get("SMSGW_CALLBACK_SECRET", "")),
        operator_password=Secret(env.get("SMSGW_OPERATOR_PASSWORD", "")),
        redis_replica_acks=_int(env, "SMSGW_REDIS_REPLICA_ACKS", 0, 0),
        redis_replica_timeout_ms=_int(env, "SMSGW_REDIS_REPLICA_TIMEOUT_MS", 500, 1),
        redis_socket_timeout=_float(env, "SMSGW_REDIS_SOCKET_TIMEOUT", 2.0),
        count_flush_seconds=_float(env, "SMSGW_COUNT_FLUSH_SECONDS", 1.0, -1e-9),  # 0: at once
        redis_connect_timeout=_float(env, "SMSGW_REDIS_CONNECT_TIMEOUT", 1.0),
        accept_settle_seconds=_int(env, "SMSGW_ACCEPT_SETTLE_SECONDS", 30, 0),
        worker_fork=_choice(env, "SMSGW_WORKER_FORK", "no", ("yes", "no")),  # type: ignore[arg-type]
        coalesce_ms={p: _int(env, f"SMSGW_COALESCE_MS_{p.upper()}", ms, 0) for p, ms in COALESCE_MS.items()},
        failover_priorities=frozenset(
            p.strip() for p in env.get("SMSGW_FAILOVER_PRIORITIES", "high,normal").split(",") if p.strip()
        ),
        failover_errors=_int(env, "SMSGW_FAILOVER_ERRORS", 3, 1),
        failover_accounts=frozenset(name for a in accounts.values() if a.failover for name in (a.name, *a.failover)),
        failback_seconds=_int(env, "SMSGW_FAILBACK_SECONDS", 300, 0),
        failover_slow_share=_float(env, "SMSGW_FAILOVER_SLOW_SHARE", 0.15),
        failover_slow_window=_int(env, "SMSGW_FAILOVER_SLOW_WINDOW", 900, 60),
        failover_slow_seconds=_int(env, "SMSGW_FAILOVER_SLOW_SECONDS", 300, 1),
        balance_runway_hours=_float(env, "SMSGW_BALANCE_RUNWAY_HOURS", 24.0),
        valid_for={
            p: min(_int(env, f"SMSGW_VALID_FOR_{p.upper()}", s, 0), VALID_FOR_MAX) for p, s in VALID_FOR.items()
        },
        metrics_bind=_bind(env, "SMSGW_METRICS_BIND", "0.0.0.0:9090"),
        sends_in_flight=min(_int(env, "SMSGW_SENDS_IN_FLIGHT", 4, 1), 16),
        verify_secret=_verify_secret(env),
        verify_valid_for=min(_int(env, "SMSGW_VERIFY_VALID_FOR", 600, 30), VALID_FOR_MAX),
        verify_template=_verify_template(env),
        verify_max_sends=_int(env, "SMSGW_VERIFY_MAX_SENDS", 5, 1),
        verify_max_checks=_int(env, "SMSGW_VERIFY_MAX_CHECKS", 5, 1),
        verify_conversion_drop=_float(env, "SMSGW_VERIFY_CONVERSION_DROP", 0.3),
        verify_conversion_window=_int(env, "SMSGW_VERIFY_CONVERSION_WINDOW", 900, 60),
        verify_conversion_baseline=_int(env, "SMSGW_VERIFY_CONVERSION_BASELINE", 6 * 3600, 600),
        verify_conversion_min=_int(env, "SMSGW_VERIFY_CONVERSION_MIN", 20, 1),
    )


def _bind(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default)
    host, sep, port = value.rpartition(":")
    if value and (not sep or not host or not port.isdigit()):
        raise SettingsError(f"{name}={value!r} is not host:port (or empty)")
    return value


def _verify_secret(env: Mapping[str, str]) -> Secret:
    secret = env.get("SMSGW_VERIFY_SECRET", "")
    if secret and len(secret) < 16:
        raise SettingsError("SMSGW_VERIFY_SECRET must be at least 16 characters (it keys every code)")
    return Secret(secret)


def _verify_template(env: Mapping[str, str]) -> str:
    template = env.get("SMSGW_VERIFY_TEMPLATE", "") or DEFAULT_VERIFY_TEMPLATE
    if "{code}" not in template:
        raise SettingsError("SMSGW_VERIFY_TEMPLATE must hold {code}")
    return template
