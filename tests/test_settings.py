import pytest

from tests.conftest import FORGOT_REDIS, make_settings
from workers.settings import REAL_PROVIDER_URL, SettingsError, settings_from_env


def test_defaults():
    s = settings_from_env({"SMSGW_REDIS_URL": "redis://x:1/0"})
    assert s.account.url == REAL_PROVIDER_URL
    assert (s.account.charset, s.account.max_chars, s.account.variant) == ("gb2312", 70, "md5")


def test_test_default_fails_loudly():
    assert make_settings().redis_url == FORGOT_REDIS


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SMSGW_REDIS_URL is not set"),
        ({"SMSGW_REDIS_URL": "localhost"}, "SMSGW_REDIS_URL"),
        ({"SMSGW_PROVIDER_TIMEOUT": "soon"}, "SMSGW_PROVIDER_TIMEOUT"),
        ({"SMSGW_CHARSET": "utf-8"}, "SMSGW_CHARSET"),
        ({"SMSGW_MAX_CHARS": "0"}, "SMSGW_MAX_CHARS"),
        ({"SMSGW_PROVIDER_CHUNK_SIZE": "5000"}, "at most 1000"),
        ({"SMSGW_API_KEYS": "nokey"}, "SMSGW_API_KEYS"),
        ({"SMSGW_ACCOUNTS": "bad-name"}, "SMSGW_ACCOUNTS"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(env, message):
    full = {"SMSGW_REDIS_URL": "redis://x:1/0", **env} if "SMSGW_REDIS_URL" not in env and env else env
    with pytest.raises(SettingsError, match=message):
        settings_from_env(full)


def test_named_accounts_inherit_the_default():
    s = settings_from_env(
        {
            "SMSGW_REDIS_URL": "redis://x:1/0",
            "SMSGW_PROVIDER_UID": "main",
            "SMSGW_PROVIDER_PASSWORD": "pw",
            "SMSGW_ACCOUNTS": "marketing",
            "SMSGW_ACCOUNT_MARKETING_UID": "mkt",
            "SMSGW_ACCOUNT_MARKETING_CHUNK_SIZE": "500",
        }
    )
    m = s.accounts["marketing"]
    assert (m.uid, m.chunk_size, m.password.reveal()) == ("mkt", 500, "pw")


def test_secrets_do_not_show():
    s = make_settings()
    assert "s3cret" not in repr(s) and "s3cret" not in repr(s.account) and "s3cret" not in str(s.account.password)
    assert "test-key" not in repr(s.api_keys)
