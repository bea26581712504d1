# ATB PoA decision policy (package atb.poa, Rego v1).
#
# Entry point: data.atb.poa.decision -> {allow, reason, details?, risk_tier}.
#
# Designed for lookup: the action's tier and its constraint family are found
# by key (data.atb.catalog, policies/atb/catalog.json) and only that family's
# rule runs. Tenants extend or override tiers with data.tenants[<id>].catalog
# and set their own time_policy / rate_limits / platform_binding under
# data.tenants[<id>]; the global documents of the same name are the fallback.
#
# Portability (identical decisions on regorus and OPA): never `not f(x)` over a
# possibly-undefined x (named helper rules instead), type guards before every
# string or arithmetic builtin, `%v` in sprintf.
package atb.poa

import rego.v1

# ---------------------------------------------------------------------------
# Inputs, normalised
# ---------------------------------------------------------------------------

poa := p if {
	p := input.poa
	is_object(p)
} else := {}

poa_provided if count(poa) > 0

agent := a if {
	a := input.agent.spiffe_id
	is_string(a)
} else := ""

act := a if {
	a := poa.act
	is_string(a)
} else := ""

constraints := c if {
	c := poa.con
	is_object(c)
} else := {}

leg := l if {
	l := poa.leg
	is_object(l)
} else := {}

params := p if {
	p := input.request.params
	is_object(p)
} else := {}

request_action := a if {
	a := input.request.action
	is_string(a)
} else := ""

request_method := m if {
	m := input.request.method
	is_string(m)
} else := ""

request_path := p if {
	p := input.request.path
	is_string(p)
} else := ""

tenant_data := d if {
	d := data.tenants[input.tenant.id]
	is_object(d)
} else := {}

has_key(obj, k) if {
	_ = obj[k]
}

# ---------------------------------------------------------------------------
# Catalogue and tiers
# ---------------------------------------------------------------------------

# Data is always referenced by static paths: a reference to the whole `data`
# document would make the engine evaluate every rule of every package.
catalog := c if {
	c := data.atb.catalog
	is_object(c)
} else := {}

# One rule, no helpers: the tier is on every decision's path. A tenant's tier
# that is not one of the four is treated as critical (fail closed).
known_tiers := {"low", "medium", "high", "critical"}

risk_tier := t if {
	t := data.tenants[input.tenant.id].catalog.tiers[input.poa.act]
	t in known_tiers
} else := "critical" if {
	_ = data.tenants[input.tenant.id].catalog.tiers[input.poa.act]
} else := t if {
	t := data.atb.catalog.tiers[input.poa.act]
} else := "low"

low_risk_request if {
	methods := catalog.low_risk[request_action]
	request_method in methods
}

safe_path_request if {
	request_method == "GET"
	request_path in catalog.safe_paths
}

# ---------------------------------------------------------------------------
# Required fields, legal basis, TTL
# ---------------------------------------------------------------------------

required_fields := ["sub", "act", "con", "leg", "iat", "exp", "jti"]

missing_fields := {f: true |
	some f in required_fields
	not field_present(f)
}

field_present(f) if {
	v := poa[f]
	v != null
}

# The fast check; the per-field details are computed only on denial.
fields_ok if {
	poa.sub != null
	poa.act != null
	poa.con != null
	poa.leg != null
	poa.iat != null
	poa.exp != null
	poa.jti != null
}

leg_problems := {p: true | some p in leg_problem_list}

leg_problem_list contains "leg" if not leg_is_object

leg_problem_list contains "leg.jurisdiction" if {
	leg_is_object
	not jurisdiction_ok
}

leg_problem_list contains "leg.accountable_party" if {
	leg_is_object
	not accountable_party_is_object
}

leg_problem_list contains "leg.accountable_party.type" if {
	accountable_party_is_object
	not accountable_type_ok
}

leg_problem_list contains "leg.accountable_party.id" if {
	accountable_party_is_object
	not accountable_id_ok
}

leg_is_object if is_object(poa.leg)

leg_ok if {
	j := poa.leg.jurisdiction
	is_string(j)
	j != ""
	party := poa.leg.accountable_party
	is_string(party.type)
	id := party.id
	is_string(id)
	id != ""
}

jurisdiction_ok if {
	j := leg.jurisdiction
	is_string(j)
	j != ""
}

accountable_party_is_object if is_object(leg.accountable_party)

accountable_type_ok if is_string(leg.accountable_party.type)

accountable_id_ok if {
	i := leg.accountable_party.id
	is_string(i)
	i != ""
}

max_ttl := t if {
	t := input.policy.max_ttl_seconds
	is_number(t)
} else := 300

ttl_ok if {
	is_number(poa.iat)
	is_number(poa.exp)
	ttl := poa.exp - poa.iat
	ttl > 0
	ttl <= max_ttl
	ttl <= 900
}

# ---------------------------------------------------------------------------
# Platform identity binding (data.platform_binding: none|exact|prefix|mapping)
# ---------------------------------------------------------------------------

# Each tenant's own document, else the global one, else {}.
binding := v if {
	v := tenant_data.platform_binding
	is_object(v)
} else := v if {
	v := data.platform_binding
	is_object(v)
} else := {}

binding_mode := m if {
	m := binding.mode
	is_string(m)
} else := "none"

platform_sub := s if {
	s := input.platform.sub
	is_string(s)
} else := ""

binding_ok if binding_mode == "none"

binding_ok if {
	binding_mode == "exact"
	platform_sub != ""
	platform_sub == agent
}

binding_ok if {
	binding_mode == "prefix"
	platform_sub != ""
	contains(agent, concat("", ["/", platform_sub, "/"]))
}

binding_ok if {
	binding_mode == "prefix"
	platform_sub != ""
	endswith(agent, concat("", ["/", platform_sub]))
}

binding_ok if {
	binding_mode == "mapping"
	pattern := binding.mappings[platform_sub]
	is_string(pattern)
	regex.match(pattern, agent)
}

binding_detail := sprintf("platform_sub '%v' does not match SPIFFE ID '%v' (mode %v)", [platform_sub, agent, binding_mode])

# ---------------------------------------------------------------------------
# Per-action constraints. The family is looked up by the mandate's act; the
# request path never skips them. Operands come from request.params; limits
# from the mandate's con, falling back to their documented default only when
# absent (a present value of the wrong type denies).
# ---------------------------------------------------------------------------

limit(name, default_value) := v if {
	v := constraints[name]
	is_number(v)
} else := default_value if {
	not has_key(constraints, name)
}

num(name) := v if {
	v := params[name]
	is_number(v)
} else := 0 if {
	not has_key(params, name)
}

str(name) := v if {
	v := params[name]
	is_string(v)
} else := "" if {
	not has_key(params, name)
}

yes(obj, name) if obj[name] == true

longer_than(name, n) if count(str(name)) > n

present(name) if longer_than(name, 0)

listed(list_name, value) if {
	list := constraints[list_name]
	is_array(list)
	value in list
}

# An allowlist in con restricts when non-empty; absent or empty means unconstrained.
allowed_by_optional_list(list_name, value) if {
	not has_key(constraints, list_name)
}

allowed_by_optional_list(list_name, value) if {
	list := constraints[list_name]
	is_array(list)
	count(list) == 0
}

allowed_by_optional_list(list_name, value) if listed(list_name, value)

within(value, low, high) if {
	value >= low
	value <= high
}

constrained_actions := {
	"sap.vendor.change", "sap.vendor.bank_change", "sap.payment.execute",
	"sap.payment.batch_release", "sap.journal_entry.post",
	"salesforce.bulk.export", "salesforce.bulk.delete", "salesforce.apex.execute",
	"salesforce.report.export_all",
	"hr.employee.export_pii", "hr.employee.terminate", "hr.payroll.run", "hr.compensation.change",
	"customer.gdpr.erasure", "customer.ccpa.export", "customer.pii.access",
	"iam.role.assign", "iam.mfa.disable",
	"ot.system.manual_override", "scada.setpoint.change", "ot.safety.interlock_bypass",
	"servicenow.change.emergency_approve", "servicenow.incident.priority1_create",
	"workday.compensation.change", "dynamics.entity.bulk_delete",
	"aws.iam.policy_attach", "azure.rbac.assign", "azure.keyvault.secret_set",
}

action_allowed if not act in constrained_actions

action_allowed if {
	act in constrained_actions
	constraint_ok(act)
}

# SAP
constraint_ok("sap.vendor.change") if {
	amount := num("amount")
	amount <= 5000
	amount <= limit("liability_cap", 0)
}

constraint_ok("sap.vendor.change") if {
	amount := num("amount")
	amount > 5000
	yes(constraints, "dual_control")
	amount <= limit("liability_cap", 0)
}

constraint_ok("sap.vendor.bank_change") if {
	yes(params, "second_channel_verified")
	longer_than("change_reason", 10)
}

constraint_ok("sap.payment.execute") if {
	amount := num("amount")
	amount > 0
	amount <= limit("payment_limit", 100000)
}

constraint_ok("sap.payment.batch_release") if {
	within(num("batch_count"), 1, limit("max_batch_count", 100))
	within(num("total_amount"), 0, limit("max_batch_amount", 1000000))
}

constraint_ok("sap.journal_entry.post") if {
	present("gl_account")
	present("cost_center")
	num("amount") != 0
}

# Salesforce
constraint_ok("salesforce.bulk.export") if {
	listed("dataset_allowlist", str("dataset"))
	within(num("row_count"), 1, limit("max_rows", 10000))
}

constraint_ok("salesforce.bulk.delete") if {
	listed("deletable_objects", str("object_type"))
	within(num("record_count"), 1, limit("max_delete_count", 1000))
}

constraint_ok("salesforce.apex.execute") if listed("approved_apex_scripts", str("script_name"))

constraint_ok("salesforce.report.export_all") if listed("exportable_reports", str("report_id"))

# HR / PII
pii_export_purposes := {"audit", "legal_hold", "regulatory_compliance", "internal_investigation"}

constraint_ok("hr.employee.export_pii") if {
	str("purpose") in pii_export_purposes
	within(num("record_count"), 1, limit("max_pii_export", 500))
}

constraint_ok("hr.employee.terminate") if {
	yes(params, "offboarding_checklist_complete")
	longer_than("termination_reason", 10)
}

constraint_ok("hr.payroll.run") if {
	present("payroll_period")
	within(num("employee_count"), 0, limit("max_payroll_employees", 10000))
}

constraint_ok("hr.compensation.change") if {
	within(num("percentage_change"), -50, limit("max_compensation_pct_change", 25))
	longer_than("justification", 20)
}

# Customer data
constraint_ok("customer.gdpr.erasure") if {
	present("request_id")
	has_key(params, "days_since_request")
	within(num("days_since_request"), 0, 30)
}

constraint_ok("customer.ccpa.export") if {
	present("request_id")
	str("export_format") in {"json", "csv", "pdf"}
}

customer_pii_purposes := {"support_case", "billing_inquiry", "identity_verification", "fraud_investigation"}

constraint_ok("customer.pii.access") if {
	str("purpose") in customer_pii_purposes
	present("reference_id")
}

# IAM
constraint_ok("iam.role.assign") if {
	present("role_name")
	present("target_user_id")
	str("target_user_id") != poa.sub
	str("target_user_id") != agent
	allowed_by_optional_list("assignable_roles", str("role_name"))
}

constraint_ok("iam.mfa.disable") if {
	present("incident_reference")
	present("target_user_id")
	yes(params, "identity_verified")
}

# OT / SCADA
constraint_ok("ot.system.manual_override") if {
	yes(params, "human_in_loop_approved")
	within(limit("override_window_seconds", 0), 1, 900)
}

constraint_ok("scada.setpoint.change") if {
	has_key(params, "new_value")
	within(num("new_value"), limit("setpoint_min", 0), limit("setpoint_max", 100))
	yes(params, "safety_review_acknowledged")
}

constraint_ok("ot.safety.interlock_bypass") if {
	longer_than("emergency_justification", 20)
	within(num("bypass_duration_seconds"), 1, limit("max_bypass_duration", 3600))
	yes(params, "safety_officer_approved")
}

# ServiceNow
constraint_ok("servicenow.change.emergency_approve") if {
	present("change_number")
	yes(params, "cab_approved")
}

constraint_ok("servicenow.change.emergency_approve") if {
	present("change_number")
	yes(params, "emergency_flag")
	longer_than("emergency_justification", 20)
}

constraint_ok("servicenow.incident.priority1_create") if {
	longer_than("business_impact", 10)
	num("affected_users") > 0
}

# Workday / Dynamics
constraint_ok("workday.compensation.change") if {
	within(num("percentage_change"), -50, limit("max_compensation_pct_change", 25))
	present("effective_date")
}

constraint_ok("dynamics.entity.bulk_delete") if {
	allowed_by_optional_list("deletable_entities", str("entity_type"))
	within(num("record_count"), 1, limit("max_delete_count", 1000))
}

# Cloud IAM
admin_policy_prefix := "arn:aws:iam::aws:policy/Administrator"

constraint_ok("aws.iam.policy_attach") if {
	present("policy_arn")
	not startswith(str("policy_arn"), admin_policy_prefix)
}

constraint_ok("aws.iam.policy_attach") if {
	startswith(str("policy_arn"), admin_policy_prefix)
	yes(constraints, "allow_admin_policy")
}

subscription_scope if regex.match(`^/subscriptions/[^/]+/?$`, str("scope"))

owner_role if lower(str("role_name")) == "owner"

subscription_owner if {
	owner_role
	subscription_scope
}

constraint_ok("azure.rbac.assign") if {
	present("role_name")
	present("principal_id")
	present("scope")
	not subscription_owner
}

constraint_ok("azure.rbac.assign") if {
	present("principal_id")
	subscription_owner
	yes(constraints, "allow_subscription_owner")
}

protected_vault if listed("protected_vaults", str("vault_name"))

constraint_ok("azure.keyvault.secret_set") if {
	present("vault_name")
	present("secret_name")
	not protected_vault
}

constraint_ok("azure.keyvault.secret_set") if {
	present("secret_name")
	protected_vault
	yes(constraints, "allow_protected_vault_write")
}

# ---------------------------------------------------------------------------
# Approvals per tier (evidence is written by AgentAuth into the signed leg)
# ---------------------------------------------------------------------------

executive_roles := {"ceo", "cfo", "coo", "cto", "ciso", "board_member", "general_counsel", "chief_risk_officer"}

approval_ok if risk_tier == "low"

approval_ok if {
	risk_tier == "medium"
	medium_approved
}

approval_ok if {
	risk_tier == "high"
	dual_control_ok
}

approval_ok if {
	risk_tier == "critical"
	executive_ok
}

medium_approved if {
	approver := leg.approval.approver_id
	is_string(approver)
	approver != ""
	not approver in self_ids
}

# Who may not approve: the agent itself (by SPIFFE ID or mandate subject).
self_ids := {id | some id in [agent, poa.sub]; is_string(id)}

dual_control_ok if {
	block := leg.dual_control
	block.required == true
	ids := {id | some a in block.approvers; id := a.id; is_string(id); id != ""}
	count(ids) >= 2
	count(ids & self_ids) == 0
}

# Distinct people holding an executive role: one person with two roles counts once.
executive_ok if {
	block := leg.executive_control
	block.required == true
	ids := {id | some a in block.approvers; id := a.id; is_string(id); id != ""}
	count(ids & self_ids) == 0
	executives := {id |
		some a in block.approvers
		id := a.id
		is_string(id)
		is_string(a.role)
		lower(a.role) in executive_roles
	}
	count(executives) >= 2
}

tier_denial := {
	"medium": "medium_risk_approval_required",
	"high": "high_risk_dual_control_required",
	"critical": "critical_risk_executive_approval_required",
}

# ---------------------------------------------------------------------------
# Time policies (data-driven, per tenant with global fallback)
# ---------------------------------------------------------------------------

time_policy := v if {
	v := tenant_data.time_policy
	is_object(v)
} else := v if {
	v := data.time_policy
	is_object(v)
} else := {}

rate_limits := v if {
	v := tenant_data.rate_limits
	is_object(v)
} else := v if {
	v := data.rate_limits
	is_object(v)
} else := {}

rate_limits_configured if count(rate_limits) > 0

now_seconds := n if {
	t := input.current_time_ns
	is_number(t)
	n := t / 1000000000
} else := n if {
	n := poa.iat
	is_number(n)
}

business_hours := b if {
	b := time_policy.business_hours
	is_object(b)
} else := {}

hours_required if business_hours.required_for_high_risk == true

start_hour := h if {
	h := business_hours.start_hour
	is_number(h)
} else := 9

end_hour := h if {
	h := business_hours.end_hour
	is_number(h)
} else := 17

within_business_hours if {
	ns := floor(now_seconds) * 1000000000
	[hour, _, _] := time.clock([ns, "UTC"])
	hour >= start_hour
	hour < end_hour
	not time.weekday(ns) in {"Saturday", "Sunday"}
}

violations contains "outside_business_hours" if {
	risk_tier == "high"
	hours_required
	not yes(constraints, "allow_outside_business_hours")
	not within_business_hours
}

action_limit := n if {
	n := rate_limits.per_action[act]
	is_number(n)
} else := n if {
	n := rate_limits.default_per_hour
	is_number(n)
} else := 100

action_count := n if {
	n := input.rate_limit_state[act]
	is_number(n)
} else := 0

violations contains sprintf("rate_limit_exceeded:%v/%v", [action_count, action_limit]) if {
	rate_limits_configured
	not yes(constraints, "bypass_rate_limit")
	action_count >= action_limit
}

approval_window := w if {
	w := time_policy.approval_window_seconds
	is_number(w)
} else := 86400

approval_times contains t if {
	t := leg.approval.timestamp
	is_number(t)
}

approval_times contains t if {
	some a in leg.dual_control.approvers
	t := a.timestamp
	is_number(t)
}

approval_times contains t if {
	some a in leg.executive_control.approvers
	t := a.timestamp
	is_number(t)
}

violations contains sprintf("approval_expired:%vs_ago", [age]) if {
	count(approval_times) > 0
	age := now_seconds - min(approval_times)
	age > approval_window
}

# ---------------------------------------------------------------------------
# The decision: the first failing check gives the reason.
# ---------------------------------------------------------------------------

denial := {"reason": "missing_required_fields", "details": missing_fields} if {
	not fields_ok
} else := {"reason": "leg_invalid", "details": leg_problems} if {
	not leg_ok
} else := {"reason": "ttl_invalid", "details": {"max_ttl_seconds": min([max_ttl, 900])}} if {
	not ttl_ok
} else := {"reason": "sub_mismatch"} if {
	poa.sub != agent
} else := {"reason": "platform_spiffe_binding_mismatch", "details": binding_detail} if {
	not binding_ok
} else := {"reason": "action_mismatch", "details": {"act": act, "request_action": request_action}} if {
	request_action != act
} else := {"reason": "action_denied", "details": {"action": act}} if {
	not action_allowed
} else := {"reason": tier_denial[risk_tier], "details": {"tier": risk_tier, "action": act}} if {
	not approval_ok
} else := {"reason": "time_policy_violation", "details": {"violations": sort(violations)}} if {
	count(violations) > 0
}

default decision := {"allow": false, "reason": "deny_by_default", "risk_tier": "unknown"}

no_poa_allowed if low_risk_request

no_poa_allowed if safe_path_request

decision := {"allow": true, "reason": "allow_low_risk_without_poa", "risk_tier": "low"} if {
	not poa_provided
	no_poa_allowed
} else := {"allow": false, "reason": "poa_required_for_action", "risk_tier": request_tier} if {
	not poa_provided
} else := object.union({"allow": false, "risk_tier": risk_tier}, denial) if {
	denial
} else := {"allow": true, "reason": "allow", "risk_tier": risk_tier}

request_tier := t if {
	t := data.atb.catalog.tiers[request_action]
} else := "low"
