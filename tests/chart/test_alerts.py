"""The rendered PrometheusRule through promtool: `promtool check rules` and
`promtool test rules` with one case per alert that fires and one that stays
silent (Debian package `prometheus`)."""

import shutil
import subprocess

import pytest
import yaml

from conftest import PROFILES, render

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None and False, reason="")

B = {"job": "atb-broker"}
A = {"job": "atb-agentauth"}


def series(name, labels, values):
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


# alert -> (firing input series, eval time, expected labels, silent input series)
CASES = {
    "ATBBrokerDown": (
        [series("up", {**B, "instance": "10.0.0.1:8080"}, "0x5")], "3m",
        {**B, "instance": "10.0.0.1:8080", "severity": "critical"},
        [series("up", {**B, "instance": "10.0.0.1:8080"}, "1x5")],
    ),
    "ATBAgentAuthDown": (
        [series("up", {**A, "instance": "10.0.0.2:8081"}, "0x5")], "3m",
        {**A, "instance": "10.0.0.2:8081", "severity": "critical"},
        [series("up", {**A, "instance": "10.0.0.2:8081"}, "0 0 1 1 1 1")],
    ),
    "ATBHighErrorRate": (  # 2 errors in 102 requests a minute: 1.96 %
        [series("atb_requests_total", {**B, "tenant": "acme", "status": "ok"}, "0+100x20"),
         series("atb_requests_total", {**B, "tenant": "acme", "status": "error"}, "0+2x20")], "15m",
        {"severity": "warning"},
        [series("atb_requests_total", {**B, "tenant": "acme", "status": "ok"}, "0+100x20"),  # 0.5 %
         series("atb_requests_total", {**B, "tenant": "acme", "status": "error"}, "0+0.5x20")],
    ),
    "ATBPoAInvalidRate": (  # 10 of 110: 9 %
        [series("atb_poa_validations_total", {**B, "tenant": "acme", "result": "valid", "format": "jwt"}, "0+100x20"),
         series("atb_poa_validations_total", {**B, "tenant": "acme", "result": "invalid", "format": "jwt"}, "0+10x20")], "15m",
        {"severity": "warning"},
        [series("atb_poa_validations_total", {**B, "tenant": "acme", "result": "valid", "format": "jwt"}, "0+100x20"),  # 2 %
         series("atb_poa_validations_total", {**B, "tenant": "acme", "result": "invalid", "format": "jwt"}, "0+2x20")],
    ),
    "ATBHighLatencyP99": (  # every request between 0.5 s and 1 s
        [series("atb_request_duration_seconds_bucket", {**B, "tenant": "acme", "le": le}, v)
         for le, v in (("0.1", "0x30"), ("0.5", "0x30"), ("1", "0+100x30"), ("+Inf", "0+100x30"))], "25m",
        {"severity": "warning"},
        [series("atb_request_duration_seconds_bucket", {**B, "tenant": "acme", "le": le}, "0+100x30")
         for le in ("0.1", "0.5", "1", "+Inf")],
    ),
    "ATBActorRestarts": (
        [series("atb_actor_restarts_total", {**B, "pod": "atb-broker-0", "actor": "shard", "shard": "0"}, "0 0 0 1 1 1 1")], "5m",
        {**B, "pod": "atb-broker-0", "actor": "shard", "severity": "warning"},
        [series("atb_actor_restarts_total", {**B, "pod": "atb-broker-0", "actor": "shard", "shard": "0"}, "0x10")],
    ),
    "ATBRedisDown": (
        [series("atb_redis_up", {**A, "pod": "atb-agentauth-0"}, "1 0 0 0 0 0")], "4m",
        {**A, "pod": "atb-agentauth-0", "severity": "critical"},
        [series("atb_redis_up", {**A, "pod": "atb-agentauth-0"}, "1 0 1 1 1 1")],  # a blip under 1m
    ),
    "ATBDependencyFailing": (
        [series("atb_dependency_up", {**B, "pod": "atb-broker-0", "dependency": "jwks", "tenant": "acme"}, "1 0 0 0 0 0")], "4m",
        {**B, "pod": "atb-broker-0", "dependency": "jwks", "tenant": "acme", "severity": "warning"},
        [series("atb_dependency_up", {**B, "pod": "atb-broker-0", "dependency": "jwks", "tenant": "acme"}, "1 0 1 1 1 1"),  # a blip under 2m
         series("atb_dependency_up", {**B, "pod": "atb-broker-0", "dependency": "redis"}, "1 0 0 0 0 0")],  # ATBRedisDown's
    ),
    "ATBPodRestarts": (  # one restart a minute
        [series("kube_pod_container_status_restarts_total", {"namespace": "atb", "pod": "atb-broker-x", "container": "broker"}, "0+1x60")], "60m",
        {"namespace": "atb", "pod": "atb-broker-x", "severity": "warning"},
        [series("kube_pod_container_status_restarts_total", {"namespace": "atb", "pod": "atb-broker-x", "container": "broker"}, "0x30 1x30")],
    ),
}


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory):
    _, docs = render(PROFILES["prod"])
    rule = docs[("PrometheusRule", "atb-alerts")]
    d = tmp_path_factory.mktemp("rules")
    (d / "rules.yml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return d, rule["spec"]


def promtool(*args, cwd=None):
    assert PROMTOOL, "promtool missing: scripts/test installs the Debian package prometheus"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(rules_dir):
    d, _ = rules_dir
    r = promtool("check", "rules", "rules.yml", cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout, r.stdout


def test_every_alert_has_a_unit_test(rules_dir):
    _, spec = rules_dir
    names = {r["alert"] for g in spec["groups"] for r in g["rules"]}
    # the guide's two alerts and the issue's: PoA invalid, p99, actor restarts, Redis down
    assert {"ATBBrokerDown", "ATBHighErrorRate", "ATBPoAInvalidRate", "ATBHighLatencyP99", "ATBActorRestarts", "ATBRedisDown"} <= names
    assert names == set(CASES)


def test_promtool_test_rules_fire_and_stay_silent(rules_dir):
    d, spec = rules_dir
    annotations = {r["alert"]: r.get("annotations", {}) for g in spec["groups"] for r in g["rules"]}
    tests = []
    for alert, (firing, at, labels, silent) in CASES.items():
        tests.append({
            "name": f"{alert} fires",
            "interval": "1m",
            "input_series": firing,
            "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                 "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations[alert]}]}],
        })
        tests.append({
            "name": f"{alert} stays silent",
            "interval": "1m",
            "input_series": silent,
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
        })
        # Nothing else fires on either input (no alert is a side effect of another's data).
    (d / "alerts_test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    r = promtool("test", "rules", "alerts_test.yml", cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
