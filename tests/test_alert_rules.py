"""Every alert rule under Prometheus's own tools: ``promtool check rules``, and ``promtool test
rules`` with, for each alert, series that make it fire (with the labels and annotations it must
carry) and series that keep it quiet. Debian's ``prometheus`` package brings promtool
(``make system-deps``)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parent.parent / "deploy" / "observability" / "alerts.yaml"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: make system-deps installs it")

#: alert → (series that fire it, series that keep it quiet, when to look, the labels it carries
#: beyond its own). Series are promtool's notation, one sample a minute.
CASES: dict[str, tuple[dict[str, str], dict[str, str], str, dict[str, str]]] = {
    "SmsgwApiDown": (
        {'up{job="smsgw", instance="api-1:9090"}': "0x10"},
        {'up{job="smsgw", instance="api-1:9090"}': "1x10"},
        "5m",
        {"job": "smsgw", "instance": "api-1:9090"},
    ),
    "SmsgwMetricsAbsent": (
        {'up{job="smsgw", instance="api-1:9090"}': "0x20"},
        {'up{job="smsgw", instance="api-1:9090"}': "1x20"},
        "10m",
        {},  # absent() of a comparison carries no labels
    ),
    "SmsgwApiErrors": (
        {
            'smsgw_http_requests_total{route="/v1/messages", method="POST", status="503"}': "0+10x20",
            'smsgw_http_requests_total{route="/v1/messages", method="POST", status="202"}': "0+10x20",
        },
        {
            'smsgw_http_requests_total{route="/v1/messages", method="POST", status="503"}': "0x20",
            'smsgw_http_requests_total{route="/v1/messages", method="POST", status="202"}': "0+10x20",
        },
        "15m",
        {},
    ),
    "SmsgwAccountHeld": (
        {'smsgw_account_held{account="default", reason="insufficient balance"}': "1x10"},
        {'smsgw_account_held{account="default", reason=""}': "0x10"},
        "5m",
        {"account": "default", "reason": "insufficient balance"},
    ),
    "SmsgwBalanceLow": (
        {'smsgw_account_balance_low{account="default"}': "1x5"},
        {'smsgw_account_balance_low{account="default"}': "0x5"},
        "2m",
        {"account": "default"},
    ),
    "SmsgwQueueStale": (
        {'smsgw_queue_oldest_seconds{queue="smsgw-high"}': "400x10"},
        {'smsgw_queue_oldest_seconds{queue="smsgw-high"}': "100x10"},
        "5m",
        {"queue": "smsgw-high"},
    ),
    "SmsgwSendsFailing": (
        {'smsgw_recipients_total{state="failed"}': "0+1x20"},
        {'smsgw_recipients_total{state="failed"}': "5x20"},
        "15m",
        {},
    ),
    "SmsgwUnconfirmedChunks": (
        {"smsgw_unconfirmed_chunks_total": "0+1x20"},
        {"smsgw_unconfirmed_chunks_total": "4x40"},
        "15m",
        {},
    ),
    "SmsgwReportLag": (
        {"smsgw_report_lag_seconds_sum": "0+7200x60", "smsgw_report_lag_seconds_count": "0+1x60"},
        {"smsgw_report_lag_seconds_sum": "0+60x60", "smsgw_report_lag_seconds_count": "0+1x60"},
        "50m",
        {},
    ),
    "SmsgwFoldBehind": ({"smsgw_fold_waiting": "6000x30"}, {"smsgw_fold_waiting": "100x30"}, "20m", {}),
    "SmsgwCallbacksDropped": (
        {'smsgw_alerts_total{event="callback_abandoned"}': "0+1x20"},
        {'smsgw_alerts_total{event="callback_abandoned"}': "3x20"},
        "10m",
        {},
    ),
    "SmsgwNoLiveWorker": ({"smsgw_workers": "0x10"}, {"smsgw_workers": "2x10"}, "5m", {}),
    "SmsgwRedisMemoryHigh": (
        {"smsgw_redis_memory_used_bytes": "90x20", "smsgw_redis_memory_max_bytes": "100x20"},
        {"smsgw_redis_memory_used_bytes": "50x20", "smsgw_redis_memory_max_bytes": "100x20"},
        "10m",
        {},
    ),
    "SmsgwPushRefused": ({"smsgw_push_refused_total": "0+1x20"}, {"smsgw_push_refused_total": "0x20"}, "15m", {}),
    "SmsgwBalanceRunwayShort": (
        {'smsgw_account_balance_runway_short{account="default"}': "1x5"},
        {'smsgw_account_balance_runway_short{account="default"}': "0x5"},
        "2m",
        {"account": "default"},
    ),
    "SmsgwRouteSwitched": (
        {"smsgw_route_switches_total": "0+1x20"},
        {"smsgw_route_switches_total": "2x20"},
        "15m",
        {},
    ),
    "SmsgwConversionDropped": (
        {'smsgw_account_conversion_low{account="default"}': "1x20"},
        {'smsgw_account_conversion_low{account="default"}': "0x20"},
        "10m",
        {"account": "default"},
    ),
    "SmsgwRedisNotDurable": ({"smsgw_redis_durable": "0x20"}, {"smsgw_redis_durable": "1x20"}, "10m", {}),
}


def rules() -> dict[str, dict]:
    return {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def render(template: str, labels: dict[str, str]) -> str:
    """The annotation as Prometheus renders it for ``labels`` (the rules use ``$labels.x`` only)."""
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def test_promtool_checks_the_rules():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_on_its_series_and_stays_quiet_on_others(tmp_path):
    found = rules()
    assert set(CASES) == set(found), "every rule needs a firing and a quiet case here"
    tests = []
    for alert, (firing, quiet, at, labels) in CASES.items():
        rule = found[alert]
        expected = {**rule.get("labels", {}), **labels}
        annotations = {k: render(v, expected) for k, v in rule.get("annotations", {}).items()}
        for series, alerts in ((firing, [{"exp_labels": expected, "exp_annotations": annotations}]), (quiet, [])):
            tests.append(
                {
                    "name": f"{alert} {'fires' if alerts else 'stays quiet'}",
                    "interval": "1m",
                    "input_series": [{"series": s, "values": v} for s, v in series.items()],
                    "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": alerts}],
                }
            )
    spec = tmp_path / "alerts.test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(tests) == 2 * len(found) >= 34


def test_the_api_being_down_is_covered_by_a_rule_that_does_not_read_smsgw():
    """The rules on smsgw's own /metrics go silent with the API; these must not."""
    found = rules()
    for alert in ("SmsgwApiDown", "SmsgwMetricsAbsent"):
        assert "smsgw_" not in found[alert]["expr"] and "up{" in found[alert]["expr"]
    assert "absent(" in found["SmsgwMetricsAbsent"]["expr"]
