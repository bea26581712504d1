"""A live scrape of `atb dev` (broker and AgentAuth, shared state on a real
redis-server) after a little traffic: `promtool check metrics` on both
/metrics pages, and every metric name that the PrometheusRule and the
Grafana dashboards use is one the binaries really export."""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import CHART, PROFILES, atb_binary, render

# Metrics that are not the binaries': Prometheus's own scrape health and
# kube-state-metrics' restart counter (the guide's "Pod restarts > 3 in 1h").
NOT_OURS = {"up", "kube_pod_container_status_restarts_total"}
AGENT = "spiffe://acme.example/agent/demo"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_ready(urls, procs, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited {p.returncode}"
        try:
            if all(get(u)[0] == 200 for u in urls):
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready: {urls}")


@pytest.fixture(scope="module")
def scrape():
    atb = atb_binary()
    assert Path(atb).exists(), f"{atb}: build it (cargo test builds it and sets ATB_BIN)"
    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server missing (scripts/test installs it)"
    work = Path(tempfile.mkdtemp(prefix="atb-chart-"))
    procs = []
    try:
        rport = free_port()
        procs.append(subprocess.Popen(
            [redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ports = {k: free_port() for k in ("listen", "admin", "upstream", "agentauth", "agentauth-admin")}
        env = {k: v for k, v in os.environ.items() if k not in ("ATB_CONFIG", "ATB_DEV_REDIS")}
        env.update(LOG_FORMAT="json", ATB_WORKERS="1")
        args = [atb, "dev", "--dir", "d", "--redis", f"redis://127.0.0.1:{rport}"]
        for k, p in ports.items():
            args += [f"--{k}", f"127.0.0.1:{p}"]
        with open(work / "dev.stderr", "w") as err:
            procs.append(subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=err))
        broker_admin = f"http://127.0.0.1:{ports['admin']}"
        aa_admin = f"http://127.0.0.1:{ports['agentauth-admin']}"
        wait_ready([f"{broker_admin}/ready", f"{aa_admin}/ready"], procs)

        d = work / "d"
        tls = ["--cacert", str(d / "ca.crt"), "--cert", str(d / "acme-agent.crt"), "--key", str(d / "acme-agent.key")]
        token = subprocess.run([atb, "mint", "--key", str(d / "poa-signing.key"), "--sub", AGENT, "--act", "crm.contact.read"],
                               capture_output=True, text=True, check=True).stdout.strip()
        hello = f"https://localhost:{ports['listen']}/api/hello"
        codes = []
        for t in (token, token, "not-a-mandate"):  # allowed, replay, invalid
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *tls,
                                "-H", f"Authorization: Bearer {t}", hello], capture_output=True, text=True)
            codes.append(r.stdout)
        assert codes[0] == "200", codes
        body = json.dumps({"act": "crm.contact.read", "con": {}, "leg": {"jurisdiction": "EU",
                           "accountable_party": {"type": "user", "id": "dev-owner"}}})
        subprocess.run(["curl", "-s", "--max-time", "10", *tls, "-H", "content-type: application/json", "--data", body,
                        f"https://localhost:{ports['agentauth']}/v1/challenge"], capture_output=True, check=True)
        # Redis gone: a request fails closed (503) and counts a Redis error.
        procs[0].terminate()
        procs[0].wait(timeout=10)
        token = subprocess.run([atb, "mint", "--key", str(d / "poa-signing.key"), "--sub", AGENT, "--act", "crm.contact.read"],
                               capture_output=True, text=True, check=True).stdout.strip()
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *tls,
                            "-H", f"Authorization: Bearer {token}", hello], capture_output=True, text=True)
        assert r.stdout == "503", r.stdout
        pages = {"broker": get(f"{broker_admin}/metrics")[1], "agentauth": get(f"{aa_admin}/metrics")[1]}
        yield pages
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def exported(pages):
    names = set()
    for text in pages.values():
        for line in text.splitlines():
            if line and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def metric_names(expr):
    """Metric names of a PromQL expression: identifiers outside strings,
    label matchers, grouping clauses and ranges, that are not functions."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\w+", " ", e)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in KEYWORDS:
            continue
        if re.fullmatch(r"\d*[smhdwy]?", m.group(0)) or m.group(0) in {"e", "Inf", "NaN"}:
            continue
        names.add(m.group(0))
    return names


def used_expressions():
    _, docs = render(PROFILES["prod"])
    out = []
    for g in docs[("PrometheusRule", "atb-alerts")]["spec"]["groups"]:
        out += [(f"alert {r['alert']}", r["expr"]) for r in g["rules"]]
    for f in sorted((CHART / "dashboards").glob("*.yaml")):
        for body in yaml.safe_load(f.read_text())["data"].values():
            d = json.loads(body)
            for p in d["panels"]:
                out += [(f"{f.name}: {p['title']}", t["expr"]) for t in p["targets"]]
            for v in d.get("templating", {}).get("list", []):
                q = v.get("query")
                if isinstance(q, str) and q.startswith("label_values("):
                    out.append((f"{f.name}: variable {v['name']}", q[len("label_values("):].split(",")[0]))
    return out


def test_metric_name_extraction():
    assert metric_names('sum(rate(atb_requests_total{status="error"}[5m])) / sum(rate(atb_requests_total[5m])) > 0.01') == {"atb_requests_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket{job=\"a\"}[5m]))) > 0.5") == {"x_bucket"}
    assert metric_names("up{job=\"atb-broker\"} == 0") == {"up"}


def test_promtool_check_metrics_on_the_live_scrape(scrape):
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test installs the Debian package prometheus"
    for svc, text in scrape.items():
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{svc}: {r.stdout}{r.stderr}"


def test_every_metric_in_rules_and_dashboards_is_exported(scrape):
    have = exported(scrape)
    assert "atb_requests_total" in have and "atb_agentauth_requests_total" in have
    missing = []
    exprs = used_expressions()
    assert len(exprs) > 20
    for where, expr in exprs:
        for name in metric_names(expr) - NOT_OURS:
            if name not in have:
                missing.append(f"{where}: {name}")
    assert not missing, "not on a live /metrics scrape:\n" + "\n".join(missing)
