"""Shared helpers of the chart tests: render charts/atb with the real Helm
engine (helm-python-sdk, Helm v4 in-process, offline) the way
`helm upgrade --install atb charts/atb -n atb -f A -f B` would."""

import copy
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "atb"
HERE = Path(__file__).resolve().parent

# The profiles the chart ships, as the -f lists an operator passes.
PROFILES = {
    "default": [],
    "staging": [CHART / "values-staging.yaml"],
    "prod": [CHART / "values-prod.yaml"],
    # The guide's step 4: values-prod.yaml, then the guide's own file.
    "guide": [CHART / "values-prod.yaml", HERE / "values-production.yaml"],
    "all-options": [CHART / "values-prod.yaml", HERE / "values-production.yaml", HERE / "values-all-options.yaml"],
}

# Kinds from CRDs (no schema in kubernetes-validate); checked by their own tests.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ExternalSecret", "ClusterSPIFFEID"}


def merge(base, over):
    """Helm's coalescing of several -f files: maps merge key by key, anything
    else (lists included) is replaced, null deletes."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_values(files):
    vals = {}
    for f in files:
        vals = merge(vals, yaml.safe_load(Path(f).read_text()) or {})
    return vals


def render(files=(), extra=None, name="atb", namespace="atb"):
    """{template path: text} and the parsed documents, keyed (kind, name)."""
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    vals = load_values(files)
    if extra:
        vals = merge(vals, extra)
    chart.validate_schema(vals)
    out = chart.render(vals, name=name, namespace=namespace, is_install=True)
    docs = {}
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in docs, f"{key} rendered twice"
                docs[key] = doc
    return out, docs


@pytest.fixture(scope="session")
def rendered():
    return {p: render(files) for p, files in PROFILES.items()}


def atb_binary():
    return os.environ.get("ATB_BIN") or str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "atb")
