"""The closest thing to a deploy without a cluster: the production render
(values-prod.yaml + the guide's values-production.yaml) taken apart and run.

Each rendered ConfigMap and Secret volume is laid out as the kubelet does
(files in a timestamped directory, `..data` pointing at it, one symlink per
key) under a scratch root; the broker and AgentAuth containers' args, env
and ports start the real `atb` binaries with exactly the rendered config
files; Service names resolve to loopback ports as cluster DNS would resolve
them; Redis runs as a password-protected master behind a real Sentinel
(`atb-master`); the broker's OPA sidecar is the real OPA engine (PyPI
opa-golib-python-bindings) serving the rendered policy ConfigMap on the
sidecar's decision path. Then: every rendered probe path answers 200, and a
mandate from AgentAuth is accepted by the broker once (upstream reached) and
refused the second time (shared replay state)."""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import PROFILES, atb_binary, render

AGENT = "spiffe://acme.example/agent/demo"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lay_out_volume(target: Path, files: dict):
    """The kubelet's atomic-writer layout of a ConfigMap / Secret volume."""
    target.mkdir(parents=True, exist_ok=True)
    ts = target / "..2026_01_01_00_00_00.000000001"
    ts.mkdir()
    for k, v in files.items():
        p = ts / k
        p.write_bytes(v if isinstance(v, bytes) else v.encode())
    (target / "..data").symlink_to(ts.name)
    for k in files:
        (target / k).symlink_to(f"..data/{k}")


def update_volume(target: Path, files: dict):
    """The kubelet's update of a ConfigMap volume: a new timestamped
    directory, then `..data` swapped to it in one rename."""
    ts = target / f"..{time.time_ns()}"
    ts.mkdir()
    for k, v in files.items():
        (ts / k).write_text(v)
        if not (target / k).is_symlink():
            (target / k).symlink_to(f"..data/{k}")
    tmp = target / "..data_tmp"
    tmp.symlink_to(ts.name)
    os.replace(tmp, target / "..data")


class Upstream(BaseHTTPRequestHandler):
    seen = []

    def do_GET(self):
        Upstream.seen.append(self.path)
        body = json.dumps({"upstream": "crm", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def opa_sidecar(policy_dir: Path):
    """The `opa run --server` sidecar's two routes, on the real OPA engine."""
    from opa_bindings import OpaEngine, OpaUndefinedError

    engine = OpaEngine()
    for p in sorted(policy_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.suffix == ".rego":
            engine.add_policy(p.name, p.read_text())
        elif p.suffix == ".json":
            engine.add_data(json.loads(p.read_text()))
    lock = threading.Lock()

    class Opa(BaseHTTPRequestHandler):
        def _send(self, code, doc):
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send(200, {}) if self.path.startswith("/health") else self._send(404, {})

        def do_POST(self):
            if self.path != "/v1/data/atb/poa/decision":
                return self._send(404, {})
            doc = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
            with lock:
                try:
                    result = engine.eval_document("atb.poa.decision", doc.get("input", {}))
                except OpaUndefinedError:
                    return self._send(200, {})
            self._send(200, {"result": result})

        def log_message(self, *a):
            pass

    return Opa


def serve(handler, port=0):
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def http(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except Exception:
        return None


def curl(args):
    r = subprocess.run(["curl", "-s", "--max-time", "15", "-w", "\n%{http_code}", *args], capture_output=True, text=True)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


@pytest.fixture(scope="module")
def cluster():
    atb = atb_binary()
    work = Path(tempfile.mkdtemp(prefix="atb-deploy-"))
    procs, servers = [], []
    try:
        # Test values of the Secrets the chart expects.
        pki = work / "pki"
        subprocess.run([atb, "pki", "dev", "--out", str(pki)], check=True, capture_output=True)
        keys = work / "keys"
        subprocess.run([atb, "keys", "rotate", "--dir", str(keys)], check=True, capture_output=True)
        redis_password = secrets.token_hex(16)
        admin_token = secrets.token_hex(16)
        secret_data = {
            "atb-internal-tls": {"tls.crt": (pki / "server.crt").read_bytes(), "tls.key": (pki / "server.key").read_bytes(),
                                 "ca.crt": (pki / "ca.crt").read_bytes()},
            "atb-agentauth-signing-key": {p.name: p.read_bytes() for p in keys.iterdir() if p.is_file()},
            "atb-redis-password": {"redis-password": redis_password},
            "atb-admin-token": {"token": admin_token},
        }

        # Redis master (password) + a real Sentinel for atb-master.
        redis = shutil.which("redis-server")
        m_port, s_port = free_port(), free_port()
        procs.append(subprocess.Popen([redis, "--port", str(m_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                       "--requirepass", redis_password, "--maxmemory-policy", "noeviction"],
                                      cwd=work, stdout=subprocess.DEVNULL))
        sconf = work / "sentinel.conf"
        sconf.write_text(f"port {s_port}\nbind 127.0.0.1\nsentinel monitor atb-master 127.0.0.1 {m_port} 1\n"
                         f"sentinel auth-pass atb-master {redis_password}\n"
                         # as the chart's sentinel.sh: atb authenticates to the sentinels too
                         f"requirepass {redis_password}\n")
        procs.append(subprocess.Popen([redis, str(sconf), "--sentinel"], cwd=work, stdout=subprocess.DEVNULL))

        upstream = serve(Upstream)
        servers.append(upstream)
        up_port = upstream.server_address[1]
        tenants = [{
            "id": "acme", "trust_domain": "acme.example",
            "poa": {"jwks_url": "https://atb-agentauth:8444/.well-known/jwks.json", "issuer": "atb-agentauth", "audience": "atb-broker"},
            "connectors": [{"id": "crm", "upstream_url": f"http://127.0.0.1:{up_port}", "egress_allowlist": ["/api/v1/"],
                            "routes": [{"action": "crm.contact.read", "methods": ["GET"], "path": "/api/v1/contacts/{id}"}]}],
        }]
        # Fast reloads for the test; everything else as the guide renders it.
        fast = {"tenants": tenants, "broker": {"configWatchSeconds": 1}, "policy": {"reloadSeconds": 1}}
        _, docs = render(PROFILES["guide"], fast)

        # Ports: the containers' ports and the Services' names on loopback.
        ports = {("broker", 8443): free_port(), ("broker", 8080): free_port(),
                 ("agentauth", 8444): free_port(), ("agentauth", 8081): free_port(), ("opa", 8181): free_port()}
        dns = {
            "0.0.0.0:8443": f"127.0.0.1:{ports[('broker', 8443)]}",
            "0.0.0.0:8080": f"127.0.0.1:{ports[('broker', 8080)]}",
            "0.0.0.0:8444": f"127.0.0.1:{ports[('agentauth', 8444)]}",
            "0.0.0.0:8081": f"127.0.0.1:{ports[('agentauth', 8081)]}",
            "atb-agentauth:8444": f"localhost:{ports[('agentauth', 8444)]}",
            "atb-broker:8080": f"127.0.0.1:{ports[('broker', 8080)]}",
            "atb-redis-sentinel:26379": f"127.0.0.1:{s_port}",
            "localhost:8181": f"127.0.0.1:{ports[('opa', 8181)]}",
        }
        configmaps = {n: d["data"] for (k, n), d in docs.items() if k == "ConfigMap"}
        pods = {}
        for comp in ("broker", "agentauth"):
            dep = docs[("Deployment", f"atb-{comp}")]["spec"]["template"]["spec"]
            c = next(c for c in dep["containers"] if c["name"] == comp)
            root = work / comp
            volumes = {v["name"]: v for v in dep["volumes"]}
            mounts = sorted(c["volumeMounts"], key=lambda m: -len(m["mountPath"]))
            alt = "|".join(re.escape(m["mountPath"]) for m in mounts)  # longest first

            def localize(files, root=root, alt=alt):
                """A config file's absolute paths under this pod's root,
                Service names and listen addresses on loopback."""
                out = {}
                for k, text in files.items():
                    if k.endswith(".toml"):
                        text = re.sub(f'"({alt})', lambda mo: f'"{root}{mo.group(1)}', text)
                        for a, b in dns.items():
                            text = text.replace(a, b)
                    out[k] = text
                return out

            for m in mounts:
                v = volumes[m["name"]]
                target = root / m["mountPath"].lstrip("/")
                if "configMap" in v:
                    lay_out_volume(target, localize(configmaps[v["configMap"]["name"]]))
                elif "secret" in v:
                    lay_out_volume(target, secret_data[v["secret"]["secretName"]])
                else:
                    target.mkdir(parents=True, exist_ok=True)
            pods[comp] = {"root": root, "localize": localize, "container": c}
            if comp == "broker":
                opa = next(x for x in dep["containers"] if x["name"] == "opa")
                # `opa run ... --ignore=.* /etc/atb/policy`: the volume's
                # top-level entries (the symlinks), not ..data / ..<timestamp>
                assert opa["args"][-1] == "/etc/atb/policy" and "--ignore=.*" in opa["args"]
                srv = serve(opa_sidecar(root / opa["args"][-1].lstrip("/")), ports[("opa", 8181)])
                servers.append(srv)

        for comp, pod in pods.items():
            c, root = pod["container"], pod["root"]
            # The rendered args: --config names the file in the mounted ConfigMap.
            args = list(c["args"])
            i = args.index("--config") + 1
            args[i] = str(root / args[i].lstrip("/"))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("ATB_", "REDIS_", "POLICY_", "LOG_"))}
            for e in c["env"]:
                if "value" in e:
                    env[e["name"]] = e["value"]
                else:
                    ref = e["valueFrom"]["secretKeyRef"]
                    env[e["name"]] = secret_data[ref["name"]][ref["key"]]
            env["ATB_WORKERS"] = "1"  # 2 shared cores here
            env["SSL_CERT_FILE"] = str(pki / "ca.crt")
            with open(work / f"{comp}.stderr", "w") as err:
                proc = subprocess.Popen([atb, *args], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=err)
            procs.append(proc)
            pod["proc"] = proc
        yield {"docs": docs, "ports": ports, "pki": pki, "work": work, "procs": procs, "pods": pods,
               "tenants": tenants, "fast": fast}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in servers:
            s.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def logs(cluster):
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in cluster["work"].glob("*.stderr"))


def test_rendered_probes_answer(cluster):
    for comp in ("broker", "agentauth"):
        c = next(c for c in cluster["docs"][("Deployment", f"atb-{comp}")]["spec"]["template"]["spec"]["containers"] if c["name"] == comp)
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            g = c[probe]["httpGet"]
            url = f"http://127.0.0.1:{cluster['ports'][(comp, named[g['port']])]}{g['path']}"
            end = time.time() + 60
            while http(url) != 200:
                for p in cluster["procs"]:
                    assert p.poll() is None, f"{p.args[0]} exited\n{logs(cluster)}"
                assert time.time() < end, f"{comp} {probe} {url} never 200\n{logs(cluster)}"
                time.sleep(0.2)


def test_a_mandate_end_to_end(cluster):
    test_rendered_probes_answer(cluster)
    pki, ports = cluster["pki"], cluster["ports"]
    tls = ["--cacert", str(pki / "ca.crt"), "--cert", str(pki / "acme-agent.crt"), "--key", str(pki / "acme-agent.key")]
    aa = f"https://localhost:{ports[('agentauth', 8444)]}"
    leg = {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "dev-owner"}}
    code, body = curl([*tls, "-H", "content-type: application/json", "--data",
                       json.dumps({"act": "crm.contact.read", "con": {}, "leg": leg}), f"{aa}/v1/challenge"])
    assert code == 200, (body, logs(cluster))
    cid = json.loads(body)["challenge_id"]
    code, body = curl([*tls, "-H", "content-type: application/json", "--data", json.dumps({"challenge_id": cid}), f"{aa}/v1/mandate"])
    assert code == 200, (body, logs(cluster))
    token = json.loads(body)["token"]
    url = f"https://localhost:{ports[('broker', 8443)]}/api/v1/contacts/42"
    code, body = curl([*tls, "-H", f"Authorization: Bearer {token}", url])
    assert code == 200, (body, logs(cluster))
    assert json.loads(body)["path"] == "/api/v1/contacts/42"
    code, body = curl([*tls, "-H", f"Authorization: Bearer {token}", url])
    assert code == 403 and json.loads(body)["error"] == "poa_replay", body
    # the policy ran on the sidecar's engine, shared state on Sentinel's master
    code, metrics = curl([f"http://127.0.0.1:{ports[('broker', 8080)]}/metrics"])
    assert 'engine="opa"' in metrics and "atb_redis_up 1" in metrics, metrics[-2000:]


def metric(text, name, labels=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_config_and_policy_changes_apply_without_restart(cluster):
    """What the chart leaves out of the checksum annotation really reloads
    in place: a new tenant in ConfigMap atb-broker-config (the broker's file
    watch) and a new file in ConfigMap atb-policy (policy reload), each
    delivered as the kubelet delivers a ConfigMap update (no process restarts)."""
    test_rendered_probes_answer(cluster)
    pods, ports = cluster["pods"], cluster["ports"]
    broker = pods["broker"]
    admin = f"http://127.0.0.1:{ports[('broker', 8080)]}/metrics"
    more = cluster["tenants"] + [{"id": "globex", "spiffe_prefix": "spiffe://saas.example/tenants/globex"}]
    _, docs = render(PROFILES["guide"], {**cluster["fast"], "tenants": more})
    before = cluster["docs"][("Deployment", "atb-broker")]["spec"]["template"]["metadata"]["annotations"]
    after = docs[("Deployment", "atb-broker")]["spec"]["template"]["metadata"]["annotations"]
    assert before == after, "a tenant change must not roll the broker"
    update_volume(broker["root"] / "etc/atb/config", broker["localize"](docs[("ConfigMap", "atb-broker-config")]["data"]))
    end = time.time() + 30
    while True:
        _, text = curl([admin])
        if metric(text, "atb_config_reloads_total", 'result="changed"') >= 1:
            break
        assert time.time() < end, f"no config reload\n{logs(cluster)}"
        time.sleep(0.3)
    assert 'tenant="globex"' in text
    assert metric(text, "atb_config_reloads_total", 'result="error"') == 0

    # The policy bundle: in production the broker's decisions are the OPA
    # sidecar's (`opa run --watch` reloads it; not emulated here), and
    # AgentAuth's embedded engine re-reads its copy for the risk tiers
    # from the mount root (the loader skips the kubelet's dot entries).
    aa_admin = f"http://127.0.0.1:{ports[('agentauth', 8081)]}/metrics"
    target = pods["agentauth"]["root"] / "etc/atb/policy"
    files = {p.name: p.read_text() for p in target.iterdir() if not p.name.startswith(".")}
    files["chart_test.json"] = json.dumps({"chart_test": {"reloaded": True}})
    update_volume(target, files)
    end = time.time() + 30
    while True:
        _, text = curl([aa_admin])
        if metric(text, "atb_agentauth_events_total", 'event="policy.reloaded"') >= 1:
            break
        assert time.time() < end, f"no policy reload: {[l for l in text.splitlines() if 'reload' in l]}\n{logs(cluster)}"
        time.sleep(0.3)
    for p in cluster["procs"]:
        assert p.poll() is None


@pytest.mark.parametrize("profile", ["default", "staging", "all-options"])
def test_rendered_configs_pass_the_binaries_check(profile, tmp_path):
    """`atb broker --check` / `atb agentauth --check` (config, TLS files,
    keys) on each profile's rendered files, laid out as in the pods."""
    atb = atb_binary()
    pki, keys = tmp_path / "pki", tmp_path / "keys"
    subprocess.run([atb, "pki", "dev", "--out", str(pki)], check=True, capture_output=True)
    subprocess.run([atb, "keys", "rotate", "--dir", str(keys)], check=True, capture_output=True)
    tls = {"tls.crt": (pki / "server.crt").read_text(), "tls.key": (pki / "server.key").read_text(), "ca.crt": (pki / "ca.crt").read_text()}
    secret_data = {"atb-internal-tls": tls, "atb-redis-password": {"redis-password": "x"},
                   "atb-agentauth-signing-key": {p.name: p.read_text() for p in keys.iterdir() if p.is_file()}}
    _, docs = render(PROFILES[profile])
    configmaps = {n: d["data"] for (k, n), d in docs.items() if k == "ConfigMap"}
    for comp in ("broker", "agentauth"):
        dep = docs[("Deployment", f"atb-{comp}")]["spec"]["template"]["spec"]
        c = next(c for c in dep["containers"] if c["name"] == comp)
        root = tmp_path / comp
        volumes = {v["name"]: v for v in dep["volumes"]}
        mounts = sorted(c["volumeMounts"], key=lambda m: -len(m["mountPath"]))
        alt = "|".join(re.escape(m["mountPath"]) for m in mounts)
        for m in mounts:
            v = volumes[m["name"]]
            target = root / m["mountPath"].lstrip("/")
            if "configMap" in v:
                files = {k: re.sub(f'"({alt})', lambda mo: f'"{root}{mo.group(1)}', t) if k.endswith(".toml") else t
                         for k, t in configmaps[v["configMap"]["name"]].items()}
                lay_out_volume(target, files)
            elif "secret" in v:
                lay_out_volume(target, secret_data[v["secret"]["secretName"]])
            elif m["name"] == "tls":  # spiffe-helper's emptyDir: the SVID files it writes
                lay_out_volume(target, tls)
            else:
                target.mkdir(parents=True, exist_ok=True)
        args = list(c["args"])
        i = args.index("--config") + 1
        args[i] = str(root / args[i].lstrip("/"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATB_", "REDIS_", "POLICY_", "LOG_"))}
        env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
        r = subprocess.run([atb, *args, "--check"], cwd=root, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{profile} {comp}: {r.stdout}{r.stderr}"
