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

# The canonical form of an identifier (approver ids, SPIFFE IDs, roles,
# Azure scopes and vault names): surrounding whitespace trimmed, ASCII
# letters lower-cased. ASCII-only folding is what AgentAuth compares
# approvers by, and it is identical on every engine (`lower` differs
# between Go and Rust on a few non-ASCII letters). Strings only.
# The first branch is the cheap common case, and gives the same value: when
# lower(t) == t on either engine, t has no ASCII capital, so folding ASCII
# would not change it.
canon(s) := t if {
	t := trim_space(s)
	lower(t) == t
} else := strings.replace_n(ascii_fold, trim_space(s))

ascii_fold := {
	"A": "a", "B": "b", "C": "c", "D": "d", "E": "e", "F": "f", "G": "g",
	"H": "h", "I": "i", "J": "j", "K": "k", "L": "l", "M": "m", "N": "n",
	"O": "o", "P": "p", "Q": "q", "R": "r", "S": "s", "T": "t", "U": "u",
	"V": "v", "W": "w", "X": "x", "Y": "y", "Z": "z",
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

# The tier is on every decision's path. A tier that is not one of the four
# (the loader refuses such data) is treated as critical, and so is an action
# outside the catalogue (fail closed; the decision denies it as
# unknown_action). An action the catalogue lists without a tier (the
# low-risk list, or a tenant's extension declared only by its methods) is low.
known_tiers := {"low", "medium", "high", "critical"}

risk_tier := t if {
	t := data.tenants[input.tenant.id].catalog.tiers[input.poa.act]
	t in known_tiers
} else := "critical" if {
	_ = data.tenants[input.tenant.id].catalog.tiers[input.poa.act]
} else := t if {
	t := data.atb.catalog.tiers[input.poa.act]
	t in known_tiers
} else := "critical" if {
	_ = data.atb.catalog.tiers[input.poa.act]
} else := "low" if {
	in_catalogue(input.poa.act)
} else := "critical"

# Default deny for actions: an action is known when its name is canonical
# (two or more dot-separated segments of lowercase ASCII letters, digits and
# `_`, at most 256 bytes: crate::catalog::is_canonical_action) and the
# catalogue lists it: built-in (data.atb.catalog) or the tenant's extensions
# (data.tenants[<id>].catalog.tiers / .methods). Case variants, lookalikes,
# whitespace and non-strings are never mapped to a tier.
# (Builtins rather than a regex: the embedded engine compiles a regex on
# every call.) Only the allowed characters, and split at the dots: at least
# two segments, none empty (a leading, trailing or doubled dot makes an
# empty one). common_case_tier has these checks inline.
canonical_action(a) if {
	"" < a
	a < []
	count(a) <= 256
	trim(a, "abcdefghijklmnopqrstuvwxyz0123456789_.") == ""
	segments := split(a, ".")
	_ = segments[1]
	not "" in segments
}

in_catalogue(a) if _ = data.atb.catalog.methods[a]

in_catalogue(a) if _ = data.atb.catalog.tiers[a]

in_catalogue(a) if _ = data.atb.catalog.low_risk[a]

in_catalogue(a) if _ = data.tenants[input.tenant.id].catalog.tiers[a]

in_catalogue(a) if _ = data.tenants[input.tenant.id].catalog.methods[a]

action_known if {
	canonical_action(act)
	in_catalogue(act)
}

unknown_action_why := "not_a_string" if {
	[1 | is_string(poa.act)] == []
} else := "not_canonical" if {
	not canonical_action(act)
} else := "not_in_catalogue"

request_action_known if {
	canonical_action(request_action)
	in_catalogue(request_action)
}

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
# Route captures. The broker sends the matched route's template
# (request.route) and its percent-decoded captures (request.route_params).
# A capture named like a member of the mandate's con must equal it, so
# con.vendor_id = "17" binds /api/vendors/{vendor_id} to vendor 17 (numbers
# compare by their decimal text).
# ---------------------------------------------------------------------------

route_param_conflicts contains k if {
	some k, v in input.request.route_params
	route_param_conflict(input.poa.con, k, v)
}

route_param_conflict(c, k, v) if {
	cv := c[k]
	sprintf("%v", [cv]) != v
}

# ---------------------------------------------------------------------------
# Per-action constraints. The family is looked up by the mandate's act; the
# request path never skips them. Operands come from request.params; limits
# from the mandate's con, falling back to their documented default only when
# absent (a present value of the wrong type denies).
# ---------------------------------------------------------------------------

# constraint_check(act, params, con, env) is true or false for a
# constrained action and undefined for any other; env is {"self_ids": the
# agent's canonical ids, "tier": the action's tier, "leg": the mandate's leg}
# (the common case leaves self_ids out: see env_self_ids) (escape switches are read from the evidence by escaped(env, name), never
# from con; only the families that have one pay for the lookup). One definition per family,
# dispatched by the constant first argument, so only that family's body runs.
# Callers test it inside a comprehension: OPA moves a call out of `not f(x) ==
# false`, so an undefined result would fail the rule there instead of
# negating.
# Operands are read inline: a missing number counts as 0, a missing string as
# "", and a present value of the wrong type fails the check; a missing limit
# takes its documented default.
action_allowed if [r | r := constraint_check(act, params, constraints, constraint_env); r == false] == []

constraint_env := {"self_ids": self_ids, "tier": risk_tier, "leg": leg}

# An allowlist in con restricts when non-empty; absent or empty means unconstrained.
allowed_by_optional_list(c, list_name, value) if {
	list := object.get(c, list_name, [])
	is_array(list)
	true in [count(list) == 0, value in list]
}

# SAP
constraint_check("sap.vendor.change", p, c, env) := true if {
	amount := object.get(p, "amount", 0)
	amount > true
	amount < ""
	amount <= 5000
	cap := object.get(c, "liability_cap", 0)
	cap > true
	cap < ""
	amount <= cap
} else := true if {
	amount := object.get(p, "amount", 0)
	amount > true
	amount < ""
	amount > 5000
	escaped(env, "dual_control")
	cap := object.get(c, "liability_cap", 0)
	cap > true
	cap < ""
	amount <= cap
} else := false

constraint_check("sap.vendor.bank_change", p, _, _) := true if {
	p.second_channel_verified == true
	reason := object.get(p, "change_reason", "")
	"" <= reason
	reason < []
	count(reason) > 10
} else := false

constraint_check("sap.payment.execute", p, c, _) := true if {
	amount := object.get(p, "amount", 0)
	amount > true
	amount < ""
	amount > 0
	max := object.get(c, "payment_limit", 100000)
	max > true
	max < ""
	amount <= max
} else := false

constraint_check("sap.payment.batch_release", p, c, _) := true if {
	n := object.get(p, "batch_count", 0)
	n > true
	n < ""
	max_n := object.get(c, "max_batch_count", 100)
	max_n > true
	max_n < ""
	n >= 1
	n <= max_n
	total := object.get(p, "total_amount", 0)
	total > true
	total < ""
	max_total := object.get(c, "max_batch_amount", 1000000)
	max_total > true
	max_total < ""
	total >= 0
	total <= max_total
} else := false

constraint_check("sap.journal_entry.post", p, _, _) := true if {
	account := object.get(p, "gl_account", "")
	"" < account
	account < []
	center := object.get(p, "cost_center", "")
	"" < center
	center < []
	amount := object.get(p, "amount", 0)
	amount > true
	amount < ""
	amount != 0
} else := false

# Salesforce
constraint_check("salesforce.bulk.export", p, c, _) := true if {
	dataset := object.get(p, "dataset", "")
	"" <= dataset
	dataset < []
	list := c.dataset_allowlist
	is_array(list)
	dataset in list
	rows := object.get(p, "row_count", 0)
	rows > true
	rows < ""
	max := object.get(c, "max_rows", 10000)
	max > true
	max < ""
	rows >= 1
	rows <= max
} else := false

constraint_check("salesforce.bulk.delete", p, c, _) := true if {
	object_type := object.get(p, "object_type", "")
	"" <= object_type
	object_type < []
	list := c.deletable_objects
	is_array(list)
	object_type in list
	n := object.get(p, "record_count", 0)
	n > true
	n < ""
	max := object.get(c, "max_delete_count", 1000)
	max > true
	max < ""
	n >= 1
	n <= max
} else := false

constraint_check("salesforce.apex.execute", p, c, _) := true if {
	script := object.get(p, "script_name", "")
	"" <= script
	script < []
	list := c.approved_apex_scripts
	is_array(list)
	script in list
} else := false

constraint_check("salesforce.report.export_all", p, c, _) := true if {
	report := object.get(p, "report_id", "")
	"" <= report
	report < []
	list := c.exportable_reports
	is_array(list)
	report in list
} else := false

# HR / PII
constraint_check("hr.employee.export_pii", p, c, _) := true if {
	purpose := object.get(p, "purpose", "")
	"" <= purpose
	purpose < []
	purpose in {"audit", "legal_hold", "regulatory_compliance", "internal_investigation"}
	n := object.get(p, "record_count", 0)
	n > true
	n < ""
	max := object.get(c, "max_pii_export", 500)
	max > true
	max < ""
	n >= 1
	n <= max
} else := false

constraint_check("hr.employee.terminate", p, _, _) := true if {
	p.offboarding_checklist_complete == true
	reason := object.get(p, "termination_reason", "")
	"" <= reason
	reason < []
	count(reason) > 10
} else := false

constraint_check("hr.payroll.run", p, c, _) := true if {
	period := object.get(p, "payroll_period", "")
	"" < period
	period < []
	n := object.get(p, "employee_count", 0)
	n > true
	n < ""
	max := object.get(c, "max_payroll_employees", 10000)
	max > true
	max < ""
	n >= 0
	n <= max
} else := false

constraint_check("hr.compensation.change", p, c, _) := true if {
	pct := object.get(p, "percentage_change", 0)
	pct > true
	pct < ""
	max := object.get(c, "max_compensation_pct_change", 25)
	max > true
	max < ""
	pct >= -50
	pct <= max
	justification := object.get(p, "justification", "")
	"" <= justification
	justification < []
	count(justification) > 20
} else := false

# Customer data
constraint_check("customer.gdpr.erasure", p, _, _) := true if {
	request_id := object.get(p, "request_id", "")
	"" < request_id
	request_id < []
	days := p.days_since_request
	days > true
	days < ""
	days >= 0
	days <= 30
} else := false

constraint_check("customer.ccpa.export", p, _, _) := true if {
	request_id := object.get(p, "request_id", "")
	"" < request_id
	request_id < []
	format := object.get(p, "export_format", "")
	"" <= format
	format < []
	format in {"json", "csv", "pdf"}
} else := false

constraint_check("customer.pii.access", p, _, _) := true if {
	purpose := object.get(p, "purpose", "")
	"" <= purpose
	purpose < []
	purpose in {"support_case", "billing_inquiry", "identity_verification", "fraud_investigation"}
	reference := object.get(p, "reference_id", "")
	"" < reference
	reference < []
} else := false

# IAM
constraint_check("iam.role.assign", p, c, env) := true if {
	role := object.get(p, "role_name", "")
	"" < role
	role < []
	target := object.get(p, "target_user_id", "")
	"" < target
	target < []
	not canon(target) in env_self_ids(env)
	allowed_by_optional_list(c, "assignable_roles", role)
} else := false

constraint_check("iam.mfa.disable", p, _, _) := true if {
	incident := object.get(p, "incident_reference", "")
	"" < incident
	incident < []
	target := object.get(p, "target_user_id", "")
	"" < target
	target < []
	p.identity_verified == true
} else := false

# OT / SCADA
constraint_check("ot.system.manual_override", p, c, _) := true if {
	p.human_in_loop_approved == true
	window := object.get(c, "override_window_seconds", 0)
	window > true
	window < ""
	window >= 1
	window <= 900
} else := false

constraint_check("scada.setpoint.change", p, c, _) := true if {
	value := p.new_value
	value > true
	value < ""
	low := object.get(c, "setpoint_min", 0)
	low > true
	low < ""
	high := object.get(c, "setpoint_max", 100)
	high > true
	high < ""
	value >= low
	value <= high
	p.safety_review_acknowledged == true
} else := false

constraint_check("ot.safety.interlock_bypass", p, c, _) := true if {
	justification := object.get(p, "emergency_justification", "")
	"" <= justification
	justification < []
	count(justification) > 20
	seconds := object.get(p, "bypass_duration_seconds", 0)
	seconds > true
	seconds < ""
	max := object.get(c, "max_bypass_duration", 3600)
	max > true
	max < ""
	seconds >= 1
	seconds <= max
	p.safety_officer_approved == true
} else := false

# ServiceNow
constraint_check("servicenow.change.emergency_approve", p, _, _) := true if {
	change := object.get(p, "change_number", "")
	"" < change
	change < []
	p.cab_approved == true
} else := true if {
	change := object.get(p, "change_number", "")
	"" < change
	change < []
	p.emergency_flag == true
	justification := object.get(p, "emergency_justification", "")
	"" <= justification
	justification < []
	count(justification) > 20
} else := false

constraint_check("servicenow.incident.priority1_create", p, _, _) := true if {
	impact := object.get(p, "business_impact", "")
	"" <= impact
	impact < []
	count(impact) > 10
	users := object.get(p, "affected_users", 0)
	users > true
	users < ""
	users > 0
} else := false

# Workday / Dynamics
constraint_check("workday.compensation.change", p, c, _) := true if {
	pct := object.get(p, "percentage_change", 0)
	pct > true
	pct < ""
	max := object.get(c, "max_compensation_pct_change", 25)
	max > true
	max < ""
	pct >= -50
	pct <= max
	date := object.get(p, "effective_date", "")
	"" < date
	date < []
} else := false

constraint_check("dynamics.entity.bulk_delete", p, c, _) := true if {
	entity := object.get(p, "entity_type", "")
	"" <= entity
	entity < []
	allowed_by_optional_list(c, "deletable_entities", entity)
	n := object.get(p, "record_count", 0)
	n > true
	n < ""
	max := object.get(c, "max_delete_count", 1000)
	max > true
	max < ""
	n >= 1
	n <= max
} else := false

# Cloud IAM
constraint_check("aws.iam.policy_attach", p, _, env) := true if {
	arn := object.get(p, "policy_arn", "")
	"" < arn
	arn < []
	not aws_admin_policy(arn)
} else := true if {
	arn := object.get(p, "policy_arn", "")
	"" <= arn
	arn < []
	aws_admin_policy(arn)
	escaped(env, "allow_admin_policy")
} else := false

# An AWS-managed Administrator* policy in any partition (aws, aws-cn,
# aws-us-gov, aws-iso, aws-iso-b, ...), under any policy path, in any case
# and with surrounding whitespace (fail closed on spellings AWS may refuse).
aws_admin_policy(arn) if regex.match(`^arn:aws(-[a-z0-9]+)*:iam::aws:policy/([^/]*/)*administrator`, canon(arn))

constraint_check("azure.rbac.assign", p, _, env) := true if {
	role := object.get(p, "role_name", "")
	"" < role
	role < []
	principal := object.get(p, "principal_id", "")
	"" < principal
	principal < []
	scope := object.get(p, "scope", "")
	"" < scope
	scope < []
	not broad_owner(role, scope)
} else := true if {
	principal := object.get(p, "principal_id", "")
	"" < principal
	principal < []
	role := object.get(p, "role_name", "")
	"" <= role
	role < []
	scope := object.get(p, "scope", "")
	"" <= scope
	scope < []
	broad_owner(role, scope)
	escaped(env, "allow_subscription_owner")
} else := false

# Owner at a scope broader than a resource group: the root `/`, a management
# group or a subscription. Azure compares role names and resource ids
# case-insensitively, so these do too; Owner is named or given by its
# built-in role definition GUID (or a role definition id ending in it). A
# scope not recognisably inside a resource group counts as broad (fail
# closed): odd separators, percent-encoding and `.`/`..` segments included.
broad_owner(role, scope) if {
	owner_role(role)
	not narrow_scope(scope)
}

owner_role(role) if canon(role) == "owner"

owner_role(role) if endswith(trim_right(canon(role), "/"), "8e3af657-a8ff-443c-a75c-2fe8c4bcb635")

narrow_scope(scope) if {
	s := canon(scope)
	regex.match(`^/subscriptions/[^/%\\ \t\r\n]+/resourcegroups/[^/%\\ \t\r\n]+(/[^/%\\ \t\r\n]+)*/?$`, s)
	not regex.match(`(^|/)\.+(/|$)`, s)
}

constraint_check("azure.keyvault.secret_set", p, c, env) := true if {
	vault := object.get(p, "vault_name", "")
	"" < vault
	vault < []
	secret := object.get(p, "secret_name", "")
	"" < secret
	secret < []
	not protected_vault(c, vault)
} else := true if {
	secret := object.get(p, "secret_name", "")
	"" < secret
	secret < []
	vault := object.get(p, "vault_name", "")
	"" <= vault
	vault < []
	protected_vault(c, vault)
	escaped(env, "allow_protected_vault_write")
} else := false

# Vault names are case-insensitive in Azure: compared by vault_key, which
# also reads the name out of a vault URI or resource id. A protected_vaults
# that is present but not a list protects every vault (fail closed).
protected_vault(c, vault) if {
	list := c.protected_vaults
	is_array(list)
	some v in list
	"" <= v
	v < []
	vault_key(v) == vault_key(vault)
}

protected_vault(c, _) if {
	list := c.protected_vaults
	not is_array(list)
}

vault_key(v) := k if {
	s := canon(v)
	contains(s, "://")
	host := split(split(s, "://")[1], "/")[0]
	k := split(host, ".")[0]
} else := k if {
	s := canon(v)
	contains(s, "/providers/microsoft.keyvault/vaults/")
	k := split(split(s, "/providers/microsoft.keyvault/vaults/")[1], "/")[0]
} else := canon(v)

# ---------------------------------------------------------------------------
# Approvals per tier (evidence is written by AgentAuth into the signed leg)
# ---------------------------------------------------------------------------

executive_roles := {"ceo", "cfo", "coo", "cto", "ciso", "board_member", "general_counsel", "chief_risk_officer"}

approval_ok if approved(risk_tier, leg, self_ids)

# Who may not approve: the agent itself (by SPIFFE ID or mandate subject),
# compared in canonical form.
self_ids := {canon(id) | some id in [agent, poa.sub]; is_string(id)}

# approved(tier, leg, self_ids): the tier's approval evidence is complete.
approved("low", _, _) := true

# Approver ids compare in canonical form (trimmed, ASCII case-folded): the
# same person under two spellings counts once, and an id that is empty
# after trimming counts as nobody. self_ids are canonical.
approved("medium", leg, self_ids) if {
	approver := leg.approval.approver_id
	"" <= approver
	approver < []
	id := canon(approver)
	id != ""
	not id in self_ids
}

approved("high", leg, self_ids) if {
	block := leg.dual_control
	block.required == true
	approvers := block.approvers
	[] <= approvers
	approvers < {}
	ids := {id |
		some a in approvers
		{} <= a
		x := a.id
		"" <= x
		x < []
		id := canon(x)
		id != ""
	}
	count(ids) >= 2
	ids & self_ids == set()
}

# Distinct people holding an executive role: one person with two roles counts once.
approved("critical", leg, self_ids) if {
	block := leg.executive_control
	block.required == true
	approvers := block.approvers
	[] <= approvers
	approvers < {}
	ids := {id |
		some a in approvers
		{} <= a
		x := a.id
		"" <= x
		x < []
		id := canon(x)
		id != ""
	}
	ids & self_ids == set()
	executives := {id |
		some a in approvers
		{} <= a
		x := a.id
		"" <= x
		x < []
		id := canon(x)
		id != ""
		r := a.role
		"" <= r
		r < []
		canon(r) in {"ceo", "cfo", "coo", "cto", "ciso", "board_member", "general_counsel", "chief_risk_officer"}
	}
	count(executives) >= 2
}

# ---------------------------------------------------------------------------
# Escape switches: flags that relax a rule (dual_control for large SAP vendor
# changes, allow_admin_policy, allow_subscription_owner,
# allow_protected_vault_write, allow_outside_business_hours,
# bypass_rate_limit). Honoured only from the approval evidence AgentAuth
# writes for an action that needs approval: the `escapes` object of the
# tier's own evidence block (leg.approval / leg.dual_control /
# leg.executive_control), where approvers saw it. A flag in con alone, or
# on a low-tier action, relaxes nothing.
# ---------------------------------------------------------------------------

evidence_block := {"medium": "approval", "high": "dual_control", "critical": "executive_control"}

escapes := escapes_of(risk_tier, leg)

# Whether escape switch `name` is on in the evidence for env's tier.
escaped(env, name) if escapes_of(env.tier, env.leg)[name] == true

escapes_of(tier, l) := e if {
	block := l[evidence_block[tier]]
	is_object(block)
	e := block.escapes
	is_object(e)
} else := {}

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
	not escapes.allow_outside_business_hours == true
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
	not escapes.bypass_rate_limit == true
	action_count >= action_limit
}

# The approval window: the time policy's approval_window_seconds; 300 s
# when a time policy (the tenant's or the global one) exists without one, as
# upstream; 86400 s when there is no time policy at all (approvals then
# still age out within a day; the mandate's own TTL, at most 900 s, and
# AgentAuth's challenge TTL bound them tighter in practice).
approval_window := w if {
	w := time_policy.approval_window_seconds
	is_number(w)
} else := 300 if {
	time_policy_present
} else := 86400

time_policy_present if is_object(tenant_data.time_policy)

time_policy_present if is_object(data.time_policy)

# Clock skew tolerated between AgentAuth, which stamps approvals, and the
# broker: an approval dated more than this in the future is refused.
approval_clock_skew := 60

# Every approval entry of the evidence: leg.approval and each approver of
# leg.dual_control / leg.executive_control, as [where, entry].
approval_entries contains ["leg.approval", e] if e := leg.approval

approval_entries contains [sprintf("leg.dual_control.approvers[%v]", [i]), e] if {
	xs := leg.dual_control.approvers
	is_array(xs)
	some i, e in xs
}

approval_entries contains [sprintf("leg.executive_control.approvers[%v]", [i]), e] if {
	xs := leg.executive_control.approvers
	is_array(xs)
	some i, e in xs
}

# An entry's timestamp (unix seconds), if it is a number.
approval_time(e) := t if {
	is_object(e)
	t := e.timestamp
	is_number(t)
}

# Entries without a numeric timestamp, and entries dated in the future.
untimed_approvals := sort([w | some x in approval_entries; w := x[0]; [t | t := approval_time(x[1])] == []])

future_approvals := sort([w |
	some x in approval_entries
	w := x[0]
	t := approval_time(x[1])
	t > now_seconds + approval_clock_skew
])

approval_times contains t if {
	some x in approval_entries
	t := approval_time(x[1])
}

violations contains sprintf("approval_expired:%vs_ago", [age]) if {
	count(approval_times) > 0
	age := now_seconds - min(approval_times)
	age > approval_window
}

# ---------------------------------------------------------------------------
# The decision: the first failing check gives the reason.
# ---------------------------------------------------------------------------

con_is_object if is_object(poa.con)

denial := {"reason": "missing_required_fields", "details": missing_fields} if {
	not fields_ok
} else := {"reason": "con_invalid", "details": {"con": "must be an object"}} if {
	not con_is_object
} else := {"reason": "leg_invalid", "details": leg_problems} if {
	not leg_ok
} else := {"reason": "ttl_invalid", "details": {"max_ttl_seconds": min([max_ttl, 900])}} if {
	not ttl_ok
} else := {"reason": "unknown_action", "details": {"action": act, "why": unknown_action_why}} if {
	not action_known
} else := {"reason": "sub_mismatch"} if {
	poa.sub != agent
} else := {"reason": "platform_spiffe_binding_mismatch", "details": binding_detail} if {
	not binding_ok
} else := {"reason": "action_mismatch", "details": {"act": act, "request_action": request_action}} if {
	request_action != act
} else := {"reason": "route_param_mismatch", "details": {"params": sort(route_param_conflicts)}} if {
	count(route_param_conflicts) > 0
} else := {"reason": "action_denied", "details": {"action": act}} if {
	not action_allowed
} else := {"reason": tier_denial[risk_tier], "details": {"tier": risk_tier, "action": act}} if {
	not approval_ok
} else := {"reason": "approval_timestamp_invalid", "details": {"entries": untimed_approvals}} if {
	count(untimed_approvals) > 0
} else := {"reason": "approval_timestamp_in_future", "details": {"entries": future_approvals, "leeway_seconds": approval_clock_skew}} if {
	count(future_approvals) > 0
} else := {"reason": "time_policy_violation", "details": {"violations": sort(violations)}} if {
	count(violations) > 0
}

# ---------------------------------------------------------------------------
# Per-tenant extensions (SPEC §4). A tenant's own modules (`policy_files` in
# its config) are confined to `package atb.tenants.<id>` (checked at load)
# and can only ADD denials: a decision the shared policy allows is denied
# (`tenant_policy_denied`, the reasons in details) when the tenant's
# `deny` set has a member. A shared denial keeps its own reason; other
# tenants' modules are never evaluated. A `deny` that is neither a set nor an
# array denies too (fail closed).
# ---------------------------------------------------------------------------

# Without a tenant deny document (the common case) the shared decision is
# the decision, in one rule body: the tenant check below costs about 11 µs
# per decision on the embedded engine.
decision := base_decision if {
	[1 | _ = data.atb.tenant_policy.deny] == []
} else := {"allow": false, "reason": "tenant_policy_denied", "details": {"reasons": reasons}, "risk_tier": base_decision.risk_tier} if {
	base_decision.allow == true
	reasons := tenant_denials
	count(reasons) > 0
} else := base_decision

# `data.atb.tenant_policy.deny` is the input tenant's `deny`, through a
# module the broker generates when tenants have modules (one static
# reference per tenant, so no other tenant's rules are evaluated).
tenant_deny_doc := d if {
	d := data.atb.tenant_policy.deny
} else := set()

tenant_denials := sort([tenant_reason(r) | some r in tenant_deny_doc]) if {
	is_set(tenant_deny_doc)
} else := sort([tenant_reason(r) | some r in tenant_deny_doc]) if {
	is_array(tenant_deny_doc)
} else := ["tenant policy: deny must be a set of reasons"]

tenant_reason(r) := r if is_string(r)

tenant_reason(r) := "tenant policy: a reason that is not a string" if not is_string(r)

default base_decision := {"allow": false, "reason": "deny_by_default", "risk_tier": "unknown"}

no_poa_allowed if low_risk_request

no_poa_allowed if safe_path_request

# The first two branches decide the common case in few rule bodies: the
# configuration the broker always sends (numeric max_ttl_seconds and
# current_time_ns), with no tenant platform binding, time policy, rate limits
# or tier override and no global binding or rate limits. `common_case_tier`
# holds every check of the chain below up to the approvals; the first branch
# adds the approvals and time policies (allow), the second answers a missing
# approval directly (the chain's next check). An input outside the common
# case, or failing a check before the approvals, takes the full chain, which
# finds the first failing check (and allows too when nothing fails), so the
# decisions are the chain's. Inline, because on the embedded engine every
# rule reference and every call (builtins too) costs more than the
# expressions it saves.
base_decision := {"allow": true, "reason": "allow", "risk_tier": "low"} if {
	# The commonest case of all: a low-risk action and no approval evidence
	# in the leg, so there are no timestamps to check (and no business hours:
	# they apply to high risk). Low is the only tier approved without
	# evidence.
	common_case_tier == "low"
	l := input.poa.leg
	[1 | some b in ["approval", "dual_control", "executive_control"]; _ = l[b]] == []
	[1 | r := data.rate_limits; is_object(r); r != {}] == []
	ns := input.current_time_ns
	ns > true
	ns < ""
} else := {"allow": true, "reason": "allow", "risk_tier": tier} if {
	tier := common_case_tier
	l := input.poa.leg
	approved(tier, l, {canon(input.agent.spiffe_id)})

	# Time policies: global business hours and rate limits not in force;
	# every approval entry timestamped, not in the future, within the window.
	[1 | tier == "high"; tp := data.time_policy; tp.business_hours.required_for_high_risk == true] == []
	[1 | r := data.rate_limits; is_object(r); r != {}] == []
	ns := input.current_time_ns
	ns > true
	ns < ""
	now := ns / 1000000000
	# Each block: as many fresh entries (a numeric timestamp, at most
	# approval_clock_skew ahead, within the window) as entries.
	w := global_approval_window
	[1 | _ = l.approval] == [1 | t := l.approval.timestamp; t > true; t < ""; t <= now + 60; now - t <= w]
	[1 | xs := l.dual_control.approvers; [] <= xs; xs < {}; some _ in xs] == [1 |
		xs := l.dual_control.approvers
		[] <= xs
		xs < {}
		some e in xs
		t := e.timestamp
		t > true
		t < ""
		t <= now + 60
		now - t <= w
	]
	[1 | xs := l.executive_control.approvers; [] <= xs; xs < {}; some _ in xs] == [1 |
		xs := l.executive_control.approvers
		[] <= xs
		xs < {}
		some e in xs
		t := e.timestamp
		t > true
		t < ""
		t <= now + 60
		now - t <= w
	]
} else := {"allow": false, "reason": tier_denial[tier], "details": {"tier": tier, "action": input.poa.act}, "risk_tier": tier} if {
	tier := common_case_tier
	not approved(tier, input.poa.leg, {canon(input.agent.spiffe_id)})
} else := {"allow": false, "reason": "unknown_action", "details": {"action": request_action}, "risk_tier": request_tier} if {
	not poa_provided
	request_action != ""
	not request_action_known
} else := {"allow": true, "reason": "allow_low_risk_without_poa", "risk_tier": "low"} if {
	not poa_provided
	no_poa_allowed
} else := {"allow": false, "reason": "poa_required_for_action", "risk_tier": request_tier} if {
	not poa_provided
} else := object.union({"allow": false, "risk_tier": risk_tier}, denial) if {
	denial
} else := {"allow": true, "reason": "allow", "risk_tier": risk_tier}

# The action's tier when the input is in the common case (see decision) and
# passes every check before the approvals; undefined otherwise.
# Type guards are comparisons: Rego orders values of different types (null <
# booleans < numbers < strings < arrays < objects; sets, which JSON has not,
# sort differently per engine), so `x > true; x < ""` holds exactly for
# numbers, `"" < x; x < []` exactly for non-empty strings, `[] <= x; x <
# {}` exactly for arrays and `{} <= x` exactly for objects (the input is
# JSON: never a set). A comparison costs the embedded engine a fraction of a
# call such as is_object.
common_case_tier := tier if {
	p := input.poa

	# Required fields: jti here, the others by the type checks below (which
	# also make p a non-empty object).
	p.jti != null

	# Legal basis.
	l := p.leg
	"" < l.jurisdiction
	l.jurisdiction < []
	"" <= l.accountable_party.type
	l.accountable_party.type < []
	"" < l.accountable_party.id
	l.accountable_party.id < []

	# TTL.
	p.iat > true
	p.iat < ""
	p.exp > true
	p.exp < ""
	ttl := p.exp - p.iat
	ttl > 0
	ttl <= 900
	ttl_limit := input.policy.max_ttl_seconds
	ttl_limit > true
	ttl_limit < ""
	ttl <= ttl_limit

	# Subject, platform binding (none configured), action.
	me := input.agent.spiffe_id
	"" <= me
	me < []
	p.sub == me
	[d | ts := data.tenants; d := ts[input.tenant.id]; tenant_overrides(d, p.act)] == []
	[m | pb := data.platform_binding; m := pb.mode; m != "none"] == []
	# The action: canonical (canonical_action, inline) and the request's.
	a := p.act
	"" < a
	a < []
	count(a) <= 256
	trim(a, "abcdefghijklmnopqrstuvwxyz0123456789_.") == ""
	segments := split(a, ".")
	_ = segments[1]
	not "" in segments
	input.request.action == a

	# The action's constraint family.
	c := p.con
	{} <= c
	[k | some k, v in input.request.route_params; route_param_conflict(c, k, v)] == []
	rp := input.request.params
	{} <= rp
	# A built-in action with one of the four tiers (low when the catalogue
	# gives none); anything else takes the full chain.
	cat := data.atb.catalog
	_ = cat.methods[a]
	tier := object.get(cat.tiers, a, "low")
	tier in {"low", "medium", "high", "critical"}
	env := {"tier": tier, "leg": l}
	[r | r := constraint_check(a, rp, c, env); r == false] == []
}

# The tenant's own data changes this decision: its platform binding, time
# policy or rate limits, or its tier for the action (a non-object value falls
# back to the global document, and is not counted when false).
tenant_overrides(d, _) if d.platform_binding

tenant_overrides(d, _) if d.time_policy

tenant_overrides(d, _) if d.rate_limits

tenant_overrides(d, act) if {
	_ = d.catalog.tiers[act]
}

tenant_overrides(d, act) if {
	_ = d.catalog.methods[act]
}

# The approval window when no tenant time policy applies (see approval_window).
global_approval_window := 86400 if {
	[1 | _ = data.time_policy] == []
} else := w if {
	w := data.time_policy.approval_window_seconds
	w > true
	w < ""
} else := 300 if {
	is_object(data.time_policy)
} else := 86400

request_tier := t if {
	t := data.atb.catalog.tiers[request_action]
	t in known_tiers
} else := "low" if {
	request_action_known
} else := "critical"

# env's self_ids: the full chain's (constraint_env), else the common case's,
# the agent's canonical id (there the mandate's subject is the agent, a
# string). common_case_tier leaves them out of env: only iam.role.assign
# reads them.
env_self_ids(env) := ids if {
	ids := env.self_ids
} else := {canon(input.agent.spiffe_id)}
