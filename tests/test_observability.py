"""Grafana and Prometheus as code: every expression parses with a real PromQL parser, and every
metric and label it names exists in a live /metrics of smsgw after real traffic."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, drain, sim_admin

ROOT = Path(__file__).resolve().parent.parent / "deploy" / "observability"


def expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "alerts.yaml").read_text())
    out = [(f"rule {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((ROOT / "grafana-dashboard.json").read_text())
    out += [(f"panel {p['title']}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    return out


def selectors(node: object, grouping: set[str]) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every vector selector; ``grouping`` collects the
    labels of every ``by (...)``."""
    found: list[tuple[str, set[str]]] = []
    if isinstance(node, promql_parser.VectorSelector):
        return [(node.name, {m.name for m in node.matchers.matchers})]
    if isinstance(node, promql_parser.MatrixSelector):
        return selectors(node.vector_selector, grouping)
    if isinstance(node, promql_parser.AggregateExpr):
        if node.modifier is not None:
            grouping |= set(node.modifier.labels)
        return selectors(node.expr, grouping)
    if isinstance(node, promql_parser.BinaryExpr):
        return selectors(node.lhs, grouping) + selectors(node.rhs, grouping)
    if isinstance(node, promql_parser.Call):
        for arg in node.args:
            found += selectors(arg, grouping)
        return found
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return selectors(node.expr, grouping)
    return found


@pytest.fixture
def scrape(app, api, runtime, simulator) -> dict[str, set[str]]:
    """Sample name → label names, from /metrics after sends, a failure, reports and an alert."""
    from tests.test_reports import pull_all

    api.post("/v1/messages", json={"to": ["13800138000"], "text": "x"}, headers=AUTH)
    sim_admin(simulator, "script", endpoint="post_send_md5", codes=[5])
    api.post("/v1/messages", json={"to": ["13900139000"], "text": "y"}, headers=AUTH)
    drain(runtime)
    pull_all(runtime)
    api.get("/v1/balance", headers=AUTH)  # a known balance
    api.post("/v1/verifications", json={"to": "13700137000"}, headers=AUTH)  # a verification started
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(api.get("/metrics").get_data(as_text=True)):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_every_expression_parses_and_names_only_what_smsgw_exposes(scrape):
    problems = []
    for where, expr in expressions():
        try:
            tree = promql_parser.parse(expr)
        except ValueError as e:
            problems.append(f"{where}: does not parse: {e}")
            continue
        grouping: set[str] = set()
        found = selectors(tree, grouping)
        assert found, where
        labels_here: set[str] = set()
        for name, matched in found:
            if name == "up":  # Prometheus's own, per scraped target (job and instance)
                labels_here |= {"job", "instance"}
                continue
            if name not in scrape:
                problems.append(f"{where}: no metric {name}")
                continue
            labels_here |= scrape[name]
            problems += [f"{where}: {name} has no label {label}" for label in matched - scrape[name]]
        problems += [f"{where}: no label {label} to group by" for label in grouping - labels_here]
    assert not problems, problems
    assert len(expressions()) >= 20


def test_the_check_catches_a_wrong_metric_and_a_wrong_label(scrape):
    grouping: set[str] = set()
    [(name, matched)] = selectors(promql_parser.parse('sum by (queue) (smsgw_queue_depht{kind="x"})'), grouping)
    assert name not in scrape
    [(name, matched)] = selectors(promql_parser.parse('smsgw_queue_depth{kind="x"}'), grouping)
    assert name in scrape and matched - scrape[name] == {"kind"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(smsgw_workers[5m])")


def test_the_rules_cover_what_operators_page_on():
    names = {r["alert"] for g in yaml.safe_load((ROOT / "alerts.yaml").read_text())["groups"] for r in g["rules"]}
    assert names == {
        "SmsgwAccountHeld",
        "SmsgwBalanceLow",
        "SmsgwQueueStale",
        "SmsgwSendsFailing",
        "SmsgwUnconfirmedChunks",
        "SmsgwReportLag",
        "SmsgwCallbacksDropped",
        "SmsgwNoLiveWorker",
        "SmsgwRedisNotDurable",
        "SmsgwFoldBehind",
        "SmsgwRedisMemoryHigh",
        "SmsgwPushRefused",
        "SmsgwRouteSwitched",
        "SmsgwConversionDropped",
        "SmsgwApiDown",
        "SmsgwMetricsAbsent",
        "SmsgwApiErrors",
        "SmsgwBalanceRunwayShort",
    }
