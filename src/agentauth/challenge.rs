//! Challenges: what an agent asked for, who approved it, and the one
//! mandate it may become. Plain data and transitions, no I/O: the store
//! applies these transitions atomically, the HTTP layer maps refusals.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::poa::MAX_ACTION_LEN;
use crate::routes::pinned::PinnedCall;

/// Risk tier, as the policy's `risk_tier` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Low,
    Medium,
    High,
    Critical,
}

impl Tier {
    /// Unknown names are critical: an unexpected tier never lowers the bar.
    pub fn from_policy(name: &str) -> Self {
        match name {
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => Self::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Distinct human approvals a mandate of this tier needs.
    pub fn approvals_needed(self) -> usize {
        match self {
            Self::Low => 0,
            Self::Medium => 1,
            Self::High | Self::Critical => 2,
        }
    }
}

/// Where a challenge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Expired,
    Minted,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "expired" => Self::Expired,
            "minted" => Self::Minted,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Minted => "minted",
        }
    }
}

/// An authenticated human approver (from a verified OIDC token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approver {
    pub id: String,
    pub email: Option<String>,
    /// Lower-cased roles.
    pub roles: Vec<String>,
    /// The tenants the IdP binds the approver to
    /// (`agentauth.approvers.tenant_claim`).
    pub tenants: Vec<String>,
    /// Holds one of `agentauth.approvers.cross_tenant_roles`.
    pub cross_tenant: bool,
}

impl Approver {
    /// Whether the approver may act on `tenant`'s challenges: only their
    /// own tenants', unless the operator gave their role every tenant.
    pub fn may_act_for(&self, tenant: &str) -> bool {
        self.cross_tenant || self.tenants.iter().any(|t| t == tenant)
    }
}

/// One recorded approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approver_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The executive role this approval counted under (critical tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Unix seconds.
    pub approved_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minted {
    pub jti: String,
    pub at: i64,
    pub exp: i64,
}

/// A challenge as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    pub id: String,
    pub tenant: String,
    /// The requesting agent's SPIFFE ID (from its mTLS certificate).
    pub agent: String,
    pub act: String,
    pub con: Value,
    pub leg: Value,
    pub tier: Tier,
    pub approvals_needed: usize,
    pub approvals: Vec<Approval>,
    pub created_at: i64,
    pub expires_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted: Option<Minted>,
    /// The people the tenant holds accountable for the agent (its
    /// `agent_owners`): never approvers of this challenge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owners: Vec<String>,
    /// Its expiry has been audited (by the sweeper, once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expiry_reported: bool,
}

/// Why a request about a challenge is refused (the text is safe to
/// return; `agentauth::http` maps each to its HTTP answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such challenge")]
    NotFound,
    #[error("the challenge has expired")]
    Expired,
    #[error("the challenge was rejected by an approver")]
    Rejected,
    #[error("the mandate for this challenge was already issued")]
    AlreadyMinted,
    #[error("the challenge is {}, not pending", .0.as_str())]
    NotPending(Status),
    #[error("the challenge has {have} of {need} required approvals")]
    NotApproved { have: usize, need: usize },
    #[error("only the agent that requested the challenge may do this")]
    NotRequestingAgent,
    #[error("approvers may not approve their own request (agent or accountable party)")]
    SelfApproval,
    #[error("this approver has already approved the challenge")]
    DuplicateApprover,
    #[error("critical-risk actions need approvers holding an executive role")]
    ExecutiveRequired,
    #[error("the approver does not belong to this challenge's tenant")]
    WrongTenant,
    #[error("too many open challenges; try again later")]
    Full,
    #[error("challenge state is unavailable: {0}")]
    Store(String),
}

impl Refusal {
    /// A stable code for metrics and audit.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "unknown_challenge",
            Self::Expired => "challenge_expired",
            Self::Rejected => "challenge_rejected",
            Self::AlreadyMinted => "already_minted",
            Self::NotPending(_) => "challenge_not_pending",
            Self::NotApproved { .. } => "not_approved",
            Self::NotRequestingAgent => "not_requesting_agent",
            Self::SelfApproval => "self_approval",
            Self::DuplicateApprover => "duplicate_approver",
            Self::ExecutiveRequired => "executive_role_required",
            Self::WrongTenant => "wrong_tenant",
            Self::Full => "too_many_challenges",
            Self::Store(_) => "state_unavailable",
        }
    }
}

/// A challenge request AgentAuth refuses as written (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 400 `invalid_challenge`.
    #[error("{0}")]
    Invalid(String),
    /// 400 `escape_not_allowed`: escape switches on an action that needs
    /// no approval, which nothing could vouch for.
    #[error("con carries {}: escape switches are honoured only for actions that need approval, and this action is {tier} risk", .names.join(", "))]
    EscapeNotAllowed {
        names: Vec<String>,
        tier: &'static str,
    },
}

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_challenge",
            Self::EscapeNotAllowed { .. } => "escape_not_allowed",
        }
    }
}

impl From<String> for RequestError {
    fn from(reason: String) -> Self {
        Self::Invalid(reason)
    }
}

impl From<&str> for RequestError {
    fn from(reason: &str) -> Self {
        Self::Invalid(reason.to_owned())
    }
}

/// Limits on agent-supplied JSON.
pub const MAX_DEPTH: usize = 10;
pub const MAX_STRING_LEN: usize = 4096;
pub const MAX_KEY_LEN: usize = 256;
pub const MAX_NODES: usize = 2000;

/// Approval evidence blocks only AgentAuth may write.
pub const SERVER_WRITTEN: [&str; 3] = ["approval", "dual_control", "executive_control"];

/// Escape switches: `con` flags that relax a policy rule (a large SAP
/// vendor change under dual control, an AWS admin policy, a broad Azure
/// Owner assignment, a protected Key Vault write, a call outside business
/// hours, a rate-limit bypass). The policy honours one only from the
/// approval evidence AgentAuth writes (`leg.<block>.escapes`) for an action
/// that needed approval, so approvers see and vouch for it; on an action
/// that needs none, nothing could vouch for it and the challenge is
/// refused (400 `escape_not_allowed`).
pub const ESCAPE_FLAGS: [&str; 6] = [
    "allow_admin_policy",
    "allow_outside_business_hours",
    "allow_protected_vault_write",
    "allow_subscription_owner",
    "bypass_rate_limit",
    "dual_control",
];

/// The escape switches `con` carries.
pub fn escapes(con: &Value) -> Map<String, Value> {
    ESCAPE_FLAGS
        .iter()
        .filter_map(|f| Some(((*f).to_owned(), con.get(*f)?.clone())))
        .collect()
}

/// Refuses escape switches on a tier that needs no approval (400
/// `escape_not_allowed`, whatever their value) and escape switches that
/// are not booleans (400 `invalid_challenge`).
pub fn check_escapes(con: &Value, tier: Tier) -> Result<(), RequestError> {
    let found = escapes(con);
    if found.is_empty() {
        return Ok(());
    }
    if tier.approvals_needed() == 0 {
        return Err(RequestError::EscapeNotAllowed {
            names: found.keys().cloned().collect(),
            tier: tier.as_str(),
        });
    }
    if let Some((name, _)) = found.iter().find(|(_, v)| !v.is_boolean()) {
        return Err(RequestError::Invalid(format!(
            "con.{name} is an escape switch and must be true or false"
        )));
    }
    Ok(())
}

/// A validated challenge request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChallengeRequest {
    pub act: String,
    pub con: Value,
    pub leg: Value,
}

/// Reads `POST /v1/challenge`'s body. `agent` is the mTLS identity; a body
/// `agent_spiffe_id`, if sent, must equal it.
pub fn parse_request(body: &Value, agent: &str) -> Result<ChallengeRequest, RequestError> {
    let obj = body
        .as_object()
        .ok_or("the body must be a JSON object with act, con and leg")?;
    for key in obj.keys() {
        if !matches!(key.as_str(), "agent_spiffe_id" | "act" | "con" | "leg") {
            return Err(format!("unknown field {key:?}").into());
        }
    }
    if let Some(claimed) = obj.get("agent_spiffe_id") {
        if claimed.as_str() != Some(agent) {
            return Err(
                "agent_spiffe_id does not match the SPIFFE ID of the client certificate".into(),
            );
        }
    }
    let act = obj
        .get("act")
        .and_then(Value::as_str)
        .ok_or("act is required and must be a string")?;
    // Its canonical form and the catalogue are checked by the caller,
    // which knows the tenant (400 `unknown_action`).
    if act.is_empty() || act.len() > MAX_ACTION_LEN {
        return Err(format!("act must be 1 to {MAX_ACTION_LEN} bytes").into());
    }
    let object = |name: &str| -> Result<Value, String> {
        match obj.get(name) {
            Some(v @ Value::Object(_)) => {
                let mut nodes = 0;
                check_json(v, 0, &mut nodes).map_err(|e| format!("{name}: {e}"))?;
                Ok(v.clone())
            }
            Some(_) => Err(format!("{name} must be a JSON object")),
            None => Err(format!("{name} is required (a JSON object, may be empty)")),
        }
    };
    let con = object("con")?;
    // A pinned call (con.http) must be well formed, so approvers see the
    // exact call and the broker never meets a pin it has to refuse.
    PinnedCall::from_con(Some(&con)).map_err(|e| e.to_string())?;
    let leg = object("leg")?;
    for block in SERVER_WRITTEN {
        if leg.get(block).is_some() {
            return Err(format!(
                "leg.{block} is written by AgentAuth from its approval records; agents may not supply it"
            )
            .into());
        }
    }
    Ok(ChallengeRequest {
        act: act.to_owned(),
        con,
        leg,
    })
}

fn check_json(v: &Value, depth: usize, nodes: &mut usize) -> Result<(), String> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(format!("more than {MAX_NODES} values"));
    }
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    match v {
        Value::String(s) => check_string(s, MAX_STRING_LEN, "string"),
        Value::Array(items) => items
            .iter()
            .try_for_each(|i| check_json(i, depth + 1, nodes)),
        Value::Object(map) => map.iter().try_for_each(|(k, i)| {
            check_string(k, MAX_KEY_LEN, "key")?;
            check_json(i, depth + 1, nodes)
        }),
        _ => Ok(()),
    }
}

fn check_string(s: &str, max: usize, what: &str) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("a {what} is longer than {max} bytes"));
    }
    if s.contains('\0') {
        return Err(format!("a {what} contains a NUL character"));
    }
    Ok(())
}

/// Case- and space-insensitive identity comparison.
fn same_person(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

impl Challenge {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        tenant: String,
        agent: String,
        request: ChallengeRequest,
        tier: Tier,
        now: i64,
        ttl_seconds: i64,
    ) -> Self {
        Self {
            id,
            tenant,
            agent,
            act: request.act,
            con: request.con,
            leg: request.leg,
            tier,
            approvals_needed: tier.approvals_needed(),
            approvals: Vec::new(),
            created_at: now,
            expires_at: now + ttl_seconds,
            rejected: None,
            minted: None,
            owners: Vec::new(),
            expiry_reported: false,
        }
    }

    /// With the agent's owners as the tenant knows them.
    pub fn owned_by(mut self, owners: Vec<String>) -> Self {
        self.owners = owners;
        self
    }

    pub fn status(&self, now: i64) -> Status {
        if self.minted.is_some() {
            Status::Minted
        } else if self.rejected.is_some() {
            Status::Rejected
        } else if now >= self.expires_at {
            Status::Expired
        } else if self.approvals.len() >= self.approvals_needed {
            Status::Approved
        } else {
            Status::Pending
        }
    }

    fn accountable_party(&self) -> Option<&str> {
        self.leg
            .get("accountable_party")
            .and_then(|p| p.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
    }

    /// Whether `approver` (as the IdP authenticated it, by id or email) is
    /// the requester: the agent itself (its mTLS SPIFFE ID), one of the
    /// agent's owners as the tenant's configuration knows them, or the
    /// accountable party the agent named in `leg` (which can only narrow
    /// who may approve, never widen it).
    pub fn is_self(&self, approver: &Approver) -> bool {
        let names = std::iter::once(approver.id.as_str()).chain(approver.email.as_deref());
        let own: Vec<&str> = std::iter::once(self.agent.as_str())
            .chain(self.owners.iter().map(String::as_str))
            .chain(self.accountable_party())
            .collect();
        names
            .into_iter()
            .any(|n| own.iter().any(|o| same_person(n, o)))
    }

    /// Records one approval (the caller applies this atomically).
    pub fn approve(
        &mut self,
        approver: &Approver,
        executive_roles: &[String],
        now: i64,
    ) -> Result<(), Refusal> {
        match self.status(now) {
            Status::Pending => {}
            Status::Expired => return Err(Refusal::Expired),
            Status::Rejected => return Err(Refusal::Rejected),
            Status::Minted => return Err(Refusal::AlreadyMinted),
            s @ Status::Approved => return Err(Refusal::NotPending(s)),
        }
        if self.is_self(approver) {
            return Err(Refusal::SelfApproval);
        }
        // One person, one approval, whichever of their names the IdP put in
        // `sub` (an opaque id, an email, or none: the email stands in): two
        // subjects for one mailbox are one approver.
        let names = || std::iter::once(approver.id.as_str()).chain(approver.email.as_deref());
        if self.approvals.iter().any(|a| {
            let recorded = std::iter::once(a.approver_id.as_str()).chain(a.email.as_deref());
            recorded
                .into_iter()
                .any(|r| names().any(|n| same_person(n, r)))
        }) {
            return Err(Refusal::DuplicateApprover);
        }
        let role = if self.tier == Tier::Critical {
            let role = approver
                .roles
                .iter()
                .find(|r| executive_roles.iter().any(|e| e.eq_ignore_ascii_case(r)));
            Some(role.ok_or(Refusal::ExecutiveRequired)?.clone())
        } else {
            None
        };
        self.approvals.push(Approval {
            approver_id: approver.id.trim().to_owned(),
            email: approver.email.clone(),
            role,
            approved_at: now,
        });
        Ok(())
    }

    /// Rejects the challenge (terminal).
    pub fn reject(
        &mut self,
        approver: &Approver,
        reason: Option<String>,
        now: i64,
    ) -> Result<(), Refusal> {
        match self.status(now) {
            Status::Pending | Status::Approved => {}
            Status::Expired => return Err(Refusal::Expired),
            Status::Rejected => return Err(Refusal::Rejected),
            Status::Minted => return Err(Refusal::AlreadyMinted),
        }
        self.rejected = Some(Decision {
            by: approver.id.trim().to_owned(),
            at: now,
            reason,
        });
        Ok(())
    }

    /// Consumes the challenge for one mandate (the caller applies this
    /// atomically, so a second call sees `Minted`).
    pub fn mint(&mut self, agent: &str, jti: &str, exp: i64, now: i64) -> Result<(), Refusal> {
        if agent != self.agent {
            return Err(Refusal::NotRequestingAgent);
        }
        match self.status(now) {
            Status::Approved => {}
            Status::Pending => {
                return Err(Refusal::NotApproved {
                    have: self.approvals.len(),
                    need: self.approvals_needed,
                })
            }
            Status::Expired => return Err(Refusal::Expired),
            Status::Rejected => return Err(Refusal::Rejected),
            Status::Minted => return Err(Refusal::AlreadyMinted),
        }
        self.minted = Some(Minted {
            jti: jti.to_owned(),
            at: now,
            exp,
        });
        Ok(())
    }

    /// The signed `leg`: the agent's legal basis plus approval evidence
    /// written from the records (never from the agent).
    pub fn leg_with_evidence(&self) -> Value {
        let mut leg: Map<String, Value> = self.leg.as_object().cloned().unwrap_or_default();
        for block in SERVER_WRITTEN {
            leg.remove(block);
        }
        // The escape switches the approvers saw in con, inside the tier's
        // own block (never for a tier without approvals).
        let escapes = escapes(&self.con);
        let with_escapes = |mut block: Value| {
            if !escapes.is_empty() {
                block["escapes"] = Value::Object(escapes.clone());
            }
            block
        };
        let entry = |a: &Approval, with_role: bool| {
            let mut e = json!({
                "id": a.approver_id,
                "approved_at": crate::audit::rfc3339(a.approved_at),
                "timestamp": a.approved_at,
            });
            if with_role {
                e["role"] = a.role.clone().map_or(Value::Null, Value::String);
            }
            e
        };
        match self.tier {
            Tier::Low => {}
            Tier::Medium => {
                if let Some(a) = self.approvals.first() {
                    leg.insert(
                        "approval".into(),
                        with_escapes(json!({
                            "approver_id": a.approver_id,
                            "approved_at": crate::audit::rfc3339(a.approved_at),
                            "timestamp": a.approved_at,
                        })),
                    );
                }
            }
            Tier::High => {
                let approvers: Vec<Value> =
                    self.approvals.iter().map(|a| entry(a, false)).collect();
                leg.insert(
                    "dual_control".into(),
                    with_escapes(json!({"required": true, "approvers": approvers})),
                );
            }
            Tier::Critical => {
                let approvers: Vec<Value> = self.approvals.iter().map(|a| entry(a, true)).collect();
                leg.insert(
                    "executive_control".into(),
                    with_escapes(json!({"required": true, "approvers": approvers})),
                );
            }
        }
        Value::Object(leg)
    }

    /// The mandate's claims.
    pub fn claims(&self, issuer: &str, audience: &str, jti: &str, iat: i64, exp: i64) -> Value {
        json!({
            "iss": issuer,
            "aud": audience,
            "sub": self.agent,
            "act": self.act,
            "con": self.con,
            "leg": self.leg_with_evidence(),
            "iat": iat,
            "exp": exp,
            "jti": jti,
        })
    }

    /// `METHOD /path` of the call `con.http` pins, if it pins one.
    pub fn pinned_call(&self) -> Option<String> {
        PinnedCall::from_con(Some(&self.con))
            .ok()
            .flatten()
            .map(|p| p.display())
    }

    /// What agents and approvers see.
    pub fn view(&self, now: i64) -> Value {
        json!({
            "challenge_id": self.id,
            "tenant": self.tenant,
            "agent_spiffe_id": self.agent,
            "act": self.act,
            "con": self.con,
            // The one call the mandate will allow, when con.http pins it.
            "pinned_call": self.pinned_call(),
            // Rules the mandate will relax once approved (see ESCAPE_FLAGS).
            "escapes": escapes(&self.con),
            "leg": self.leg,
            "risk_tier": self.tier.as_str(),
            "approvals_needed": self.approvals_needed,
            "approvals": self.approvals.iter().map(|a| json!({
                "approver_id": a.approver_id,
                "role": a.role,
                "approved_at": crate::audit::rfc3339(a.approved_at),
            })).collect::<Vec<_>>(),
            "status": self.status(now).as_str(),
            "created_at": crate::audit::rfc3339(self.created_at),
            "expires_at": crate::audit::rfc3339(self.expires_at),
            "rejected": self.rejected.as_ref().map(|r| json!({
                "by": r.by, "reason": r.reason, "at": crate::audit::rfc3339(r.at),
            })),
            "mandate_jti": self.minted.as_ref().map(|m| m.jti.clone()),
        })
    }
}

/// A challenge id: `chal_<tenant>.<22 random base64url characters>`. The
/// tenant is part of the id so that a shared store finds the challenge
/// from the id alone, in the tenant's own key space (one Redis Cluster
/// slot), without a second lookup.
pub fn challenge_id(tenant: &str) -> Result<String, openssl::error::ErrorStack> {
    random_id(&format!("{CHALLENGE_ID_PREFIX}{tenant}."))
}

pub const CHALLENGE_ID_PREFIX: &str = "chal_";
/// Length of the random part of an id.
const RANDOM_ID_LEN: usize = 22;
/// The longest challenge id (`chal_`, a 63-byte tenant id, `.`, random).
pub const MAX_CHALLENGE_ID_LEN: usize = CHALLENGE_ID_PREFIX.len() + 63 + 1 + RANDOM_ID_LEN;

/// The tenant a challenge id names, if it is well formed (the tenant part
/// a valid tenant id, so it is safe inside a key's hash tag).
pub fn tenant_of_challenge_id(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(CHALLENGE_ID_PREFIX)?;
    let cut = rest.len().checked_sub(RANDOM_ID_LEN + 1)?;
    let (tenant, random) = (rest.get(..cut)?, rest.get(cut..)?);
    let random = random.strip_prefix('.')?;
    let ok = random
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok && crate::config::valid_id(tenant)).then_some(tenant)
}

/// A random id: `prefix` + 22 base64url characters (16 random bytes).
pub fn random_id(prefix: &str) -> Result<String, openssl::error::ErrorStack> {
    use base64::Engine;
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b)?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "spiffe://acme.example/agent/a";

    fn request(act: &str) -> ChallengeRequest {
        parse_request(
            &json!({"act": act, "con": {"amount": 5}, "leg": {"jurisdiction": "EU",
                "accountable_party": {"type": "user", "id": "Owner@Acme.example"}}}),
            AGENT,
        )
        .unwrap()
    }

    fn approver(id: &str, roles: &[&str]) -> Approver {
        Approver {
            id: id.into(),
            email: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            tenants: vec!["acme".into()],
            cross_tenant: false,
        }
    }

    fn challenge(tier: Tier) -> Challenge {
        Challenge::new(
            "chal_x".into(),
            "acme".into(),
            AGENT.into(),
            request("sap.vendor.change"),
            tier,
            1000,
            300,
        )
    }

    fn execs() -> Vec<String> {
        vec!["ceo".into(), "cfo".into()]
    }

    #[test]
    fn requests_are_validated() {
        let ok = json!({"act": "a.b", "con": {}, "leg": {}});
        assert!(parse_request(&ok, AGENT).is_ok());
        let with_id = json!({"agent_spiffe_id": AGENT, "act": "a.b", "con": {}, "leg": {}});
        assert!(parse_request(&with_id, AGENT).is_ok());
        let deep = (0..12).fold(json!(1), |v, _| json!({ "k": v }));
        let long = "x".repeat(MAX_STRING_LEN + 1);
        let cases = [
            (json!([]), "JSON object"),
            (
                json!({"act": "a", "con": {}, "leg": {}, "extra": 1}),
                "unknown field",
            ),
            (
                json!({"agent_spiffe_id": "spiffe://acme.example/agent/other", "act": "a", "con": {}, "leg": {}}),
                "does not match",
            ),
            (json!({"con": {}, "leg": {}}), "act is required"),
            (json!({"act": "", "con": {}, "leg": {}}), "1 to"),
            (json!({"act": 7, "con": {}, "leg": {}}), "must be a string"),
            (
                json!({"act": "a".repeat(257), "con": {}, "leg": {}}),
                "1 to 256",
            ),
            (json!({"act": "a", "leg": {}}), "con is required"),
            (json!({"act": "a", "con": [], "leg": {}}), "con must be"),
            (json!({"act": "a", "con": {}, "leg": null}), "leg must be"),
            (
                json!({"act": "a", "con": {"http": {"method": "GET"}}, "leg": {}}),
                "con.http path",
            ),
            (
                json!({"act": "a", "con": {"http": {"method": "GET", "path": "/a/../b"}}, "leg": {}}),
                "con.http path",
            ),
            (json!({"act": "a", "con": deep, "leg": {}}), "deeper"),
            (json!({"act": "a", "con": {"s": long}, "leg": {}}), "longer"),
            (
                json!({"act": "a", "con": {"s": "a\u{0}b"}, "leg": {}}),
                "NUL",
            ),
            (
                json!({"act": "a", "con": {}, "leg": {"approval": {"approver_id": "me"}}}),
                "leg.approval",
            ),
            (
                json!({"act": "a", "con": {}, "leg": {"dual_control": {"required": true}}}),
                "leg.dual_control",
            ),
            (
                json!({"act": "a", "con": {}, "leg": {"executive_control": {}}}),
                "leg.executive_control",
            ),
        ];
        for (body, want) in cases {
            let e = parse_request(&body, AGENT).unwrap_err();
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn tiers_need_their_approvals() {
        assert_eq!(Tier::Low.approvals_needed(), 0);
        assert_eq!(Tier::Medium.approvals_needed(), 1);
        assert_eq!(Tier::High.approvals_needed(), 2);
        assert_eq!(Tier::Critical.approvals_needed(), 2);
        assert_eq!(Tier::from_policy("weird"), Tier::Critical);
        assert_eq!(challenge(Tier::Low).status(1001), Status::Approved);
        assert_eq!(challenge(Tier::Medium).status(1001), Status::Pending);
    }

    #[test]
    fn approvals_refuse_self_duplicates_and_non_executives() {
        let mut c = challenge(Tier::High);
        let now = 1010;
        assert_eq!(
            c.approve(&approver(AGENT, &[]), &execs(), now),
            Err(Refusal::SelfApproval)
        );
        assert_eq!(
            c.approve(&approver(" owner@acme.example ", &[]), &execs(), now),
            Err(Refusal::SelfApproval)
        );
        let mut by_email = approver("u-77", &[]);
        by_email.email = Some("OWNER@acme.example".into());
        assert_eq!(
            c.approve(&by_email, &execs(), now),
            Err(Refusal::SelfApproval)
        );
        c.approve(&approver("alice", &[]), &execs(), now).unwrap();
        assert_eq!(
            c.approve(&approver("ALICE ", &[]), &execs(), now),
            Err(Refusal::DuplicateApprover)
        );
        assert_eq!(c.status(now), Status::Pending);
        // The same person under another subject: matched by email, both
        // ways (an email-only token against a recorded email, a recorded
        // email-as-id against a new token's email).
        let mut a = challenge(Tier::High);
        let mut alice = approver("00u-alice", &[]);
        alice.email = Some("alice@acme.example".into());
        a.approve(&alice, &execs(), now).unwrap();
        let mut alice_again = approver("00u-alice-guest", &[]);
        alice_again.email = Some(" Alice@ACME.example".into());
        assert_eq!(
            a.approve(&alice_again, &execs(), now),
            Err(Refusal::DuplicateApprover)
        );
        assert_eq!(
            a.approve(&approver("alice@acme.example", &[]), &execs(), now),
            Err(Refusal::DuplicateApprover)
        );
        let mut b = challenge(Tier::High);
        b.approve(&approver("bob@acme.example", &[]), &execs(), now)
            .unwrap();
        let mut bob = approver("00u-bob", &[]);
        bob.email = Some("bob@acme.example".into());
        assert_eq!(
            b.approve(&bob, &execs(), now),
            Err(Refusal::DuplicateApprover)
        );
        c.approve(&approver("bob", &[]), &execs(), now).unwrap();
        assert_eq!(c.status(now), Status::Approved);
        assert_eq!(
            c.approve(&approver("carol", &[]), &execs(), now),
            Err(Refusal::NotPending(Status::Approved))
        );

        let mut c = challenge(Tier::Critical);
        assert_eq!(
            c.approve(&approver("vp", &["vp_sales"]), &execs(), now),
            Err(Refusal::ExecutiveRequired)
        );
        c.approve(&approver("ann", &["engineer", "CFO"]), &execs(), now)
            .unwrap();
        assert_eq!(c.approvals[0].role.as_deref(), Some("CFO"));
        // One person holding two executive roles still counts once.
        assert_eq!(
            c.approve(&approver("ann", &["ceo"]), &execs(), now),
            Err(Refusal::DuplicateApprover)
        );
        assert_eq!(c.status(now), Status::Pending);
    }

    #[test]
    fn expiry_rejection_and_single_mint() {
        let mut c = challenge(Tier::Medium);
        assert_eq!(
            c.mint(AGENT, "poa_1", 2000, 1010),
            Err(Refusal::NotApproved { have: 0, need: 1 })
        );
        assert_eq!(
            c.approve(&approver("alice", &[]), &execs(), 1300),
            Err(Refusal::Expired)
        );
        c.approve(&approver("alice", &[]), &execs(), 1010).unwrap();
        assert_eq!(
            c.mint("spiffe://acme.example/agent/other", "poa_1", 2000, 1010),
            Err(Refusal::NotRequestingAgent)
        );
        assert_eq!(c.mint(AGENT, "poa_1", 2000, 1300), Err(Refusal::Expired));
        c.mint(AGENT, "poa_1", 2000, 1010).unwrap();
        assert_eq!(c.status(1010), Status::Minted);
        assert_eq!(
            c.mint(AGENT, "poa_2", 2000, 1010),
            Err(Refusal::AlreadyMinted)
        );
        assert_eq!(
            c.reject(&approver("bob", &[]), None, 1010),
            Err(Refusal::AlreadyMinted)
        );

        let mut c = challenge(Tier::High);
        c.reject(&approver("bob", &[]), Some("no".into()), 1010)
            .unwrap();
        assert_eq!(c.status(1010), Status::Rejected);
        assert_eq!(
            c.approve(&approver("alice", &[]), &execs(), 1010),
            Err(Refusal::Rejected)
        );
        assert_eq!(c.mint(AGENT, "poa_1", 2000, 1010), Err(Refusal::Rejected));
    }

    #[test]
    fn evidence_is_written_from_records() {
        let mut c = challenge(Tier::Medium);
        c.approve(&approver("alice", &[]), &execs(), 1010).unwrap();
        let claims = c.claims("atb-agentauth", "atb-broker", "poa_1", 1020, 1320);
        assert_eq!(claims["leg"]["approval"]["approver_id"], "alice");
        assert_eq!(claims["leg"]["approval"]["timestamp"], 1010);
        assert_eq!(claims["leg"]["jurisdiction"], "EU");
        assert_eq!(claims["sub"], AGENT);
        assert_eq!(claims["aud"], "atb-broker");
        assert_eq!(claims["exp"], 1320);

        let mut c = challenge(Tier::High);
        c.approve(&approver("alice", &[]), &execs(), 1010).unwrap();
        c.approve(&approver("bob", &[]), &execs(), 1011).unwrap();
        let leg = c.leg_with_evidence();
        assert_eq!(leg["dual_control"]["required"], true);
        assert_eq!(leg["dual_control"]["approvers"][1]["id"], "bob");
        assert!(leg.get("approval").is_none());

        let mut c = challenge(Tier::Critical);
        c.approve(&approver("ann", &["ceo"]), &execs(), 1010)
            .unwrap();
        c.approve(&approver("carl", &["cfo"]), &execs(), 1011)
            .unwrap();
        let leg = c.leg_with_evidence();
        assert_eq!(leg["executive_control"]["approvers"][0]["role"], "ceo");
        assert_eq!(leg["executive_control"]["required"], true);

        let low = challenge(Tier::Low).leg_with_evidence();
        assert!(SERVER_WRITTEN.iter().all(|b| low.get(b).is_none()));
    }

    #[test]
    fn escape_switches_need_an_approval_and_land_in_its_evidence() {
        let con = |c: Value| c;
        // None: nothing to check, nothing written.
        assert!(check_escapes(&con(json!({"amount": 5})), Tier::Low).is_ok());
        // On a tier without approvals every escape switch is refused, even false.
        for flag in ESCAPE_FLAGS {
            for v in [json!(true), json!(false), json!("yes")] {
                let r = check_escapes(&json!({ flag: v }), Tier::Low).unwrap_err();
                assert_eq!(r.code(), "escape_not_allowed", "{flag}");
            }
        }
        // With approvals they must be booleans.
        let r = check_escapes(&json!({"bypass_rate_limit": "true"}), Tier::Medium).unwrap_err();
        assert_eq!(r.code(), "invalid_challenge");
        for tier in [Tier::Medium, Tier::High, Tier::Critical] {
            assert!(check_escapes(&json!({"bypass_rate_limit": true}), tier).is_ok());
        }

        let mut req = request("sap.vendor.change");
        req.con = json!({"amount": 5, "bypass_rate_limit": true, "allow_admin_policy": false});
        let mut c = Challenge::new(
            "chal_e".into(),
            "acme".into(),
            AGENT.into(),
            req.clone(),
            Tier::Medium,
            1000,
            300,
        );
        assert_eq!(
            c.view(1001)["escapes"],
            json!({"bypass_rate_limit": true, "allow_admin_policy": false})
        );
        c.approve(&approver("alice", &[]), &execs(), 1010).unwrap();
        let leg = c.leg_with_evidence();
        assert_eq!(
            leg["approval"]["escapes"],
            json!({"bypass_rate_limit": true, "allow_admin_policy": false})
        );
        let mut c = Challenge::new(
            "chal_h".into(),
            "acme".into(),
            AGENT.into(),
            req.clone(),
            Tier::High,
            1000,
            300,
        );
        c.approve(&approver("alice", &[]), &execs(), 1010).unwrap();
        c.approve(&approver("bob", &[]), &execs(), 1011).unwrap();
        assert_eq!(
            c.leg_with_evidence()["dual_control"]["escapes"]["bypass_rate_limit"],
            true
        );
        let mut c = Challenge::new(
            "chal_c".into(),
            "acme".into(),
            AGENT.into(),
            req.clone(),
            Tier::Critical,
            1000,
            300,
        );
        c.approve(&approver("ann", &["ceo"]), &execs(), 1010)
            .unwrap();
        c.approve(&approver("carl", &["cfo"]), &execs(), 1011)
            .unwrap();
        assert_eq!(
            c.leg_with_evidence()["executive_control"]["escapes"]["bypass_rate_limit"],
            true
        );
        // A low-tier challenge (stored before the check existed) gets no evidence at all.
        let low = Challenge::new(
            "chal_l".into(),
            "acme".into(),
            AGENT.into(),
            req,
            Tier::Low,
            1000,
            300,
        );
        assert!(SERVER_WRITTEN
            .iter()
            .all(|b| low.leg_with_evidence().get(b).is_none()));
        // Without escape switches the evidence has no escapes member.
        let mut c = challenge(Tier::Medium);
        c.approve(&approver("alice", &[]), &execs(), 1010).unwrap();
        assert!(c.leg_with_evidence()["approval"].get("escapes").is_none());
    }

    #[test]
    fn refusals_carry_codes_and_ids_are_random() {
        assert_eq!(Refusal::NotFound.code(), "unknown_challenge");
        assert_eq!(
            Refusal::NotApproved { have: 1, need: 2 }.to_string(),
            "the challenge has 1 of 2 required approvals"
        );
        assert!(random_id("chal_").unwrap().starts_with("chal_"));
        assert_eq!(random_id("poa_").unwrap().len(), 26);
        let id = challenge_id("acme.eu-1").unwrap();
        assert!(id.starts_with("chal_acme.eu-1."), "{id}");
        assert_eq!(tenant_of_challenge_id(&id), Some("acme.eu-1"));
        let longest = challenge_id(&"t".repeat(63)).unwrap();
        assert_eq!(longest.len(), MAX_CHALLENGE_ID_LEN);
        assert_eq!(
            tenant_of_challenge_id(&longest),
            Some("t".repeat(63).as_str())
        );
        for bad in [
            "chal_nope",
            "chal_",
            "poa_acme.AAAAAAAAAAAAAAAAAAAAAA",
            "chal_ACME.AAAAAAAAAAAAAAAAAAAAAA",
            "chal_{a}.AAAAAAAAAAAAAAAAAAAAAA",
            "chal_acme:AAAAAAAAAAAAAAAAAAAAAA",
            "chal_acme.AAAAAAAAAAAAAAAAAAAAA}",
            "chal_.AAAAAAAAAAAAAAAAAAAAAA",
            "chal_acmé.AAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(tenant_of_challenge_id(bad), None, "{bad}");
        }
    }
}
