# ATB PoA decision policy (package atb.poa, Rego v1).
#
# This is the pipeline's baseline policy: identity and action binding, legal
# basis, lifetime, and the approval evidence each risk tier needs. The full
# enterprise action catalogue and per-action constraints arrive with the
# policy issue; tenants extend the catalogue with data at data.atb.catalog.
#
# Portability rules (identical decisions on regorus and OPA): no `not f(x)`
# over possibly-undefined arguments (named helper rules instead), type
# guards before string builtins, `%v` in sprintf.
package atb.poa

import rego.v1

executive_roles := {"ceo", "cfo", "coo", "cto", "ciso", "board_member", "general_counsel", "chief_risk_officer"}

builtin_catalog := {
	"crm.contact.read": "low",
	"kb.docs.search": "low",
	"crm.contact.update": "medium",
	"crm.contact.delete": "medium",
	"sap.payment.execute": "high",
	"iam.role.assign": "high",
	"org.merger.approve": "critical",
	"security.root.rotate": "critical",
}

catalog := object.union(builtin_catalog, object.get(data, ["atb", "catalog"], {}))

action := input.poa.act

default risk_tier := "low"

risk_tier := tier if {
	is_string(action)
	tier := catalog[action]
}

agent := input.agent.spiffe_id

has_poa if {
	is_object(input.poa)
	is_string(input.poa.jti)
}

max_ttl := t if {
	t := input.policy.max_ttl_seconds
	is_number(t)
} else := 300

ttl_ok if {
	ttl := input.poa.exp - input.poa.iat
	ttl > 0
	ttl <= max_ttl
	ttl <= 900
}

leg := input.poa.leg

leg_ok if {
	is_object(leg)
	is_string(leg.jurisdiction)
	leg.jurisdiction != ""
	is_object(leg.accountable_party)
	is_string(leg.accountable_party.type)
	is_string(leg.accountable_party.id)
	leg.accountable_party.id != ""
}

action_matches if input.request.action == action

medium_approved if {
	approver := leg.approval.approver_id
	is_string(approver)
	approver != ""
	approver != agent
}

approver_ids(block) := {id |
	some a in block.approvers
	id := a.id
	is_string(id)
	id != ""
}

self_listed(block) if {
	some a in block.approvers
	a.id == agent
}

dual_control_ok if {
	block := leg.dual_control
	block.required == true
	count(approver_ids(block)) >= 2
	not self_listed(block)
}

executive_ids(block) := {id |
	some a in block.approvers
	id := a.id
	is_string(id)
	is_string(a.role)
	lower(a.role) in executive_roles
}

executive_ok if {
	block := leg.executive_control
	block.required == true
	count(executive_ids(block)) >= 2
	not self_listed(block)
}

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

tier_reason := {
	"medium": "medium_risk_approval_required",
	"high": "high_risk_dual_control_required",
	"critical": "critical_risk_executive_approval_required",
}

denial := {"reason": "poa_required_for_action"} if {
	not has_poa
} else := {"reason": "sub_mismatch", "details": {"expected": agent}} if {
	input.poa.sub != agent
} else := {"reason": "action_mismatch", "details": {"act": action}} if {
	not action_matches
} else := {"reason": "ttl_invalid", "details": {"max_ttl_seconds": max_ttl}} if {
	not ttl_ok
} else := {"reason": "leg_invalid"} if {
	not leg_ok
} else := {"reason": tier_reason[risk_tier], "details": {"tier": risk_tier}} if {
	not approval_ok
}

decision := object.union({"allow": false, "risk_tier": risk_tier}, denial) if {
	denial
} else := {"allow": true, "reason": "allow", "risk_tier": risk_tier}
