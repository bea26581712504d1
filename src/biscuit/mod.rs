//! Biscuit capabilities (SPEC §6): tenants mint them under their own root
//! keys, agents attenuate them offline, the broker verifies and authorizes
//! them and then applies the same route binding and Rego policy as for
//! PoA JWTs.
//!
//! Fact vocabulary (README "Biscuit capabilities" has worked examples):
//! - authority block (the grant, written by the tenant or AgentAuth):
//!   `agent(spiffe_id)`, `tenant(id)`, `right(action)` (one per action),
//!   `issued(date)`, `expires(date)`, `con(json)`, `leg(json)`, `id(unique)`,
//!   and `check if time($t), $t <= expires`;
//! - authorizer (the request, ambient): `agent`, `tenant`, `action`,
//!   `method`, `path`, `route` (the matched template), `connector`,
//!   `param(name, value)` (top-level string, integer and boolean
//!   parameters), `time`; the broker's policy is
//!   `allow if right($a), action($a)`.
//!
//! The grant names actions `right(...)` and the request `action(...)`: both
//! live in the trusted scope, so with one name for both an attenuation
//! check `check if action("crm.contact.read")` would be satisfied by the
//! grant of a multi-action token instead of by the request.

pub mod config;
pub mod tools;
pub mod verify;
pub mod work;
