"""deploy/'s dashboard and alert rules against walletd's own /metrics: every walletd metric they
name is one walletd exports (or one not exported yet, listed in EXPECTED_LATER), every alert
has a promtool unit test, and the dashboard is well formed. The live check, with a real
Prometheus evaluating every expression, is `make test-monitoring`."""

from __future__ import annotations

import json
from collections import Counter

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import api_transfer, register
from tests.monitoring.deployed import (
    ALERT_TESTS,
    DASHBOARD,
    EXPECTED_LATER,
    alert_rules,
    all_expressions,
    metric_names,
)


async def exported_names(client) -> set[str]:
    user = await register(client, "monitoring")
    await api_transfer(client, user, 1, user["wallets"][2]["id"], "1")  # an error answer, a histogram child
    text = await (await client.get("/metrics")).text()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_every_metric_the_dashboard_and_the_alerts_use_is_exported(client):
    exported = await exported_names(client)
    missing = {(where, name) for where, expr in all_expressions() for name in metric_names(expr)
               if name not in exported and name not in EXPECTED_LATER}
    assert not missing, f"not exported by walletd's /metrics: {sorted(missing)}"
    still_listed = EXPECTED_LATER & exported
    assert not still_listed, f"walletd exports these now: remove them from EXPECTED_LATER: {sorted(still_listed)}"
    used = {name for _, expr in all_expressions() for name in metric_names(expr)}
    assert EXPECTED_LATER <= used, "EXPECTED_LATER names a metric deploy/ does not use"


def test_every_alert_has_a_unit_test_that_fires_it():
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = Counter()
    for case in tests:
        for check in case["alert_rule_test"]:
            if check.get("exp_alerts"):
                fired[check["alertname"]] += 1
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert {name for name in names if not fired[name]} == set()
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"] == "walletd"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
