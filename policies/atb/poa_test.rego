# Unit tests for data.atb.poa (run by `cargo test` on regorus and by the
# OPA parity test on real OPA). Every reason code, tier and constraint
# family has a pass and a fail side.
package atb.poa_test

import rego.v1

import data.atb.poa

agent := "spiffe://acme.example/agent/a"

good_leg := {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "owner@acme"}}

medium_leg := object.union(good_leg, {"approval": {"approver_id": "alice@acme", "timestamp": 1700000000}})

# Approval evidence as AgentAuth writes it: every entry timestamped.
ts := 1700000000

dual_leg := object.union(good_leg, {"dual_control": {"required": true, "approvers": [{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": ts}]}})

exec_leg := object.union(good_leg, {"executive_control": {"required": true, "approvers": [
	{"id": "ceo@acme", "role": "CEO", "timestamp": ts},
	{"id": "cfo@acme", "role": "cfo", "timestamp": ts},
]}})

# An input for `act` with request params, mandate constraints and leg.
mk(act, params, con, leg) := {
	"agent": {"spiffe_id": agent},
	"poa": {"sub": agent, "act": act, "con": con, "leg": leg, "iat": 1700000000, "exp": 1700000300, "jti": "j-1"},
	"request": {"method": "POST", "path": "/api/x", "action": act, "params": params},
	"policy": {"max_ttl_seconds": 300},
	"current_time_ns": 1700000100000000000,
	"tenant": {"id": "acme"},
}

# A high-risk input with dual control.
hi(act, params, con) := mk(act, params, con, dual_leg)

# The same, with escape switches in the dual-control evidence.
hi_esc(act, params, con, escapes) := mk(act, params, con, object.union(dual_leg, {"dual_control": {"escapes": escapes}}))

decide(i) := d if {
	d := poa.decision with input as i
}

allowed(i) if decide(i).allow == true

denied(i, reason) if {
	d := decide(i)
	d.allow == false
	d.reason == reason
}

constraint_denied(i) if denied(i, "action_denied")

# --- no PoA ----------------------------------------------------------------
no_poa(action, method, path) := {
	"agent": {"spiffe_id": agent},
	"request": {"method": method, "path": path, "action": action, "params": {}},
}

test_no_poa_low_risk_action_allowed if {
	d := decide(no_poa("crm.contact.read", "GET", "/crm"))
	d.allow == true
	d.reason == "allow_low_risk_without_poa"
}

test_no_poa_low_risk_post_where_allowed if allowed(no_poa("kb.docs.search", "POST", "/kb"))

test_no_poa_low_risk_wrong_method if denied(no_poa("crm.contact.read", "DELETE", "/crm"), "poa_required_for_action")

test_no_poa_safe_path_get if allowed(no_poa("", "GET", "/health"))

test_no_poa_safe_path_post_denied if denied(no_poa("", "POST", "/health"), "poa_required_for_action")

test_no_poa_high_risk_denied if {
	d := decide(no_poa("sap.payment.execute", "POST", "/pay"))
	d.reason == "poa_required_for_action"
	d.risk_tier == "high"
}

test_no_poa_unknown_action_denied if {
	d := decide(no_poa("x.y.z", "GET", "/x"))
	d.reason == "unknown_action"
	d.risk_tier == "critical"
}

# A safe path does not carry an unknown action through either.
test_no_poa_safe_path_unknown_action_denied if denied(no_poa("x.y.z", "GET", "/health"), "unknown_action")

test_no_poa_case_variant_action_denied if denied(no_poa("CRM.contact.read", "GET", "/crm"), "unknown_action")

test_empty_poa_is_no_poa if denied(object.union(no_poa("sap.payment.execute", "POST", "/pay"), {"poa": {}}), "poa_required_for_action")

# --- required fields, leg, ttl ------------------------------------------------
without_field(f) := json.remove(mk("crm.contact.read", {}, {}, good_leg), [concat("/", ["poa", f])])

test_missing_sub if denied(without_field("sub"), "missing_required_fields")

test_missing_act if denied(without_field("act"), "missing_required_fields")

test_missing_con if denied(without_field("con"), "missing_required_fields")

test_missing_leg if denied(without_field("leg"), "missing_required_fields")

test_missing_iat if denied(without_field("iat"), "missing_required_fields")

test_missing_exp if denied(without_field("exp"), "missing_required_fields")

test_missing_jti if {
	d := decide(without_field("jti"))
	d.reason == "missing_required_fields"
	d.details == {"jti": true}
}

test_null_field_is_missing if denied(json.patch(mk("crm.contact.read", {}, {}, good_leg), [{"op": "replace", "path": "/poa/con", "value": null}]), "missing_required_fields")

test_leg_not_object if {
	d := decide(mk("crm.contact.read", {}, {}, "contract"))
	d.reason == "leg_invalid"
	d.details == {"leg": true}
}

test_leg_missing_jurisdiction_named if {
	d := decide(mk("crm.contact.read", {}, {}, {"accountable_party": {"type": "user", "id": "o"}}))
	d.reason == "leg_invalid"
	d.details == {"leg.jurisdiction": true}
}

test_leg_empty_jurisdiction if denied(mk("crm.contact.read", {}, {}, object.union(good_leg, {"jurisdiction": ""})), "leg_invalid")

test_leg_missing_accountable_party if {
	d := decide(mk("crm.contact.read", {}, {}, {"jurisdiction": "EU"}))
	d.details == {"leg.accountable_party": true}
}

test_leg_accountable_party_missing_type if {
	d := decide(mk("crm.contact.read", {}, {}, {"jurisdiction": "EU", "accountable_party": {"id": "o"}}))
	d.details == {"leg.accountable_party.type": true}
}

test_leg_accountable_party_missing_id if {
	d := decide(mk("crm.contact.read", {}, {}, {"jurisdiction": "EU", "accountable_party": {"type": "user"}}))
	d.details == {"leg.accountable_party.id": true}
}

test_leg_accountable_party_empty_id if denied(mk("crm.contact.read", {}, {}, {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": ""}}), "leg_invalid")

with_times(iat, exp) := json.patch(mk("crm.contact.read", {}, {}, good_leg), [
	{"op": "replace", "path": "/poa/iat", "value": iat},
	{"op": "replace", "path": "/poa/exp", "value": exp},
])

test_ttl_zero if denied(with_times(100, 100), "ttl_invalid")

test_ttl_negative if denied(with_times(200, 100), "ttl_invalid")

test_ttl_over_max if denied(with_times(0, 301), "ttl_invalid")

test_ttl_at_max if allowed(with_times(0, 300))

test_ttl_raised_max_still_capped if denied(json.patch(with_times(0, 901), [{"op": "replace", "path": "/policy/max_ttl_seconds", "value": 3600}]), "ttl_invalid")

test_ttl_raised_max_within_cap if allowed(json.patch(with_times(0, 900), [{"op": "replace", "path": "/policy/max_ttl_seconds", "value": 3600}]))

test_ttl_non_number_max_defaults_300 if denied(json.patch(with_times(0, 301), [{"op": "replace", "path": "/policy/max_ttl_seconds", "value": "900"}]), "ttl_invalid")

test_ttl_string_times_invalid if denied(with_times("0", "100"), "ttl_invalid")

# --- identity and action binding --------------------------------------------
test_sub_mismatch if denied(json.patch(mk("crm.contact.read", {}, {}, good_leg), [{"op": "replace", "path": "/poa/sub", "value": "spiffe://acme.example/agent/other"}]), "sub_mismatch")

test_missing_agent_is_sub_mismatch if denied(json.remove(mk("crm.contact.read", {}, {}, good_leg), ["agent"]), "sub_mismatch")

# --- route captures ----------------------------------------------------------
routed(con, params) := json.patch(mk("crm.contact.read", {}, con, good_leg), [
	{"op": "add", "path": "/request/route", "value": "/api/vendors/{vendor_id}"},
	{"op": "add", "path": "/request/route_params", "value": params},
])

test_route_param_equal_to_con_allowed if allowed(routed({"vendor_id": "17"}, {"vendor_id": "17"}))

test_route_param_numeric_con_allowed if allowed(routed({"vendor_id": 17}, {"vendor_id": "17"}))

test_route_param_unrelated_to_con_allowed if allowed(routed({"amount": 5}, {"vendor_id": "18"}))

test_route_param_other_than_con_denied if {
	d := decide(routed({"vendor_id": "17"}, {"vendor_id": "18"}))
	d.allow == false
	d.reason == "route_param_mismatch"
	d.details.params == ["vendor_id"]
}

test_route_param_numeric_con_other_denied if denied(routed({"vendor_id": 17}, {"vendor_id": "170"}), "route_param_mismatch")

test_route_param_object_con_denied if denied(routed({"vendor_id": {"id": "17"}}, {"vendor_id": "17"}), "route_param_mismatch")

test_action_mismatch if denied(json.patch(mk("crm.contact.read", {}, {}, good_leg), [{"op": "replace", "path": "/request/action", "value": "crm.contact.update"}]), "action_mismatch")

test_missing_request_action_is_mismatch if denied(json.remove(mk("crm.contact.read", {}, {}, good_leg), ["request/action"]), "action_mismatch")

# The safe path no longer skips constraints: a huge payment on GET /health.
test_safe_path_does_not_bypass_constraints if {
	i := json.patch(hi("sap.payment.execute", {"amount": 99999999}, {}), [
		{"op": "replace", "path": "/request/method", "value": "GET"},
		{"op": "replace", "path": "/request/path", "value": "/health"},
	])
	constraint_denied(i)
}

# --- platform binding ---------------------------------------------------------
bound(mode, sub, extra) := i if {
	i := object.union(mk("crm.contact.read", {}, {}, good_leg), {"platform": {"sub": sub}, "tenant": {"id": "bound"}})
}

binding_data(mode) := {"bound": {"platform_binding": {"mode": mode, "mappings": {"app-1": "^spiffe://acme\\.example/agent/[a-z]+$"}}}}

test_binding_none if allowed(bound("none", "whatever", {})) with data.tenants as binding_data("none")

test_binding_exact_ok if allowed(bound("exact", agent, {})) with data.tenants as binding_data("exact")

test_binding_exact_mismatch if denied(bound("exact", "someone", {}), "platform_spiffe_binding_mismatch") with data.tenants as binding_data("exact")

test_binding_exact_without_platform if denied(mk("crm.contact.read", {}, {}, good_leg), "platform_spiffe_binding_mismatch") with data.platform_binding as {"mode": "exact"}

test_binding_prefix_ok if allowed(bound("prefix", "agent", {})) with data.tenants as binding_data("prefix")

test_binding_prefix_last_segment_ok if allowed(bound("prefix", "a", {})) with data.tenants as binding_data("prefix")

test_binding_prefix_mismatch if denied(bound("prefix", "other", {}), "platform_spiffe_binding_mismatch") with data.tenants as binding_data("prefix")

test_binding_mapping_ok if allowed(bound("mapping", "app-1", {})) with data.tenants as binding_data("mapping")

test_binding_mapping_unknown_sub if denied(bound("mapping", "app-2", {}), "platform_spiffe_binding_mismatch") with data.tenants as binding_data("mapping")

test_binding_unknown_mode_denies if denied(bound("strict", agent, {}), "platform_spiffe_binding_mismatch") with data.tenants as binding_data("strict")

test_binding_global_fallback if denied(mk("crm.contact.read", {}, {}, good_leg), "platform_spiffe_binding_mismatch") with data.platform_binding as {"mode": "prefix"}

# --- tiers and approvals --------------------------------------------------------
tier(act) := decide(mk(act, {}, {}, good_leg)).risk_tier

test_tier_low if tier("crm.contact.read") == "low"

test_tier_unknown_is_critical if tier("made.up.action") == "critical"

test_tier_medium if tier("crm.contact.update") == "medium"

test_tier_high if tier("sap.vendor.create") == "high"

test_tier_critical if tier("finance.wire.over_10m") == "critical"

test_catalog_counts if {
	count(data.atb.catalog.low_risk) == 49
	count([a | data.atb.catalog.tiers[a] == "medium"]) == 37
	count([a | data.atb.catalog.tiers[a] == "high"]) == 74
	count([a | data.atb.catalog.tiers[a] == "critical"]) == 34
	count(data.atb.catalog.safe_paths) == 4
}

# One action of each critical family: org, finance, legal/regulatory, data,
# infrastructure, security kill-switches, OT emergency.
test_tier_critical_families if {
	every a in [
		"org.company.dissolve", "treasury.hedge.significant", "legal.settlement.major",
		"compliance.violation.disclose", "data.encryption_keys.export", "gdpr.breach.notify",
		"infra.disaster_recovery.invoke", "security.audit.disable", "security.master_key.rotate",
		"ot.reactor.scram", "ot.pipeline.emergency_shutoff",
	] {
		tier(a) == "critical"
	}
}

# A critical action never passes on a lower tier's evidence.
test_critical_family_needs_executives if {
	every a in ["security.firewall.disable", "finance.dividend.declare", "infra.network.core_change"] {
		denied(mk(a, {}, {}, dual_leg), "critical_risk_executive_approval_required")
		denied(mk(a, {}, {}, medium_leg), "critical_risk_executive_approval_required")
		allowed(mk(a, {}, {}, exec_leg))
	}
}

test_tenant_tier_override if {
	i := object.union(mk("made.up.action", {}, {}, good_leg), {"tenant": {"id": "t2"}})
	d := decide(i) with data.tenants as {"t2": {"catalog": {"tiers": {"made.up.action": "high"}}}}
	d.reason == "high_risk_dual_control_required"
}

test_tenant_bogus_tier_is_critical if {
	i := object.union(mk("made.up.action", {}, {}, good_leg), {"tenant": {"id": "t2"}})
	d := decide(i) with data.tenants as {"t2": {"catalog": {"tiers": {"made.up.action": "urgent"}}}}
	d.risk_tier == "critical"
}

test_other_tenant_override_does_not_apply if {
	i := object.union(mk("made.up.action", {}, {}, good_leg), {"tenant": {"id": "t3"}})
	denied(i, "unknown_action") with data.tenants as {"t2": {"catalog": {"tiers": {"made.up.action": "high"}}}}
}

test_low_allowed if allowed(mk("crm.contact.read", {}, {}, good_leg))

test_medium_without_approval if {
	d := decide(mk("crm.contact.update", {}, {}, good_leg))
	d.reason == "medium_risk_approval_required"
	d.details == {"tier": "medium", "action": "crm.contact.update"}
}

test_medium_with_approval if allowed(mk("crm.contact.update", {}, {}, medium_leg))

test_medium_self_approval if denied(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": agent}})), "medium_risk_approval_required")

test_medium_empty_approver if denied(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": ""}})), "medium_risk_approval_required")

test_medium_non_string_approver if denied(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": 7}})), "medium_risk_approval_required")

test_high_without_dual if denied(mk("sap.vendor.create", {}, {}, good_leg), "high_risk_dual_control_required")

test_high_with_dual if allowed(hi("sap.vendor.create", {}, {}))

dual_with(approvers, required) := object.union(good_leg, {"dual_control": {"required": required, "approvers": approvers}})

test_high_dual_not_required_flag if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "a"}, {"id": "b"}], false)), "high_risk_dual_control_required")

test_high_single_approver if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "a"}], true)), "high_risk_dual_control_required")

test_high_duplicate_approver if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "a"}, {"id": "a"}], true)), "high_risk_dual_control_required")

test_high_self_in_approvers if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "a"}, {"id": "b"}, {"id": agent}], true)), "high_risk_dual_control_required")

test_high_approvers_not_array if denied(mk("sap.vendor.create", {}, {}, dual_with({"a": 1}, true)), "high_risk_dual_control_required")

test_high_approvers_scalar if denied(mk("sap.vendor.create", {}, {}, dual_with("alice,bob", true)), "high_risk_dual_control_required")

test_high_approvers_null if denied(mk("sap.vendor.create", {}, {}, dual_with(null, true)), "high_risk_dual_control_required")

test_critical_without_exec if denied(mk("org.company.merge", {}, {}, good_leg), "critical_risk_executive_approval_required")

test_critical_with_exec if allowed(mk("org.company.merge", {}, {}, exec_leg))

exec_with(approvers) := object.union(good_leg, {"executive_control": {"required": true, "approvers": approvers}})

test_critical_one_person_two_roles if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "x", "role": "CEO"}, {"id": "x", "role": "CFO"}, {"id": "y", "role": "manager"}])), "critical_risk_executive_approval_required")

test_critical_non_executive_roles if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "x", "role": "manager"}, {"id": "y", "role": "director"}])), "critical_risk_executive_approval_required")

test_critical_single_exec if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "x", "role": "CEO"}])), "critical_risk_executive_approval_required")

test_critical_self_listed if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "x", "role": "CEO"}, {"id": "y", "role": "CFO"}, {"id": agent, "role": "cto"}])), "critical_risk_executive_approval_required")

test_critical_non_string_role_ignored if allowed(mk("org.company.merge", {}, {}, exec_with([{"id": "x", "role": "CEO", "timestamp": ts}, {"id": "y", "role": "CFO", "timestamp": ts}, {"id": "z", "role": 7, "timestamp": ts}])))

test_critical_approvers_scalar if denied(mk("org.company.merge", {}, {}, exec_with("ceo,cfo")), "critical_risk_executive_approval_required")

test_critical_approvers_object if denied(mk("org.company.merge", {}, {}, exec_with({"ceo": {"id": "x", "role": "CEO"}, "cfo": {"id": "y", "role": "CFO"}})), "critical_risk_executive_approval_required")

test_critical_dual_control_is_not_enough if denied(mk("org.company.merge", {}, {}, dual_leg), "critical_risk_executive_approval_required")

test_critical_accountable_party_may_approve if allowed(mk("org.company.merge", {}, {}, object.union(exec_leg, {"accountable_party": {"type": "user", "id": "cfo@acme"}})))

# --- constraints: SAP -------------------------------------------------------------
test_sap_vendor_change_small if allowed(hi("sap.vendor.change", {"amount": 1000}, {"liability_cap": 5000}))

test_sap_vendor_change_over_cap if constraint_denied(hi("sap.vendor.change", {"amount": 1000}, {"liability_cap": 500}))

test_sap_vendor_change_large_needs_flag if constraint_denied(hi("sap.vendor.change", {"amount": 6000}, {"liability_cap": 10000}))

test_sap_vendor_change_large_with_flag if allowed(hi_esc("sap.vendor.change", {"amount": 6000}, {"liability_cap": 10000, "dual_control": true}, {"dual_control": true}))

test_sap_vendor_change_large_flag_in_con_only if constraint_denied(hi("sap.vendor.change", {"amount": 6000}, {"liability_cap": 10000, "dual_control": true}))

test_sap_vendor_change_cap_wrong_type if constraint_denied(hi("sap.vendor.change", {"amount": 10}, {"liability_cap": "lots"}))

test_sap_bank_change_ok if allowed(hi("sap.vendor.bank_change", {"second_channel_verified": true, "change_reason": "vendor moved banks"}, {}))

test_sap_bank_change_unverified if constraint_denied(hi("sap.vendor.bank_change", {"change_reason": "vendor moved banks"}, {}))

test_sap_bank_change_short_reason if constraint_denied(hi("sap.vendor.bank_change", {"second_channel_verified": true, "change_reason": "moved"}, {}))

test_sap_payment_default_limit if allowed(hi("sap.payment.execute", {"amount": 100000}, {}))

test_sap_payment_over_default if constraint_denied(hi("sap.payment.execute", {"amount": 100001}, {}))

test_sap_payment_custom_limit if constraint_denied(hi("sap.payment.execute", {"amount": 600}, {"payment_limit": 500}))

test_sap_payment_zero if constraint_denied(hi("sap.payment.execute", {"amount": 0}, {}))

test_sap_payment_string_amount if constraint_denied(hi("sap.payment.execute", {"amount": "500"}, {}))

test_sap_batch_defaults if allowed(hi("sap.payment.batch_release", {"batch_count": 100, "total_amount": 1000000}, {}))

test_sap_batch_too_many if constraint_denied(hi("sap.payment.batch_release", {"batch_count": 101, "total_amount": 10}, {}))

test_sap_batch_too_much if constraint_denied(hi("sap.payment.batch_release", {"batch_count": 2, "total_amount": 1000001}, {}))

test_sap_journal_ok if allowed(hi("sap.journal_entry.post", {"gl_account": "4000", "cost_center": "CC1", "amount": -5}, {}))

test_sap_journal_zero if constraint_denied(hi("sap.journal_entry.post", {"gl_account": "4000", "cost_center": "CC1", "amount": 0}, {}))

test_sap_journal_no_cost_center if constraint_denied(hi("sap.journal_entry.post", {"gl_account": "4000", "amount": 5}, {}))

# --- constraints: Salesforce ----------------------------------------------------------
test_sf_export_ok if allowed(hi("salesforce.bulk.export", {"dataset": "leads", "row_count": 10000}, {"dataset_allowlist": ["leads"]}))

test_sf_export_not_listed if constraint_denied(hi("salesforce.bulk.export", {"dataset": "accounts", "row_count": 10}, {"dataset_allowlist": ["leads"]}))

test_sf_export_no_allowlist if constraint_denied(hi("salesforce.bulk.export", {"dataset": "leads", "row_count": 10}, {}))

test_sf_export_too_many_rows if constraint_denied(hi("salesforce.bulk.export", {"dataset": "leads", "row_count": 10001}, {"dataset_allowlist": ["leads"]}))

test_sf_delete_ok if allowed(hi("salesforce.bulk.delete", {"object_type": "Lead", "record_count": 10}, {"deletable_objects": ["Lead"]}))

test_sf_delete_over_limit if constraint_denied(hi("salesforce.bulk.delete", {"object_type": "Lead", "record_count": 20}, {"deletable_objects": ["Lead"], "max_delete_count": 10}))

test_sf_apex_ok if allowed(hi("salesforce.apex.execute", {"script_name": "cleanup"}, {"approved_apex_scripts": ["cleanup"]}))

test_sf_apex_unapproved if constraint_denied(hi("salesforce.apex.execute", {"script_name": "drop_all"}, {"approved_apex_scripts": ["cleanup"]}))

test_sf_report_ok if allowed(hi("salesforce.report.export_all", {"report_id": "r1"}, {"exportable_reports": ["r1"]}))

test_sf_report_not_exportable if constraint_denied(hi("salesforce.report.export_all", {"report_id": "r2"}, {}))

# --- constraints: HR / PII -----------------------------------------------------------
test_hr_pii_audit_purpose_possible if allowed(hi("hr.employee.export_pii", {"purpose": "audit", "record_count": 10}, {}))

test_hr_pii_bad_purpose if constraint_denied(hi("hr.employee.export_pii", {"purpose": "marketing", "record_count": 10}, {}))

test_hr_pii_over_limit if constraint_denied(hi("hr.employee.export_pii", {"purpose": "legal_hold", "record_count": 501}, {}))

test_hr_terminate_ok if allowed(hi("hr.employee.terminate", {"offboarding_checklist_complete": true, "termination_reason": "position eliminated"}, {}))

test_hr_terminate_no_checklist if constraint_denied(hi("hr.employee.terminate", {"termination_reason": "position eliminated"}, {}))

test_hr_payroll_ok if allowed(hi("hr.payroll.run", {"payroll_period": "2026-11", "employee_count": 120}, {}))

test_hr_payroll_no_period if constraint_denied(hi("hr.payroll.run", {"employee_count": 120}, {}))

test_hr_payroll_over_limit if constraint_denied(hi("hr.payroll.run", {"payroll_period": "2026-11", "employee_count": 200}, {"max_payroll_employees": 100}))

test_hr_comp_ok if allowed(hi("hr.compensation.change", {"percentage_change": 10, "justification": "annual review outcome, top performer"}, {}))

test_hr_comp_too_high if constraint_denied(hi("hr.compensation.change", {"percentage_change": 30, "justification": "annual review outcome, top performer"}, {}))

test_hr_comp_too_low if constraint_denied(hi("hr.compensation.change", {"percentage_change": -60, "justification": "annual review outcome, top performer"}, {}))

test_hr_comp_short_justification if constraint_denied(hi("hr.compensation.change", {"percentage_change": 5, "justification": "review"}, {}))

# --- constraints: customer data ---------------------------------------------------------
test_gdpr_ok if allowed(hi("customer.gdpr.erasure", {"request_id": "g-1", "days_since_request": 12}, {}))

test_gdpr_late if constraint_denied(hi("customer.gdpr.erasure", {"request_id": "g-1", "days_since_request": 31}, {}))

test_gdpr_missing_days if constraint_denied(hi("customer.gdpr.erasure", {"request_id": "g-1"}, {}))

test_ccpa_ok if allowed(hi("customer.ccpa.export", {"request_id": "c-1", "export_format": "csv"}, {}))

test_ccpa_bad_format if constraint_denied(hi("customer.ccpa.export", {"request_id": "c-1", "export_format": "xml"}, {}))

test_pii_access_ok if allowed(hi("customer.pii.access", {"purpose": "support_case", "reference_id": "case-9"}, {}))

test_pii_access_no_reference if constraint_denied(hi("customer.pii.access", {"purpose": "support_case"}, {}))

# --- constraints: IAM and cloud -------------------------------------------------------------
test_iam_assign_ok if allowed(hi("iam.role.assign", {"role_name": "reader", "target_user_id": "u1"}, {}))

test_iam_assign_self if constraint_denied(hi("iam.role.assign", {"role_name": "reader", "target_user_id": agent}, {}))

test_iam_assign_not_assignable if constraint_denied(hi("iam.role.assign", {"role_name": "admin", "target_user_id": "u1"}, {"assignable_roles": ["reader"]}))

test_iam_assign_assignable if allowed(hi("iam.role.assign", {"role_name": "reader", "target_user_id": "u1"}, {"assignable_roles": ["reader"]}))

test_iam_mfa_ok if allowed(hi("iam.mfa.disable", {"incident_reference": "INC-1", "target_user_id": "u1", "identity_verified": true}, {}))

test_iam_mfa_unverified if constraint_denied(hi("iam.mfa.disable", {"incident_reference": "INC-1", "target_user_id": "u1"}, {}))

test_aws_policy_ok if allowed(hi("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}, {}))

test_aws_admin_policy_denied if constraint_denied(hi("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {}))

test_aws_admin_policy_allowed_by_flag if allowed(hi_esc("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {"allow_admin_policy": true}, {"allow_admin_policy": true}))

test_aws_admin_policy_flag_in_con_only if constraint_denied(hi("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {"allow_admin_policy": true}))

test_azure_rbac_ok if allowed(hi("azure.rbac.assign", {"role_name": "Reader", "principal_id": "p1", "scope": "/subscriptions/123/resourceGroups/rg"}, {}))

test_azure_subscription_owner_denied_without_flag if constraint_denied(hi("azure.rbac.assign", {"role_name": "Owner", "principal_id": "p1", "scope": "/subscriptions/123"}, {}))

test_azure_subscription_owner_flag_false if constraint_denied(hi("azure.rbac.assign", {"role_name": "Owner", "principal_id": "p1", "scope": "/subscriptions/123"}, {"allow_subscription_owner": false}))

test_azure_subscription_owner_allowed_by_flag if allowed(hi_esc("azure.rbac.assign", {"role_name": "Owner", "principal_id": "p1", "scope": "/subscriptions/123"}, {"allow_subscription_owner": true}, {"allow_subscription_owner": true}))

test_azure_subscription_owner_flag_in_con_only if constraint_denied(hi("azure.rbac.assign", {"role_name": "Owner", "principal_id": "p1", "scope": "/subscriptions/123"}, {"allow_subscription_owner": true}))

test_azure_rbac_missing_scope if constraint_denied(hi("azure.rbac.assign", {"role_name": "Reader", "principal_id": "p1"}, {}))

test_keyvault_ok if allowed(hi("azure.keyvault.secret_set", {"vault_name": "app", "secret_name": "s"}, {"protected_vaults": ["prod"]}))

test_keyvault_protected_denied if constraint_denied(hi("azure.keyvault.secret_set", {"vault_name": "prod", "secret_name": "s"}, {"protected_vaults": ["prod"]}))

test_keyvault_protected_allowed_by_flag if allowed(hi_esc("azure.keyvault.secret_set", {"vault_name": "prod", "secret_name": "s"}, {"protected_vaults": ["prod"]}, {"allow_protected_vault_write": true}))

test_keyvault_protected_flag_in_con_only if constraint_denied(hi("azure.keyvault.secret_set", {"vault_name": "prod", "secret_name": "s"}, {"protected_vaults": ["prod"], "allow_protected_vault_write": true}))

# --- constraints: OT / SCADA -------------------------------------------------------------------
test_ot_override_ok if allowed(hi("ot.system.manual_override", {"human_in_loop_approved": true}, {"override_window_seconds": 600}))

test_ot_override_no_window if constraint_denied(hi("ot.system.manual_override", {"human_in_loop_approved": true}, {}))

test_ot_override_window_too_long if constraint_denied(hi("ot.system.manual_override", {"human_in_loop_approved": true}, {"override_window_seconds": 901}))

test_scada_setpoint_ok if allowed(hi("scada.setpoint.change", {"new_value": 50, "safety_review_acknowledged": true}, {}))

test_scada_setpoint_out_of_bounds if constraint_denied(hi("scada.setpoint.change", {"new_value": 150, "safety_review_acknowledged": true}, {}))

test_scada_setpoint_custom_bounds if allowed(hi("scada.setpoint.change", {"new_value": 150, "safety_review_acknowledged": true}, {"setpoint_min": 100, "setpoint_max": 200}))

test_scada_setpoint_missing_value if constraint_denied(hi("scada.setpoint.change", {"safety_review_acknowledged": true}, {}))

test_interlock_bypass_ok if allowed(hi("ot.safety.interlock_bypass", {"emergency_justification": "sensor failure, plant at risk", "bypass_duration_seconds": 600, "safety_officer_approved": true}, {}))

test_interlock_bypass_too_long if constraint_denied(hi("ot.safety.interlock_bypass", {"emergency_justification": "sensor failure, plant at risk", "bypass_duration_seconds": 7200, "safety_officer_approved": true}, {}))

test_interlock_bypass_no_officer if constraint_denied(hi("ot.safety.interlock_bypass", {"emergency_justification": "sensor failure, plant at risk", "bypass_duration_seconds": 60}, {}))

# --- constraints: ServiceNow, Workday, Dynamics ------------------------------------------------
test_snow_emergency_cab if allowed(hi("servicenow.change.emergency_approve", {"change_number": "CHG1", "cab_approved": true}, {}))

test_snow_emergency_flag_justified if allowed(hi("servicenow.change.emergency_approve", {"change_number": "CHG1", "emergency_flag": true, "emergency_justification": "production outage affecting all users"}, {}))

test_snow_emergency_flag_unjustified if constraint_denied(hi("servicenow.change.emergency_approve", {"change_number": "CHG1", "emergency_flag": true}, {}))

test_snow_p1_ok if allowed(hi("servicenow.incident.priority1_create", {"business_impact": "checkout is down", "affected_users": 500}, {}))

test_snow_p1_no_users if constraint_denied(hi("servicenow.incident.priority1_create", {"business_impact": "checkout is down"}, {}))

test_workday_comp_ok if allowed(hi("workday.compensation.change", {"percentage_change": 5, "effective_date": "2027-01-01"}, {}))

test_workday_comp_no_date if constraint_denied(hi("workday.compensation.change", {"percentage_change": 5}, {}))

test_dynamics_delete_ok if allowed(hi("dynamics.entity.bulk_delete", {"entity_type": "lead", "record_count": 10}, {}))

test_dynamics_delete_not_deletable if constraint_denied(hi("dynamics.entity.bulk_delete", {"entity_type": "account", "record_count": 10}, {"deletable_entities": ["lead"]}))

test_dynamics_delete_too_many if constraint_denied(hi("dynamics.entity.bulk_delete", {"entity_type": "lead", "record_count": 1001}, {}))

test_unconstrained_high_action if allowed(hi("sap.vendor.create", {}, {}))

test_constraints_checked_before_approval if constraint_denied(mk("sap.payment.execute", {"amount": 0}, {}, good_leg))

# --- time policies --------------------------------------------------------------------------------
# 1700000100 is Tuesday 2023-11-14 22:15 UTC.
at(i, secs) := json.patch(i, [{"op": "replace", "path": "/current_time_ns", "value": secs * 1000000000}])

hours := {"business_hours": {"required_for_high_risk": true, "start_hour": 9, "end_hour": 17}}

test_business_hours_outside if {
	d := decide(hi("sap.vendor.create", {}, {})) with data.time_policy as hours
	d.reason == "time_policy_violation"
	d.details.violations == ["outside_business_hours"]
}

# Dual control approved at `secs`, decided at `secs`.
hi_at(act, secs) := at(mk(act, {}, {}, dual_with([{"id": "alice@acme", "timestamp": secs}, {"id": "bob@acme", "timestamp": secs}], true)), secs)

test_business_hours_inside if allowed(hi_at("sap.vendor.create", 1699960000)) with data.time_policy as hours

test_business_hours_weekend if {
	d := decide(hi_at("sap.vendor.create", 1699711200)) with data.time_policy as hours
	d.reason == "time_policy_violation"
	d.details.violations == ["outside_business_hours"]
}

test_business_hours_bypass_flag if allowed(hi_esc("sap.vendor.create", {}, {}, {"allow_outside_business_hours": true})) with data.time_policy as hours

test_business_hours_flag_in_con_only if denied(hi("sap.vendor.create", {}, {"allow_outside_business_hours": true}), "time_policy_violation") with data.time_policy as hours

test_business_hours_not_for_low if allowed(mk("crm.contact.read", {}, {}, good_leg)) with data.time_policy as hours

test_business_hours_not_required if allowed(hi("sap.vendor.create", {}, {})) with data.time_policy as {"business_hours": {"start_hour": 9}}

with_count(i, n) := object.union(i, {"rate_limit_state": {"crm.contact.read": n}})

test_rate_limit_exceeded if {
	d := decide(with_count(mk("crm.contact.read", {}, {}, good_leg), 100)) with data.rate_limits as {"default_per_hour": 100}
	d.details.violations == ["rate_limit_exceeded:100/100"]
}

test_rate_limit_within if allowed(with_count(mk("crm.contact.read", {}, {}, good_leg), 99)) with data.rate_limits as {"default_per_hour": 100}

test_rate_limit_per_action if denied(with_count(mk("crm.contact.read", {}, {}, good_leg), 5), "time_policy_violation") with data.rate_limits as {"per_action": {"crm.contact.read": 5}}

# A low-tier action needs no approval, so nothing can vouch for its escape
# switch: a bypass in con (or even in evidence) is not honoured.
test_rate_limit_bypass_in_con_not_honoured if denied(with_count(mk("crm.contact.read", {}, {"bypass_rate_limit": true}, good_leg), 500), "time_policy_violation") with data.rate_limits as {"default_per_hour": 100}

test_rate_limit_bypass_on_low_tier_evidence_not_honoured if {
	leg := object.union(good_leg, {"approval": {"approver_id": "alice@acme", "timestamp": ts, "escapes": {"bypass_rate_limit": true}}})
	denied(with_count(mk("crm.contact.read", {}, {}, leg), 500), "time_policy_violation") with data.rate_limits as {"default_per_hour": 100}
}

test_rate_limit_bypass_from_evidence if {
	leg := object.union(good_leg, {"approval": {"approver_id": "alice@acme", "timestamp": ts, "escapes": {"bypass_rate_limit": true}}})
	i := object.union(mk("crm.contact.update", {}, {"bypass_rate_limit": true}, leg), {"rate_limit_state": {"crm.contact.update": 500}})
	allowed(i) with data.rate_limits as {"default_per_hour": 100}
}

test_rate_limit_unconfigured if allowed(with_count(mk("crm.contact.read", {}, {}, good_leg), 1000000))

test_rate_limit_fractional_count if denied(with_count(mk("crm.contact.read", {}, {}, good_leg), 100.5), "time_policy_violation") with data.rate_limits as {"default_per_hour": 100}

test_rate_limit_per_tenant if {
	i := object.union(with_count(mk("crm.contact.read", {}, {}, good_leg), 3), {"tenant": {"id": "tight"}})
	denied(i, "time_policy_violation") with data.tenants as {"tight": {"rate_limits": {"default_per_hour": 3}}}
}

test_approval_fresh if allowed(mk("crm.contact.update", {}, {}, medium_leg))

test_approval_expired_default_window if {
	d := decide(at(mk("crm.contact.update", {}, {}, medium_leg), 1700000000 + 86401))
	d.reason == "time_policy_violation"
	d.details.violations == ["approval_expired:86401s_ago"]
}

test_approval_window_configured if denied(at(mk("crm.contact.update", {}, {}, medium_leg), 1700000400), "time_policy_violation") with data.time_policy as {"approval_window_seconds": 300}

test_approval_dual_oldest_timestamp if {
	leg := object.union(good_leg, {"dual_control": {"required": true, "approvers": [{"id": "a", "timestamp": 1699900000}, {"id": "b", "timestamp": 1700000000}]}})
	denied(mk("sap.vendor.create", {}, {}, leg), "time_policy_violation") with data.time_policy as {"approval_window_seconds": 3600}
}

test_approval_executive_timestamps_count if {
	leg := exec_with([{"id": "x", "role": "CEO", "timestamp": 1600000000}, {"id": "y", "role": "CFO", "timestamp": 1700000000}])
	denied(mk("org.company.merge", {}, {}, leg), "time_policy_violation")
}

test_now_falls_back_to_iat if {
	i := at(mk("crm.contact.update", {}, {}, medium_leg), 1800000000)
	denied(i, "time_policy_violation")
	allowed(json.remove(i, ["current_time_ns"]))
}

test_violations_reported_together if {
	i := with_count(at(mk("crm.contact.read", {}, {}, medium_leg), 1700000000 + 90000), 100)
	d := decide(i) with data.rate_limits as {"default_per_hour": 100}
	d.details.violations == ["approval_expired:90000s_ago", "rate_limit_exceeded:100/100"]
}

# --- decision shape ---------------------------------------------------------------------------------
test_allow_shape if decide(mk("crm.contact.read", {}, {}, good_leg)) == {"allow": true, "reason": "allow", "risk_tier": "low"}

test_deny_carries_tier if decide(mk("sap.vendor.create", {}, {}, good_leg)).risk_tier == "high"

# --- adversarial: default deny for actions -------------------------------------------------------------
with_act(i, a) := json.patch(i, [
	{"op": "replace", "path": "/poa/act", "value": a},
	{"op": "replace", "path": "/request/action", "value": a},
])

unknown_why(i, why) if {
	d := decide(i)
	d.allow == false
	d.reason == "unknown_action"
	d.details.why == why
}

test_unknown_action_denied if unknown_why(mk("made.up.action", {}, {}, good_leg), "not_in_catalogue")

test_unknown_action_denied_even_with_executive_evidence if denied(mk("made.up.action", {}, {}, exec_leg), "unknown_action")

test_unknown_action_is_critical if decide(mk("made.up.action", {}, {}, good_leg)).risk_tier == "critical"

test_lookalike_actions_denied if {
	every a in [
		"CRM.contact.read", "crm.Contact.read", "crm.contact.read ", " crm.contact.read",
		"crm..contact.read", ".crm.contact.read", "crm.contact.read.", "crm",
		"crm.contact-read", "crm:contact.read", "crm.contact.re\u0430d", "crm.contact.read\n",
		"crm.contact.read\u0000",
	] {
		unknown_why(with_act(mk("crm.contact.read", {}, {}, good_leg), a), "not_canonical")
	}
}

test_overlong_action_denied if unknown_why(with_act(mk("crm.contact.read", {}, {}, good_leg), concat(".", ["a", concat("", [x | some _ in numbers.range(1, 256); x := "b"])])), "not_canonical")

test_non_string_actions_denied if {
	every a in [7, true, ["crm.contact.read"], {"a": "crm.contact.read"}] {
		unknown_why(with_act(mk("crm.contact.read", {}, {}, good_leg), a), "not_a_string")
	}
}

# A tenant's extension actions are known: by tier or by methods alone (low).
test_tenant_extension_by_methods_is_low if {
	i := object.union(mk("acme.ledger.read", {}, {}, good_leg), {"tenant": {"id": "t2"}})
	d := decide(i) with data.tenants as {"t2": {"catalog": {"methods": {"acme.ledger.read": ["GET"]}}}}
	d.allow == true
	d.risk_tier == "low"
}

# A non-canonical name stays unknown even when a tenant lists it.
test_tenant_non_canonical_extension_denied if {
	i := object.union(mk("Acme.Ledger", {}, {}, good_leg), {"tenant": {"id": "t2"}})
	denied(i, "unknown_action") with data.tenants as {"t2": {"catalog": {"tiers": {"Acme.Ledger": "low"}}}}
}

# A global tier outside the four is critical (the loader refuses such data).
test_global_bogus_tier_is_critical if {
	d := decide(mk("crm.contact.update", {}, {}, medium_leg)) with data.atb.catalog as {"tiers": {"crm.contact.update": "urgent"}, "methods": {"crm.contact.update": ["POST"]}}
	d.risk_tier == "critical"
	d.reason == "critical_risk_executive_approval_required"
}

test_low_risk_path_still_works if allowed(no_poa("crm.contact.read", "GET", "/crm"))

# --- adversarial: con must be an object -----------------------------------------------------------------
test_con_not_object_denied if {
	every con in ["x", 7, true, [], ["allow_admin_policy"]] {
		denied(mk("crm.contact.read", {}, con, good_leg), "con_invalid")
	}
}

# --- adversarial: approvers in canonical form -------------------------------------------------------------
test_dual_same_person_two_spellings if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": " Alice@ACME ", "timestamp": ts}], true)), "high_risk_dual_control_required")

test_dual_empty_id_counts_as_nobody if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "", "timestamp": ts}], true)), "high_risk_dual_control_required")

test_dual_blank_id_counts_as_nobody if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "  \t", "timestamp": ts}], true)), "high_risk_dual_control_required")

test_dual_self_under_other_spelling if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": ts}, {"id": "  SPIFFE://ACME.example/agent/A ", "timestamp": ts}], true)), "high_risk_dual_control_required")

test_medium_self_under_other_spelling if denied(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": " Spiffe://acme.example/Agent/a", "timestamp": ts}})), "medium_risk_approval_required")

test_medium_blank_approver if denied(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": "   ", "timestamp": ts}})), "medium_risk_approval_required")

test_critical_same_executive_two_spellings if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": "CEO", "timestamp": ts}, {"id": "CEO@acme ", "role": "CFO", "timestamp": ts}])), "critical_risk_executive_approval_required")

test_critical_empty_id_executive if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": "CEO", "timestamp": ts}, {"id": " ", "role": "CFO", "timestamp": ts}])), "critical_risk_executive_approval_required")

test_critical_self_under_other_spelling if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": "CEO", "timestamp": ts}, {"id": "cfo@acme", "role": "CFO", "timestamp": ts}, {"id": "spiffe://acme.example/AGENT/a", "role": "cto", "timestamp": ts}])), "critical_risk_executive_approval_required")

test_critical_role_spelling_variants if allowed(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": " Ceo ", "timestamp": ts}, {"id": "cfo@acme", "role": "CFO", "timestamp": ts}])))

# The mandate subject counts as self too (it equals the agent here, in another spelling).
test_iam_assign_self_other_spelling if constraint_denied(hi("iam.role.assign", {"role_name": "reader", "target_user_id": " SPIFFE://acme.example/agent/a"}, {}))

# --- adversarial: approval timestamps -----------------------------------------------------------------------
test_medium_missing_timestamp if {
	d := decide(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": "alice@acme"}})))
	d.reason == "approval_timestamp_invalid"
	d.details.entries == ["leg.approval"]
}

test_medium_string_timestamp if denied(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": "alice@acme", "timestamp": "1700000000"}})), "approval_timestamp_invalid")

test_dual_one_missing_timestamp if {
	d := decide(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme"}], true)))
	d.reason == "approval_timestamp_invalid"
	d.details.entries == ["leg.dual_control.approvers[1]"]
}

test_exec_missing_timestamps if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": "CEO"}, {"id": "cfo@acme", "role": "CFO"}])), "approval_timestamp_invalid")

test_exec_null_timestamp if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": "CEO", "timestamp": null}, {"id": "cfo@acme", "role": "CFO", "timestamp": ts}])), "approval_timestamp_invalid")

# now is 1700000100; 60 s of clock skew are tolerated.
test_medium_future_timestamp if {
	d := decide(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": "alice@acme", "timestamp": 1700000161}})))
	d.reason == "approval_timestamp_in_future"
	d.details == {"entries": ["leg.approval"], "leeway_seconds": 60}
}

test_medium_within_skew if allowed(mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": "alice@acme", "timestamp": 1700000160}})))

test_dual_future_timestamp if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": 1800000000}], true)), "approval_timestamp_in_future")

test_exec_future_timestamp if denied(mk("org.company.merge", {}, {}, exec_with([{"id": "ceo@acme", "role": "CEO", "timestamp": 1800000000}, {"id": "cfo@acme", "role": "CFO", "timestamp": ts}])), "approval_timestamp_in_future")

test_stale_approval_default_window if denied(at(mk("crm.contact.update", {}, {}, medium_leg), ts + 86401), "time_policy_violation")

# A time policy without a window: 300 s, as upstream.
test_stale_approval_time_policy_default_300 if {
	i := at(mk("crm.contact.update", {}, {}, medium_leg), ts + 301)
	d := decide(i) with data.time_policy as {"business_hours": {"start_hour": 9}}
	d.reason == "time_policy_violation"
	d.details.violations == ["approval_expired:301s_ago"]
	allowed(at(mk("crm.contact.update", {}, {}, medium_leg), ts + 300)) with data.time_policy as {"business_hours": {"start_hour": 9}}
}

test_stale_approval_tenant_time_policy_default_300 if {
	i := object.union(at(mk("crm.contact.update", {}, {}, medium_leg), ts + 301), {"tenant": {"id": "t2"}})
	denied(i, "time_policy_violation") with data.tenants as {"t2": {"time_policy": {}}}
}

test_stale_dual_approval_global_window if denied(at(hi("sap.vendor.create", {}, {}), ts + 301), "time_policy_violation") with data.time_policy as {}

# --- adversarial: escape switches only from evidence, never on low tiers ------------------------------------
test_escape_in_other_tier_block_not_honoured if {
	# A high-tier action reads its escapes from dual_control, not from leg.approval.
	leg := object.union(dual_leg, {"approval": {"approver_id": "alice@acme", "timestamp": ts, "escapes": {"allow_admin_policy": true}}})
	constraint_denied(mk("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {}, leg))
}

test_escape_false_in_evidence_not_honoured if constraint_denied(hi_esc("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {}, {"allow_admin_policy": false}))

test_escape_string_in_evidence_not_honoured if constraint_denied(hi_esc("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {}, {"allow_admin_policy": "true"}))

test_escape_on_tenant_lowered_tier_not_honoured if {
	i := object.union(hi_esc("aws.iam.policy_attach", {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}, {}, {"allow_admin_policy": true}), {"tenant": {"id": "t2"}})
	constraint_denied(i) with data.tenants as {"t2": {"catalog": {"tiers": {"aws.iam.policy_attach": "low"}}}}
}

test_escape_critical_from_executive_evidence if {
	leg := object.union(exec_leg, {"executive_control": {"escapes": {"bypass_rate_limit": true}}})
	i := object.union(mk("org.company.merge", {}, {}, leg), {"rate_limit_state": {"org.company.merge": 500}})
	allowed(i) with data.rate_limits as {"default_per_hour": 100}
	denied(object.union(mk("org.company.merge", {}, {"bypass_rate_limit": true}, exec_leg), {"rate_limit_state": {"org.company.merge": 500}}), "time_policy_violation") with data.rate_limits as {"default_per_hour": 100}
}

# --- adversarial: blocklists -------------------------------------------------------------------------------
test_aws_admin_policy_every_partition if {
	every arn in [
		"arn:aws:iam::aws:policy/AdministratorAccess",
		"arn:aws-cn:iam::aws:policy/AdministratorAccess",
		"arn:aws-us-gov:iam::aws:policy/AdministratorAccess",
		"arn:aws-iso:iam::aws:policy/AdministratorAccess",
		"arn:aws-iso-b:iam::aws:policy/AdministratorAccess",
		"arn:aws-iso-e:iam::aws:policy/AdministratorAccess",
		"arn:aws-iso-f:iam::aws:policy/AdministratorAccess",
		"arn:aws-eusc:iam::aws:policy/AdministratorAccess",
		"arn:aws:iam::aws:policy/AdministratorAccess-Amplify",
		"arn:aws:iam::aws:policy/job-function/AdministratorAccess",
		"ARN:AWS:IAM::AWS:POLICY/ADMINISTRATORACCESS",
		" arn:aws:iam::aws:policy/administratoraccess ",
	] {
		constraint_denied(hi("aws.iam.policy_attach", {"policy_arn": arn}, {}))
	}
}

test_aws_other_partition_read_only_allowed if allowed(hi("aws.iam.policy_attach", {"policy_arn": "arn:aws-us-gov:iam::aws:policy/ReadOnlyAccess"}, {}))

test_aws_admin_policy_other_partition_allowed_by_evidence if allowed(hi_esc("aws.iam.policy_attach", {"policy_arn": "arn:aws-cn:iam::aws:policy/AdministratorAccess"}, {}, {"allow_admin_policy": true}))

azure_owner(role, scope) := hi("azure.rbac.assign", {"role_name": role, "principal_id": "p1", "scope": scope}, {})

test_azure_owner_broad_scopes_denied if {
	every scope in [
		"/subscriptions/123", "/subscriptions/123/", "/Subscriptions/123", "/SUBSCRIPTIONS/123/",
		" /subscriptions/123 ", "/", "//", "/providers/Microsoft.Management/managementGroups/mg1",
		"/providers/microsoft.management/managementgroups/mg1/", "/PROVIDERS/MICROSOFT.MANAGEMENT/MANAGEMENTGROUPS/root",
		"/subscriptions/123/resourceGroups/rg/..", "/subscriptions/123/resourceGroups/../..",
		"/subscriptions/123/resourceGroups/rg%2F..%2F..", "/subscriptions/123/resourceGroups//x",
		"/subscriptions/123/resourceGroups", "subscriptions/123/resourceGroups/rg", "/subscriptions/123\\resourceGroups\\rg",
	] {
		constraint_denied(azure_owner("Owner", scope))
	}
}

test_azure_owner_role_spellings_denied if {
	every role in [
		"owner", "OWNER", " Owner ", "8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "8E3AF657-A8FF-443C-A75C-2FE8C4BCB635",
		"/subscriptions/123/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
		"/providers/Microsoft.Authorization/roleDefinitions/8e3af657-a8ff-443c-a75c-2fe8c4bcb635/",
	] {
		constraint_denied(azure_owner(role, "/subscriptions/123"))
	}
}

test_azure_owner_resource_group_allowed if {
	allowed(azure_owner("Owner", "/subscriptions/123/resourceGroups/rg"))
	allowed(azure_owner("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "/subscriptions/123/resourceGroups/rg/providers/Microsoft.Web/sites/app"))
}

test_azure_non_owner_broad_scope_allowed if allowed(azure_owner("Reader", "/providers/Microsoft.Management/managementGroups/mg1"))

test_azure_owner_management_group_allowed_by_evidence if allowed(hi_esc("azure.rbac.assign", {"role_name": "Owner", "principal_id": "p1", "scope": "/"}, {}, {"allow_subscription_owner": true}))

vault(name, protected) := hi("azure.keyvault.secret_set", {"vault_name": name, "secret_name": "s"}, {"protected_vaults": protected})

test_keyvault_protected_case_variants_denied if {
	every name in [
		"PROD", "Prod", " prod ", "https://prod.vault.azure.net", "https://PROD.vault.azure.net/",
		"https://prod.vault.azure.cn/secrets/s", "https://prod.vault.usgovcloudapi.net",
		"/subscriptions/1/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/Prod",
	] {
		constraint_denied(vault(name, ["prod"]))
	}
	constraint_denied(vault("prod", ["PROD"]))
	constraint_denied(vault("prod", [7, " Prod "]))
}

test_keyvault_other_vault_allowed if allowed(vault("https://dev.vault.azure.net", ["prod"]))

test_keyvault_protected_list_wrong_type_protects_all if {
	constraint_denied(vault("dev", "prod"))
	constraint_denied(vault("dev", {"prod": true}))
}

# An approver entry that is not an object is still an entry without a timestamp.
test_dual_extra_non_object_entry if denied(mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": ts}, "carol@acme"], true)), "approval_timestamp_invalid")

# A stray evidence block of another tier is checked too (false is not a timestamped entry).
test_stray_approval_block_without_timestamp if denied(mk("sap.vendor.create", {}, {}, object.union(dual_leg, {"approval": false})), "approval_timestamp_invalid")

test_stray_approval_block_stale if denied(mk("sap.vendor.create", {}, {}, object.union(dual_leg, {"approval": {"approver_id": "x", "timestamp": 1600000000}})), "time_policy_violation")

# Unknown actions are refused by name and by shape: the canonical check
# itself (not only the catalogue lookup) refuses a lookalike a tenant listed.
test_canonical_action_shapes if {
	every a in ["a.b", "crm.contact.read", "a_1.b2"] {
		poa.canonical_action(a)
	}
	every a in ["", ".", "a", "a.", ".a", "a..b", "A.b", "a.b-c", "a.b c", "a.\u00e9", 7] {
		not poa.canonical_action(a)
	}
}

# --- the decision's fast path answers exactly like the full chain ----------------------------------------
chain(i) := object.union({"allow": false, "risk_tier": t}, d) if {
	d := poa.denial with input as i
	t := poa.risk_tier with input as i
} else := {"allow": true, "reason": "allow", "risk_tier": t} if {
	t := poa.risk_tier with input as i
}

admin_arn := {"policy_arn": "arn:aws:iam::aws:policy/AdministratorAccess"}

fast_path_inputs := [
	mk("crm.contact.read", {}, {}, good_leg),
	mk("crm.contact.update", {}, {}, medium_leg),
	mk("crm.contact.update", {}, {}, good_leg),
	hi("sap.vendor.create", {}, {}),
	mk("org.company.merge", {}, {}, exec_leg),
	mk("org.company.merge", {}, {}, dual_leg),
	mk("made.up.action", {}, {}, exec_leg),
	mk("CRM.contact.read", {}, {}, good_leg),
	mk("crm.contact.read", {}, "con", good_leg),
	hi("aws.iam.policy_attach", admin_arn, {"allow_admin_policy": true}),
	hi_esc("aws.iam.policy_attach", admin_arn, {}, {"allow_admin_policy": true}),
	hi_esc("aws.iam.policy_attach", admin_arn, {}, {"allow_admin_policy": "true"}),
	mk("aws.iam.policy_attach", admin_arn, {}, object.union(dual_leg, {"dual_control": {"escapes": "allow_admin_policy"}})),
	mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": ts}, "carol"], true)),
	mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": ts}, null], true)),
	mk("sap.vendor.create", {}, {}, object.union(dual_leg, {"approval": false})),
	mk("sap.vendor.create", {}, {}, object.union(dual_leg, {"approval": null})),
	mk("sap.vendor.create", {}, {}, object.union(dual_leg, {"approval": {"approver_id": "x", "timestamp": 1600000000}})),
	mk("sap.vendor.create", {}, {}, object.union(dual_leg, {"executive_control": {"approvers": [{"id": "x"}]}})),
	mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": 1700000161}], true)),
	mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": "bob@acme", "timestamp": 1700000160}], true)),
	mk("sap.vendor.create", {}, {}, dual_with([{"id": "alice@acme", "timestamp": ts}, {"id": " ALICE@acme", "timestamp": ts}], true)),
	mk("crm.contact.update", {}, {}, object.union(good_leg, {"approval": {"approver_id": "alice@acme"}})),
	at(mk("crm.contact.update", {}, {}, medium_leg), ts + 86401),
	at(mk("crm.contact.update", {}, {}, medium_leg), ts + 86400),
	hi("iam.role.assign", {"role_name": "reader", "target_user_id": " SPIFFE://acme.example/agent/a"}, {}),
	hi("azure.rbac.assign", {"role_name": "OWNER", "principal_id": "p", "scope": "/"}, {}),
]

test_fast_path_answers_like_the_chain if {
	every i in fast_path_inputs {
		decide(i) == chain(i)
	}
}

test_fast_path_answers_like_the_chain_with_a_global_time_policy if {
	every i in fast_path_inputs {
		d := decide(i) with data.time_policy as {"approval_window_seconds": 120}
		c := chain(i) with data.time_policy as {"approval_window_seconds": 120}
		d == c
	}
	every i in fast_path_inputs {
		d := decide(i) with data.time_policy as {}
		c := chain(i) with data.time_policy as {}
		d == c
	}
}

# Per-tenant extensions: a tenant's deny set turns its allowed calls into
# tenant_policy_denied; earlier denials keep their reason. (The broker's
# generated data.atb.tenant_policy picks the input tenant's deny set.)
tenant_read := mk("crm.contact.read", {}, {}, good_leg)

test_tenant_policy_denies_an_allowed_call if {
	d := poa.decision with input as tenant_read with data.atb.tenant_policy.deny as {"no reads", "audit freeze"}
	d.allow == false
	d.reason == "tenant_policy_denied"
	d.details.reasons == ["audit freeze", "no reads"]
	d.risk_tier == "low"
}

test_tenant_policy_with_an_empty_deny_set_allows if {
	d := poa.decision with input as tenant_read with data.atb.tenant_policy.deny as set()
	d.allow == true
}

test_no_tenant_policy_allows if {
	d := poa.decision with input as tenant_read
	d.allow == true
	d.reason == "allow"
}

test_tenant_policy_does_not_mask_a_shared_denial if {
	inp := json.patch(tenant_read, [{"op": "replace", "path": "/poa/sub", "value": "spiffe://evil/x"}])
	d := poa.decision with input as inp with data.atb.tenant_policy.deny as {"no reads"}
	d.allow == false
	d.reason == "sub_mismatch"
}

test_tenant_policy_deny_of_the_wrong_type_denies if {
	d := poa.decision with input as tenant_read with data.atb.tenant_policy.deny as true
	d.allow == false
	d.details.reasons == ["tenant policy: deny must be a set of reasons"]
}

test_tenant_policy_reasons_that_are_not_strings if {
	d := poa.decision with input as tenant_read with data.atb.tenant_policy.deny as [7]
	d.reason == "tenant_policy_denied"
	d.details.reasons == ["tenant policy: a reason that is not a string"]
}
