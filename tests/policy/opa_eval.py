"""Evaluates the policy on the real OPA engine (PyPI opa-golib-python-bindings):
every test_* rule of the *_test.rego files and data.atb.poa.decision for every
line of the corpus. Prints one JSON document; the Rust parity test compares it
with regorus.

usage: opa_eval.py POLICY_DIR DATA_JSON CORPUS_JSONL
"""
import json
import pathlib
import re
import sys

from opa_bindings import OpaEngine, OpaUndefinedError


def main():
    policy_dir, data_file, corpus_file = map(pathlib.Path, sys.argv[1:4])
    engine = OpaEngine()
    tests = []
    for path in sorted(policy_dir.rglob("*")):
        if path.suffix == ".rego":
            text = path.read_text()
            engine.add_policy(str(path), text)
            if path.name.endswith("_test.rego"):
                package = re.search(r"^package\s+(\S+)", text, re.M).group(1)
                tests += [(package, m) for m in re.findall(r"^(test_\w+)", text, re.M)]
        elif path.suffix == ".json":
            engine.add_data(json.loads(path.read_text()))
    engine.add_data(json.loads(data_file.read_text()))

    results = {}
    for package, name in tests:
        try:
            results[f"{package}.{name}"] = engine.eval_document(f"{package}.{name}", {})
        except OpaUndefinedError:
            results[f"{package}.{name}"] = "undefined"
        except Exception as e:  # an engine error is a failed test
            results[f"{package}.{name}"] = f"error: {e}"

    decisions = []
    for line in corpus_file.read_text().splitlines():
        case = json.loads(line)
        try:
            decisions.append(engine.eval_document("atb.poa.decision", case["input"]))
        except OpaUndefinedError:
            decisions.append("undefined")
        except Exception as e:
            decisions.append({"engine_error": str(e)[:200]})
    print(json.dumps({"tests": results, "decisions": decisions}))


if __name__ == "__main__":
    main()
