"""charts/atb rendered with the real Helm engine: strict lint, every profile
renders, every manifest is schema-valid Kubernetes, restricted pod security,
and each value of the guide's values-production.yaml lands where it should."""

import json
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, CRD_KINDS, HERE, PROFILES, ROOT, load_values, render

KUBE_VERSIONS = ["1.28.0", "1.33.0"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_lint_strict(profile):
    report = helm.lint(
        str(CHART), load_values(PROFILES[profile]), strict=True, namespace="atb", kube_version="v1.30.0"
    )
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert not bad, bad


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_manifests_are_schema_valid(rendered, profile):
    _, docs = rendered[profile]
    assert ("Deployment", "atb-broker") in docs
    for (kind, name), doc in docs.items():
        if kind in CRD_KINDS:
            continue
        for v in KUBE_VERSIONS:
            # strict: unknown fields are errors too
            kubernetes_validate.validate(doc, v, strict=True)


def test_crd_objects_have_their_shape(rendered):
    """The CRD kinds (no OpenAPI schema in kubernetes-validate): their
    required fields checked here; the PrometheusRule's rules go through
    promtool in test_alerts.py."""
    _, docs = rendered["guide"]
    for c in ("broker", "agentauth"):
        sm = docs[("ServiceMonitor", f"atb-{c}")]
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == c
        ep = sm["spec"]["endpoints"][0]
        assert ep == {"port": "admin", "path": "/metrics", "scheme": "http", "interval": "15s"}
        # job label = the Service's name, which the alerts' up{job=...} use
        svc = docs[("Service", f"atb-{c}")]
        for k, v in sm["spec"]["selector"]["matchLabels"].items():
            assert svc["metadata"]["labels"][k] == v
        assert "admin" in [p["name"] for p in svc["spec"]["ports"]]
    es = docs[("ExternalSecret", "atb-signing-key")]
    assert es["apiVersion"] == "external-secrets.io/v1beta1"
    assert es["spec"]["target"] == {"name": "atb-agentauth-signing-key", "creationPolicy": "Owner"}
    assert es["spec"]["data"] == [{"secretKey": "ed25519_privkey_pem", "remoteRef": {"key": "atb-signing-key"}}]
    assert es["spec"]["secretStoreRef"] == {"name": "azure-keyvault", "kind": "ClusterSecretStore"}
    assert es["spec"]["refreshInterval"] == "1h"
    ids = {}
    for (kind, name), d in docs.items():
        if kind == "ClusterSPIFFEID":
            assert d["apiVersion"] == "spire.spiffe.io/v1alpha1"
            ids[d["spec"]["spiffeIDTemplate"]] = d["spec"]
    assert ids["spiffe://example.org/atb/broker"]["workloadSelectorTemplates"] == ["k8s:ns:atb", "k8s:sa:atb-broker"]
    assert ids["spiffe://example.org/atb/agentauth"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "atb"}
    assert ("ServiceAccount", "atb-broker") in docs and ("ServiceAccount", "atb-agentauth") in docs


def pod_specs(docs):
    for (kind, name), d in docs.items():
        if kind in ("Deployment", "StatefulSet"):
            yield name, d["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield name, d["spec"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_pods_pass_restricted_pod_security(rendered, profile):
    """pod-security.kubernetes.io/enforce=restricted (namespace of step 1)."""
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for name, spec in pod_specs(rendered[profile][1]):
        psc = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for v in spec.get("volumes", []):
            assert set(v) - {"name"} <= allowed_volumes, (name, v)
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser")) == 65534, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            prof = sc.get("seccompProfile", psc.get("seccompProfile"))
            assert prof == {"type": "RuntimeDefault"}, where
            assert "resources" in c and c["resources"].get("limits"), where
            assert not sc.get("privileged"), where


def test_names_ports_and_commands_of_the_guide(rendered):
    """The guide's commands: deployment/atb-broker, deployment/atb-agentauth,
    svc/atb-broker 8443, hpa atb-broker, -l app=atb-broker, -c opa, the
    atb-agentauth-signing-key Secret, PrometheusRule atb-alerts."""
    _, docs = rendered["guide"]
    b = docs[("Deployment", "atb-broker")]
    a = docs[("Deployment", "atb-agentauth")]
    assert b["spec"]["template"]["metadata"]["labels"]["app"] == "atb-broker"
    assert a["spec"]["template"]["metadata"]["labels"]["app"] == "atb-agentauth"
    ports = {p["name"]: p["port"] for p in docs[("Service", "atb-broker")]["spec"]["ports"]}
    assert ports == {"https": 8443, "admin": 8080}
    ports = {p["name"]: p["port"] for p in docs[("Service", "atb-agentauth")]["spec"]["ports"]}
    assert ports == {"https": 8444, "admin": 8081}
    assert ("HorizontalPodAutoscaler", "atb-broker") in docs
    assert ("PrometheusRule", "atb-alerts") in docs
    containers = {c["name"]: c for c in b["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"broker", "opa"}
    assert "--addr=localhost:8181" in containers["opa"]["args"]
    vols = {v["name"]: v for v in a["spec"]["template"]["spec"]["volumes"]}
    assert vols["signing-key"]["secret"]["secretName"] == "atb-agentauth-signing-key"
    env = {e["name"]: e for e in containers["broker"]["env"]}
    assert env["MAINTENANCE_MODE"]["value"] == "false"
    assert docs[("Pod", "atb-test-health")]["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "/health" in docs[("Pod", "atb-test-health")]["spec"]["containers"][0]["args"][0]
    # probes on the binaries' real paths
    bc = containers["broker"]
    assert bc["livenessProbe"]["httpGet"]["path"] == "/health"
    assert bc["readinessProbe"]["httpGet"]["path"] == "/ready"
    # the broker's config watch and the policy reload do the live changes
    broker_toml = tomllib.loads(docs[("ConfigMap", "atb-broker-config")]["data"]["broker.toml"])
    assert broker_toml["broker"]["config_watch_seconds"] > 0
    assert broker_toml["policy"]["reload_seconds"] > 0
    assert broker_toml["policy"]["engine"] == "opa"  # the sidecar is on in prod


def test_guide_values_production_is_honoured():
    """Every value of the guide's values-production.yaml, each asserted where
    it must land (rendered on top of values-prod.yaml, as in step 4)."""
    seed = yaml.safe_load((HERE / "values-production.yaml").read_text())
    _, docs = render(PROFILES["guide"])
    # With the HPA off, broker.replicaCount is the Deployment's replicas.
    _, no_hpa = render(PROFILES["guide"], {"broker": {"autoscaling": {"enabled": False}}})
    b = docs[("Deployment", "atb-broker")]
    bspec = b["spec"]["template"]["spec"]
    bc = next(c for c in bspec["containers"] if c["name"] == "broker")
    a = docs[("Deployment", "atb-agentauth")]
    aspec = a["spec"]["template"]["spec"]
    ac = aspec["containers"][0]
    sb = seed["broker"]

    assert no_hpa[("Deployment", "atb-broker")]["spec"]["replicas"] == sb["replicaCount"] == 3
    assert docs[("HorizontalPodAutoscaler", "atb-broker")]["spec"]["minReplicas"] == sb["replicaCount"]
    assert bc["resources"] == sb["resources"]
    pdb = docs[("PodDisruptionBudget", "atb-broker")]
    assert sb["podDisruptionBudget"]["enabled"] is True
    assert pdb["spec"]["minAvailable"] == sb["podDisruptionBudget"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"]["app"] == "atb-broker"
    assert bspec["affinity"] == sb["affinity"]
    # the affinity's selector really selects the broker pods
    sel = sb["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"]
    assert sel.items() <= b["spec"]["template"]["metadata"]["labels"].items()

    assert a["spec"]["replicas"] == seed["agentauth"]["replicaCount"] == 2
    assert ac["resources"] == seed["agentauth"]["resources"]

    opa = next(c for c in bspec["containers"] if c["name"] == "opa")
    assert opa["resources"] == seed["opa"]["resources"]

    r = seed["redis"]
    sts = docs[("StatefulSet", "atb-redis")]
    assert r["enabled"] and r["architecture"] == "replication"
    assert sts["spec"]["replicas"] == r["replica"]["replicaCount"] == 3
    redis_env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == r["auth"]["existingSecret"]
    scripts = docs[("ConfigMap", "atb-redis-scripts")]["data"]["redis.sh"]
    assert "replicaof" in scripts and "maxmemory-policy noeviction" in scripts
    for spec in (bspec, aspec):
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["redis-password"]["secret"]["secretName"] == "atb-redis-password"
    for cm, key in (("atb-broker-config", "broker.toml"), ("atb-agentauth-config", "agentauth.toml")):
        conf = tomllib.loads(docs[("ConfigMap", cm)]["data"][key])
        assert conf["redis"]["sentinels"] == ["redis://atb-redis-sentinel:26379"]
        assert conf["redis"]["master_name"] == "atb-master"
        assert conf["redis"]["password_file"] == "/run/secrets/atb-redis/redis-password"

    ing = docs[("Ingress", "atb-broker")]
    si = seed["ingress"]
    assert si["enabled"]
    assert ing["spec"]["ingressClassName"] == si["className"] == "nginx"
    assert ing["metadata"]["annotations"] == si["annotations"]
    assert ing["spec"]["tls"] == si["tls"]
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == si["hosts"][0]["host"] == "atb.example.com"
    path = rule["http"]["paths"][0]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": "atb-broker", "port": {"name": "https"}}

    sc = seed["securityContext"]
    for spec in (bspec, aspec, sts["spec"]["template"]["spec"]):
        psc = spec["securityContext"]
        for k in ("runAsNonRoot", "runAsUser", "fsGroup", "seccompProfile"):
            assert psc[k] == sc[k], k
    assert bc["securityContext"]["runAsUser"] == sc["runAsUser"]

    np = docs[("NetworkPolicy", "atb-broker")]
    assert seed["networkPolicy"]["enabled"]
    for rule in seed["networkPolicy"]["ingress"]:
        assert rule in np["spec"]["ingress"]
    assert np["spec"]["podSelector"]["matchLabels"] == {"app": "atb-broker"}
    egress = np["spec"]["egress"]
    assert {"to": [{"podSelector": {}}], "ports": [{"port": 8181}]} in egress
    assert {"to": [{"namespaceSelector": {"matchLabels": {"name": "enterprise"}}}], "ports": [{"port": 443}]} in egress
    assert any(p.get("port") == 53 and p.get("protocol") == "UDP" for e in egress for p in e.get("ports", []))
    assert any(p.get("port") == 26379 for e in egress for p in e.get("ports", []))

    m = seed["metrics"]
    assert m["enabled"] and m["serviceMonitor"]["enabled"]
    assert docs[("ServiceMonitor", "atb-broker")]["spec"]["endpoints"][0]["interval"] == m["serviceMonitor"]["interval"]

    lg = seed["logging"]
    for c in (bc, ac):
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["LOG_FORMAT"] == lg["format"] and env["LOG_LEVEL"] == lg["level"]
    conf = tomllib.loads(docs[("ConfigMap", "atb-broker-config")]["data"]["broker.toml"])
    assert conf["logging"] == {"format": "json", "level": "info"}


def test_checksums_roll_pods_only_when_a_restart_is_needed():
    """A tenant (connector, route) or policy change keeps the broker pods
    (file watch / policy reload); a static key rolls them. AgentAuth reads
    its file at start only, so a tenant change rolls it."""
    def sums(extra):
        _, d = render(PROFILES["prod"], extra)
        return tuple(d[("Deployment", f"atb-{c}")]["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for c in ("broker", "agentauth"))

    base = sums(None)
    tenants = load_values([CHART / "values.yaml"])["tenants"]
    more = tenants + [{"id": "globex", "spiffe_prefix": "spiffe://saas.example/tenants/globex"}]
    b, a = sums({"tenants": more})
    assert b == base[0] and a != base[1]
    b, a = sums({"policy": {"extraFiles": {"extra.json": "{}"}}})
    assert (b, a) == base
    b, a = sums({"broker": {"shards": {"count": 4}}})
    assert b != base[0] and a == base[1]
    b, a = sums({"logging": {"level": "debug"}})
    assert b != base[0] and a != base[1]


def test_chart_policy_bundle_is_the_repository_policy():
    """files/policy is a copy of policies/atb without the tests: no drift."""
    src = {p.name: p.read_text() for p in (ROOT / "policies" / "atb").iterdir() if not p.name.endswith("_test.rego")}
    dst = {p.name: p.read_text() for p in (CHART / "files" / "policy").iterdir()}
    assert src == dst, "copy policies/atb/{poa.rego,catalog.json} to charts/atb/files/policy/"


def test_dashboards_are_configmaps_with_grafana_json():
    files = sorted((CHART / "dashboards").glob("*.yaml"))
    assert len(files) >= 2
    titles = set()
    for f in files:
        cm = yaml.safe_load(f.read_text())
        kubernetes_validate.validate(cm, KUBE_VERSIONS[-1], strict=True)
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        for body in cm["data"].values():
            d = json.loads(body)
            titles |= {p["title"] for p in d["panels"]}
            for p in d["panels"]:
                assert p["targets"] and all(t["expr"] for t in p["targets"])
    for want in ("Request rate by tenant and status", "Error rate", "Latency p50 / p99", "PoA validation results",
                 "Policy evaluation p99", "Mailbox depth per actor", "Actor restarts (1h)", "Requests per tenant"):
        assert want in titles


def test_redis_scripts_are_valid_shell():
    """The Redis / Sentinel start scripts (run by `sh` in the redis image)."""
    import subprocess

    _, docs = render(PROFILES["prod"])
    scripts = docs[("ConfigMap", "atb-redis-scripts")]["data"]
    assert set(scripts) == {"master.sh", "redis.sh", "sentinel.sh"}
    for name, text in scripts.items():
        r = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr}"
    assert "requirepass $REDIS_PASSWORD" in scripts["sentinel.sh"]
    assert "sentinel monitor atb-master $master 6379 2" in scripts["sentinel.sh"]


def test_replicas_need_shared_state_and_agentauth_redis_values():
    import helm_python

    for extra in ({"broker": {"replicaCount": 2}}, {"agentauth": {"replicaCount": 2}}):
        with pytest.raises(helm_python.HelmError, match="needs"):
            render([], extra)
    # the guide's "AgentAuth HA" snippet: AgentAuth's own Redis URL
    _, docs = render(PROFILES["prod"], {"agentauth": {"redis": {"enabled": True, "url": "redis://atb-redis:6379"}}})
    aa = tomllib.loads(docs[("ConfigMap", "atb-agentauth-config")]["data"]["agentauth.toml"])
    br = tomllib.loads(docs[("ConfigMap", "atb-broker-config")]["data"]["broker.toml"])
    assert aa["redis"]["url"] == "redis://atb-redis:6379" and "sentinels" not in aa["redis"]
    assert br["redis"]["sentinels"] == ["redis://atb-redis-sentinel:26379"]
    # staging: one Redis, no Sentinel
    _, docs = render(PROFILES["staging"])
    br = tomllib.loads(docs[("ConfigMap", "atb-broker-config")]["data"]["broker.toml"])
    assert br["redis"]["url"] == "redis://atb-redis-0.atb-redis-headless:6379"
    assert docs[("StatefulSet", "atb-redis")]["spec"]["replicas"] == 1
    # AgentAuth without Redis (one replica)
    _, docs = render(PROFILES["staging"], {"agentauth": {"replicaCount": 1, "redis": {"enabled": False}}})
    assert "redis" not in tomllib.loads(docs[("ConfigMap", "atb-agentauth-config")]["data"]["agentauth.toml"])


def test_all_options_render_spire_helper_as_native_sidecar(rendered):
    _, docs = rendered["all-options"]
    spec = docs[("Deployment", "atb-broker")]["spec"]["template"]["spec"]
    helper = spec["initContainers"][0]
    assert helper["name"] == "spiffe-helper" and helper["restartPolicy"] == "Always"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["spire-agent-socket"]["csi"]["driver"] == "csi.spiffe.io"
    assert "emptyDir" in vols["tls"]
    conf = docs[("ConfigMap", "atb-spiffe-helper")]["data"]["helper.conf"]
    assert 'svid_file_name = "tls.crt"' in conf and 'agent_address = "/run/spire/sockets/agent.sock"' in conf
    broker = tomllib.loads(docs[("ConfigMap", "atb-broker-config")]["data"]["broker.toml"])
    assert broker["policy"]["engine"] == "embedded" and broker["audit"]["sink"] == "http"
    assert broker["shards"]["dedicated"] == ["acme"]
    assert "tenants.json" in docs[("ConfigMap", "atb-policy")]["data"]


def test_shutdown_graces_reach_both_services_and_fit_the_pods_grace():
    """broker.shutdownGraceSeconds and agentauth.shutdownGraceSeconds land in
    the services' config; a stop longer than the pod's termination grace (cut
    by SIGKILL before the audit flush) is refused at render time."""
    import helm_python

    _, docs = render(PROFILES["prod"], {"broker": {"shutdownGraceSeconds": 25}, "agentauth": {"shutdownGraceSeconds": 12}})
    br = tomllib.loads(docs[("ConfigMap", "atb-broker-config")]["data"]["broker.toml"])
    aa = tomllib.loads(docs[("ConfigMap", "atb-agentauth-config")]["data"]["agentauth.toml"])
    assert br["broker"]["shutdown_grace_seconds"] == 25
    assert aa["agentauth"]["shutdown_grace_seconds"] == 12
    # every shipped profile fits
    for name, files in PROFILES.items():
        _, docs = render(files)
        for dep, conf, key in (("atb-broker", "atb-broker-config", "broker.toml"), ("atb-agentauth", "atb-agentauth-config", "agentauth.toml")):
            grace = docs[("Deployment", dep)]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            c = tomllib.loads(docs[("ConfigMap", conf)]["data"][key])
            section = c["broker"] if dep == "atb-broker" else c["agentauth"]
            assert section.get("drain_delay_seconds", 0) + section["shutdown_grace_seconds"] < grace, (name, dep)
    with pytest.raises(helm_python.HelmError, match="broker.terminationGracePeriodSeconds"):
        render([], {"broker": {"drainDelaySeconds": 5, "shutdownGraceSeconds": 40, "terminationGracePeriodSeconds": 45}})
    with pytest.raises(helm_python.HelmError, match="agentauth.terminationGracePeriodSeconds"):
        render([], {"agentauth": {"shutdownGraceSeconds": 30, "terminationGracePeriodSeconds": 30}})
    # disabled AgentAuth is not checked
    render([], {"agentauth": {"enabled": False, "shutdownGraceSeconds": 30, "terminationGracePeriodSeconds": 30}})
