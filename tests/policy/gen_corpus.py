"""Generates tests/policy/corpus.jsonl: decision inputs for the regorus/OPA
parity test. Deterministic (seeded); rerun after changing the catalogue or
the input shape: python3 tests/policy/gen_corpus.py > tests/policy/corpus.jsonl
"""
import json
import random

rng = random.Random(20261128)
AGENT = "spiffe://acme.example/agent/a"
GOOD_LEG = {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner@acme"}}
LEGS = {
    "good": GOOD_LEG,
    "medium": {**GOOD_LEG, "approval": {"approver_id": "alice@acme", "timestamp": 1700000000}},
    "self": {**GOOD_LEG, "approval": {"approver_id": AGENT}},
    "dual": {**GOOD_LEG, "dual_control": {"required": True, "approvers": [
        {"id": "alice@acme", "timestamp": 1699990000}, {"id": "bob@acme", "timestamp": 1700000000}]}},
    "dual_dup": {**GOOD_LEG, "dual_control": {"required": True, "approvers": [{"id": "a"}, {"id": "a"}]}},
    "exec": {**GOOD_LEG, "executive_control": {"required": True, "approvers": [
        {"id": "ceo@acme", "role": "CEO"}, {"id": "cfo@acme", "role": "CFO"}]}},
    "exec_one_person": {**GOOD_LEG, "executive_control": {"required": True, "approvers": [
        {"id": "x", "role": "CEO"}, {"id": "x", "role": "CFO"}]}},
    "exec_bad_role": {**GOOD_LEG, "executive_control": {"required": True, "approvers": [
        {"id": "x", "role": "CEO"}, {"id": "y", "role": "CFO"}, {"id": "z", "role": 7}]}},
    "no_jurisdiction": {"accountable_party": {"type": "user", "id": "o"}},
    "not_object": "contract",
}
ACTIONS = [
    "crm.contact.read", "kb.docs.search", "crm.contact.update", "erp.order.create", "made.up.action",
    "sap.vendor.create", "sap.vendor.change", "sap.vendor.bank_change", "sap.payment.execute",
    "sap.payment.batch_release", "sap.journal_entry.post", "salesforce.bulk.export",
    "salesforce.bulk.delete", "salesforce.apex.execute", "salesforce.report.export_all",
    "hr.employee.export_pii", "hr.employee.terminate", "hr.payroll.run", "hr.compensation.change",
    "customer.gdpr.erasure", "customer.ccpa.export", "customer.pii.access", "iam.role.assign",
    "iam.mfa.disable", "ot.system.manual_override", "scada.setpoint.change",
    "ot.safety.interlock_bypass", "servicenow.change.emergency_approve",
    "servicenow.incident.priority1_create", "workday.compensation.change",
    "dynamics.entity.bulk_delete", "aws.iam.policy_attach", "azure.rbac.assign",
    "azure.keyvault.secret_set", "org.company.merge", "finance.wire.over_10m",
]
PARAMS = [
    {}, {"amount": 100}, {"amount": 6000}, {"amount": "100"}, {"amount": 0},
    {"second_channel_verified": True, "change_reason": "vendor moved banks"},
    {"batch_count": 10, "total_amount": 5000}, {"gl_account": "4000", "cost_center": "CC", "amount": 5},
    {"dataset": "leads", "row_count": 50}, {"object_type": "Lead", "record_count": 5},
    {"script_name": "cleanup"}, {"report_id": "r1"}, {"purpose": "audit", "record_count": 5},
    {"offboarding_checklist_complete": True, "termination_reason": "position eliminated"},
    {"payroll_period": "2026-11", "employee_count": 10},
    {"percentage_change": 10, "justification": "annual review outcome, top performer", "effective_date": "2027-01-01"},
    {"request_id": "r", "days_since_request": 5, "export_format": "csv"},
    {"purpose": "support_case", "reference_id": "c1"},
    {"role_name": "reader", "target_user_id": "u1"}, {"role_name": "reader", "target_user_id": AGENT},
    {"incident_reference": "INC", "target_user_id": "u1", "identity_verified": True},
    {"human_in_loop_approved": True}, {"new_value": 50, "safety_review_acknowledged": True},
    {"emergency_justification": "sensor failure, plant at risk", "bypass_duration_seconds": 60, "safety_officer_approved": True},
    {"change_number": "CHG", "cab_approved": True}, {"business_impact": "checkout is down", "affected_users": 5},
    {"entity_type": "lead", "record_count": 5}, {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"},
    {"role_name": "Owner", "principal_id": "p", "scope": "/subscriptions/1"},
    {"vault_name": "prod", "secret_name": "s"},
]
CONS = [
    {}, {"liability_cap": 10000}, {"liability_cap": 10000, "dual_control": True}, {"payment_limit": 50},
    {"dataset_allowlist": ["leads"], "deletable_objects": ["Lead"], "approved_apex_scripts": ["cleanup"],
     "exportable_reports": ["r1"]},
    {"override_window_seconds": 600}, {"allow_admin_policy": True}, {"allow_subscription_owner": False},
    {"protected_vaults": ["prod"]}, {"bypass_rate_limit": True}, {"allow_outside_business_hours": True},
    {"max_delete_count": "many"},
]
TENANTS = ["acme", "hours", "tight", "bound", "nobody"]
TIMES = [1700000100, 1699960000, 1699711200, 1700090000, None]


def case(i):
    act = rng.choice(ACTIONS)
    leg = rng.choice(list(LEGS))
    inp = {
        "agent": {"spiffe_id": AGENT},
        "poa": {"sub": AGENT, "act": act, "con": rng.choice(CONS), "leg": LEGS[leg],
                "iat": 1700000000, "exp": 1700000000 + rng.choice([60, 300, 301, 0]), "jti": f"j-{i}"},
        "request": {"method": rng.choice(["GET", "POST"]), "path": rng.choice(["/api/x", "/health"]),
                    "action": act if rng.random() > 0.08 else "other.action", "params": rng.choice(PARAMS)},
        "policy": {"max_ttl_seconds": rng.choice([300, 900, "300"])},
        "rate_limit_state": {act: rng.choice([0, 3, 99, 100, 100.5])},
        "tenant": {"id": rng.choice(TENANTS)},
    }
    t = rng.choice(TIMES)
    if t is not None:
        inp["current_time_ns"] = t * 1000000000
    if rng.random() < 0.1:
        inp["poa"]["sub"] = "spiffe://acme.example/agent/other"
    if rng.random() < 0.15:
        inp["platform"] = {"sub": rng.choice(["a", AGENT, "app-1", "x"])}
    if rng.random() < 0.05:
        del inp["poa"][rng.choice(["jti", "con", "leg", "iat"])]
    return {"name": f"gen-{i:03d}-{act}-{leg}", "input": inp}


NO_POA = [
    ("crm.contact.read", "GET", "/crm"), ("kb.docs.search", "POST", "/kb"), ("crm.contact.read", "DELETE", "/crm"),
    ("", "GET", "/health"), ("", "POST", "/metrics"), ("sap.payment.execute", "POST", "/pay"),
    ("x.y", "GET", "/x"), ("", "GET", "/ping"),
]

# Fixed cases after the random ones (so adding here keeps the others stable):
# approval blocks of the wrong shape, where the engines once differed, and one
# action of every critical family with each kind of evidence.
ODD_LEGS = {
    "dual_scalar": {**GOOD_LEG, "dual_control": {"required": True, "approvers": "alice,bob"}},
    "dual_null": {**GOOD_LEG, "dual_control": {"required": True, "approvers": None}},
    "dual_object": {**GOOD_LEG, "dual_control": {"required": True, "approvers": {
        "a": {"id": "alice@acme", "timestamp": 1700000000}, "b": {"id": "bob@acme"}}}},
    "exec_scalar": {**GOOD_LEG, "executive_control": {"required": True, "approvers": "ceo,cfo"}},
    "exec_object": {**GOOD_LEG, "executive_control": {"required": True, "approvers": {
        "x": {"id": "ceo@acme", "role": "CEO"}, "y": {"id": "cfo@acme", "role": "CFO"}}}},
    "approval_scalar": {**GOOD_LEG, "approval": "alice@acme"},
    "exec_and_dual_scalar": {**LEGS["exec"], "dual_control": {"required": True, "approvers": 7}},
    "dual_and_exec_scalar": {**LEGS["dual"], "executive_control": {"required": True, "approvers": "x"}},
}
CRITICAL_FAMILIES = [
    "org.company.dissolve", "finance.bond.issuance", "treasury.investment.major", "legal.settlement.major",
    "compliance.regulator.filing_major", "data.employee.full_export", "gdpr.breach.notify",
    "infra.datacenter.decommission", "security.audit.disable", "security.master_key.rotate",
    "ot.reactor.scram", "ot.safety.system_shutdown",
]


def fixed(name, act, leg):
    inp = {
        "agent": {"spiffe_id": AGENT},
        "poa": {"sub": AGENT, "act": act, "con": {}, "leg": leg,
                "iat": 1700000000, "exp": 1700000300, "jti": f"j-{name}"},
        "request": {"method": "POST", "path": "/api/x", "action": act, "params": {}},
        "policy": {"max_ttl_seconds": 300},
        "current_time_ns": 1700000100 * 1000000000,
        "tenant": {"id": "acme"},
    }
    return {"name": name, "input": inp}


# Route captures against con members of every JSON type.
ROUTE_CASES = [
    ({"vendor_id": "17"}, {"vendor_id": "17"}), ({"vendor_id": "17"}, {"vendor_id": "18"}),
    ({"vendor_id": 17}, {"vendor_id": "17"}), ({"vendor_id": 17}, {"vendor_id": "170"}),
    ({"vendor_id": 1.5}, {"vendor_id": "1.5"}), ({"vendor_id": True}, {"vendor_id": "true"}),
    ({"vendor_id": None}, {"vendor_id": "null"}), ({"vendor_id": ["17"]}, {"vendor_id": "17"}),
    ({"vendor_id": {"id": "17"}}, {"vendor_id": "17"}), ({"amount": 5}, {"vendor_id": "18"}),
    ({"vendor_id": "é"}, {"vendor_id": "é"}), ({"a": "1", "b": "2"}, {"a": "1", "b": "3"}),
]


def fixed_cases():
    for i, (con, params) in enumerate(ROUTE_CASES):
        c = fixed(f"route-{i:02d}", "crm.contact.read", GOOD_LEG)
        c["input"]["poa"]["con"] = con
        c["input"]["request"].update({"method": "GET", "route": "/api/vendors/{vendor_id}",
                                      "route_params": params})
        yield c
    for leg_name, leg in ODD_LEGS.items():
        for act in ["crm.contact.update", "sap.vendor.create", "org.company.merge"]:
            yield fixed(f"odd-{leg_name}-{act}", act, leg)
    for i, act in enumerate(CRITICAL_FAMILIES):
        for leg_name in ["exec", "dual", "medium", "exec_one_person"]:
            yield fixed(f"critical-{i:02d}-{act}-{leg_name}", act, LEGS[leg_name])


# Adversarial cases (issue 12), appended after everything above: unknown and
# lookalike actions, approvers under two spellings, blank ids, approval
# timestamps missing / in the future / stale, con of the wrong type, escape
# switches from con vs from evidence, and blocklist spellings.
TS = 1700000000


def stamped(approvers, ts=TS):
    return [{**a, "timestamp": ts} for a in approvers]


def dual(approvers, escapes=None):
    block = {"required": True, "approvers": approvers}
    if escapes is not None:
        block["escapes"] = escapes
    return {**GOOD_LEG, "dual_control": block}


def execs(approvers, escapes=None):
    block = {"required": True, "approvers": approvers}
    if escapes is not None:
        block["escapes"] = escapes
    return {**GOOD_LEG, "executive_control": block}


def medium(approver, ts=TS, escapes=None):
    block = {"approver_id": approver}
    if ts is not None:
        block["timestamp"] = ts
    if escapes is not None:
        block["escapes"] = escapes
    return {**GOOD_LEG, "approval": block}


DUAL_OK = dual(stamped([{"id": "alice@acme"}, {"id": "bob@acme"}]))
EXEC_OK = execs(stamped([{"id": "ceo@acme", "role": "CEO"}, {"id": "cfo@acme", "role": "CFO"}]))


def adversarial_cases():
    def c(name, act, leg, con=None, params=None, tenant="acme", now=1700000100, request_action=None, extra=None):
        x = fixed(f"adv-{name}", act, leg)
        inp = x["input"]
        inp.update(extra or {})
        inp["poa"]["con"] = {} if con is None else con
        inp["request"]["params"] = params or {}
        inp["request"]["action"] = act if request_action is None else request_action
        inp["tenant"]["id"] = tenant
        inp["current_time_ns"] = now * 1000000000
        return x

    # Actions.
    for i, a in enumerate(["made.up.action", "CRM.contact.read", "crm.contact.read ", " crm.contact.read",
                           "crm..read", "crm", "crm.contact-read", "crm.contact.re\u0430d", "crm.contact.read\n",
                           "a." + "b" * 256, 7, None, ["crm.contact.read"], {"a": 1}, True, ""]):
        yield c(f"act-{i:02d}", a, GOOD_LEG, request_action=a if isinstance(a, str) else "crm.contact.read")
    yield c("act-unknown-exec", "made.up.action", EXEC_OK)
    yield c("act-tenant-extension-tier", "made.up.action", GOOD_LEG, tenant="bound", extra={"platform": {"sub": "app-1"}})
    yield c("act-tenant-extension-other-tenant", "made.up.action", GOOD_LEG, tenant="hours")
    for i, (a, m, p) in enumerate([("x.y.z", "GET", "/health"), ("CRM.contact.read", "GET", "/crm"),
                                   ("made.up.action", "GET", "/x"), ("crm.contact.read", "GET", "/crm")]):
        yield {"name": f"adv-no-poa-{i}", "input": {
            "agent": {"spiffe_id": AGENT}, "request": {"method": m, "path": p, "action": a, "params": {}}}}
    # con of the wrong type.
    for i, con in enumerate(["x", 7, True, [], ["allow_admin_policy"]]):
        yield c(f"con-{i}", "crm.contact.read", GOOD_LEG, con=con)
    # Approvers in canonical form.
    spelled = {
        "dual-two-spellings": ("sap.vendor.create", dual(stamped([{"id": "alice@acme"}, {"id": " Alice@ACME "}]))),
        "dual-empty-id": ("sap.vendor.create", dual(stamped([{"id": "alice@acme"}, {"id": ""}]))),
        "dual-blank-id": ("sap.vendor.create", dual(stamped([{"id": "alice@acme"}, {"id": " \t "}]))),
        "dual-self-spelling": ("sap.vendor.create", dual(stamped([{"id": "a"}, {"id": "b"}, {"id": " SPIFFE://ACME.example/agent/A"}]))),
        "dual-entry-string": ("sap.vendor.create", dual(["alice@acme", "bob@acme"])),
        "medium-self-spelling": ("crm.contact.update", medium(" Spiffe://acme.example/Agent/a")),
        "medium-blank": ("crm.contact.update", medium("   ")),
        "exec-two-spellings": ("org.company.merge", execs(stamped([{"id": "ceo@acme", "role": "CEO"}, {"id": "CEO@acme ", "role": "CFO"}]))),
        "exec-blank-id": ("org.company.merge", execs(stamped([{"id": "ceo@acme", "role": "CEO"}, {"id": " ", "role": "CFO"}]))),
        "exec-role-spelling": ("org.company.merge", execs(stamped([{"id": "ceo@acme", "role": " Ceo "}, {"id": "cfo@acme", "role": "CFO"}]))),
        "exec-role-dotted-i": ("org.company.merge", execs(stamped([{"id": "ceo@acme", "role": "C\u0130SO"}, {"id": "cfo@acme", "role": "CFO"}]))),
        "exec-id-non-ascii-case": ("org.company.merge", execs(stamped([{"id": "\u00c9ve", "role": "CEO"}, {"id": "\u00e9ve", "role": "CFO"}]))),
    }
    for name, (act, leg) in spelled.items():
        yield c(name, act, leg)
    yield c("iam-self-spelling", "iam.role.assign", DUAL_OK,
            params={"role_name": "reader", "target_user_id": " SPIFFE://acme.example/agent/a"})
    # Timestamps.
    timed = {
        "medium-missing": ("crm.contact.update", medium("alice@acme", ts=None), 1700000100),
        "medium-string": ("crm.contact.update", medium("alice@acme", ts="1700000000"), 1700000100),
        "medium-future": ("crm.contact.update", medium("alice@acme", ts=1700000161), 1700000100),
        "medium-skew": ("crm.contact.update", medium("alice@acme", ts=1700000160), 1700000100),
        "medium-stale-day": ("crm.contact.update", medium("alice@acme"), TS + 86401),
        "dual-one-missing": ("sap.vendor.create", dual([{"id": "a", "timestamp": TS}, {"id": "b"}]), 1700000100),
        "dual-future": ("sap.vendor.create", dual([{"id": "a", "timestamp": TS}, {"id": "b", "timestamp": 1800000000}]), 1700000100),
        "exec-missing": ("org.company.merge", execs([{"id": "x", "role": "CEO"}, {"id": "y", "role": "CFO"}]), 1700000100),
        "exec-null": ("org.company.merge", execs([{"id": "x", "role": "CEO", "timestamp": None}, {"id": "y", "role": "CFO", "timestamp": TS}]), 1700000100),
        "low-with-untimed-approval": ("crm.contact.read", medium("alice@acme", ts=None), 1700000100),
    }
    for name, (act, leg, now) in timed.items():
        yield c(f"ts-{name}", act, leg, now=now)
    # The "hours" tenant has a 3600 s window; the default is 300 s with a time policy.
    yield c("ts-tenant-window-stale", "crm.contact.update", medium("alice@acme"), tenant="hours", now=TS + 3601)
    yield c("ts-tenant-window-fresh", "crm.contact.update", medium("alice@acme"), tenant="hours", now=TS + 3600)
    # Escape switches.
    admin = {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}
    yield c("esc-con-only", "aws.iam.policy_attach", DUAL_OK, con={"allow_admin_policy": True}, params=admin)
    yield c("esc-evidence", "aws.iam.policy_attach", dual(DUAL_OK["dual_control"]["approvers"], {"allow_admin_policy": True}), params=admin)
    yield c("esc-evidence-string", "aws.iam.policy_attach", dual(DUAL_OK["dual_control"]["approvers"], {"allow_admin_policy": "true"}), params=admin)
    yield c("esc-wrong-block", "aws.iam.policy_attach", {**DUAL_OK, "approval": {"approver_id": "x", "timestamp": TS, "escapes": {"allow_admin_policy": True}}}, params=admin)
    yield c("esc-low-evidence", "crm.contact.read", medium("alice@acme", escapes={"bypass_rate_limit": True}), tenant="tight",
            extra={"rate_limit_state": {"crm.contact.read": 5}})
    yield c("esc-low-con", "crm.contact.read", GOOD_LEG, con={"bypass_rate_limit": True}, tenant="tight",
            extra={"rate_limit_state": {"crm.contact.read": 5}})
    yield c("esc-medium-evidence", "crm.contact.update", medium("alice@acme", escapes={"bypass_rate_limit": True}), tenant="tight",
            extra={"rate_limit_state": {"crm.contact.update": 500}})
    yield c("esc-medium-con", "crm.contact.update", medium("alice@acme"), con={"bypass_rate_limit": True}, tenant="tight",
            extra={"rate_limit_state": {"crm.contact.update": 500}})
    yield c("esc-hours-con", "sap.vendor.create", DUAL_OK, con={"allow_outside_business_hours": True}, tenant="hours")
    yield c("esc-hours-evidence", "sap.vendor.create", dual(DUAL_OK["dual_control"]["approvers"], {"allow_outside_business_hours": True}), tenant="hours")
    yield c("esc-sap-con", "sap.vendor.change", DUAL_OK, con={"liability_cap": 10000, "dual_control": True}, params={"amount": 6000})
    yield c("esc-sap-evidence", "sap.vendor.change", dual(DUAL_OK["dual_control"]["approvers"], {"dual_control": True}), con={"liability_cap": 10000}, params={"amount": 6000})
    yield c("esc-exec-evidence", "org.company.merge", execs(EXEC_OK["executive_control"]["approvers"], {"bypass_rate_limit": True}))
    # Blocklists.
    for i, arn in enumerate(["arn:aws-cn:iam::aws:policy/AdministratorAccess", "arn:aws-us-gov:iam::aws:policy/AdministratorAccess",
                             "arn:aws-iso:iam::aws:policy/AdministratorAccess", "arn:aws-iso-b:iam::aws:policy/AdministratorAccess",
                             "ARN:AWS:IAM::AWS:POLICY/ADMINISTRATORACCESS", " arn:aws:iam::aws:policy/job-function/AdministratorAccess",
                             "arn:aws-us-gov:iam::aws:policy/ReadOnlyAccess"]):
        yield c(f"aws-{i}", "aws.iam.policy_attach", DUAL_OK, params={"policy_arn": arn})
    for i, (role, scope) in enumerate([
            ("Owner", "/Subscriptions/123"), ("owner", "/SUBSCRIPTIONS/123/"), ("Owner", "/"),
            ("Owner", "/providers/Microsoft.Management/managementGroups/mg1"), ("OWNER", " /subscriptions/1 "),
            ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "/subscriptions/1"),
            ("/providers/Microsoft.Authorization/roleDefinitions/8E3AF657-A8FF-443C-A75C-2FE8C4BCB635", "/subscriptions/1"),
            ("Owner", "/subscriptions/1/resourceGroups/rg/.."), ("Owner", "/subscriptions/1/resourceGroups/rg%2F.."),
            ("Owner", "/subscriptions/1/resourceGroups/rg"), ("Reader", "/"), ("Owner", "/subscriptions/1\\resourceGroups\\rg")]):
        yield c(f"azure-{i:02d}", "azure.rbac.assign", DUAL_OK, params={"role_name": role, "principal_id": "p", "scope": scope})
    for i, (name, protected) in enumerate([
            ("PROD", ["prod"]), (" Prod ", ["prod"]), ("prod", ["PROD"]), ("https://prod.vault.azure.net/", ["prod"]),
            ("/subscriptions/1/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/Prod", ["prod"]),
            ("dev", ["prod"]), ("dev", "prod"), ("prod", [7, "prod"])]):
        yield c(f"vault-{i}", "azure.keyvault.secret_set", DUAL_OK, con={"protected_vaults": protected},
                params={"vault_name": name, "secret_name": "s"})


def fast_path_cases():
    """Inputs the policy's fast path must answer exactly like the full chain."""
    approvers = DUAL_OK["dual_control"]["approvers"]
    legs = {
        "dual-extra-string-entry": dual(approvers + ["carol@acme"]),
        "dual-extra-null-entry": dual(approvers + [None]),
        "stray-approval-false": {**DUAL_OK, "approval": False},
        "stray-approval-null": {**DUAL_OK, "approval": None},
        "stray-approval-stale": {**DUAL_OK, "approval": {"approver_id": "x", "timestamp": 1600000000}},
        "stray-exec-untimed": {**DUAL_OK, "executive_control": {"required": True, "approvers": [{"id": "x"}]}},
        "stray-exec-scalar": {**DUAL_OK, "executive_control": {"required": True, "approvers": "x"}},
        "escapes-not-object": dual(approvers, "allow_admin_policy"),
    }
    for name, leg in legs.items():
        for act in ["sap.vendor.create", "aws.iam.policy_attach", "crm.contact.read"]:
            x = fixed(f"fast-{name}-{act}", act, leg)
            x["input"]["request"]["params"] = {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}
            yield x


if __name__ == "__main__":
    for i, (a, m, p) in enumerate(NO_POA):
        print(json.dumps({"name": f"no-poa-{i}", "input": {
            "agent": {"spiffe_id": AGENT}, "request": {"method": m, "path": p, "action": a, "params": {}}}},
            sort_keys=True))
    for i in range(200):
        print(json.dumps(case(i), sort_keys=True))
    for c in fixed_cases():
        print(json.dumps(c, sort_keys=True))
    for c in adversarial_cases():
        print(json.dumps(c, sort_keys=True))
    for c in fast_path_cases():
        print(json.dumps(c, sort_keys=True))
