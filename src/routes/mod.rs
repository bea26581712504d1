//! Route binding: which actions a connector's method + path carry out, so
//! a mandate reaches only the routes of its own action.
//!
//! - Declared per connector (`[[tenants.connectors.routes]]`
//!   `{action, methods, path}`), or opted out explicitly with
//!   `routes = "any"`; never unbound by default (no routes = no calls).
//! - Templates: literal segments, `{name}` captures of one whole segment
//!   and a final `{*name}` capturing the non-empty rest; no regex, no
//!   partial segments. Matching is exact: method case, trailing slash and
//!   every literal byte count. Where a literal and a capture both fit, the
//!   literal template wins and its routes alone decide.
//! - A route's methods must be allowed for its action by the catalogue
//!   ([`crate::catalog`]); anything else is a configuration error naming
//!   the key.
//! - Compiled once per connector into a radix tree (`matchit`) keyed by
//!   template, each node holding its routes' (methods, action) pairs: a
//!   match costs the path's length, not the number of routes.
//! - Captures reach the policy percent-decoded (`request.route_params`).
//! - Plain logic: methods and paths are strings; no HTTP types.

pub mod path;
pub mod pinned;

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::catalog::{MethodSet, TenantCatalogue};

/// One declared route.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The catalogue action this route carries out.
    pub action: String,
    /// Upper case; each must be allowed for the action by the catalogue.
    pub methods: Vec<String>,
    /// Template: `/api/vendors/{id}`, `/files/{*rest}`.
    pub path: String,
}

/// A connector's routes: declared (the default, empty = no calls) or
/// explicitly unbound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorRoutes {
    Declared(Vec<RouteConfig>),
    /// `routes = "any"`: any method and path inside the egress allowlist
    /// carries any action (warned about at start, `atb_connector_unbound`).
    Any,
}

impl Default for ConnectorRoutes {
    fn default() -> Self {
        ConnectorRoutes::Declared(Vec::new())
    }
}

impl Serialize for ConnectorRoutes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConnectorRoutes::Any => s.serialize_str("any"),
            ConnectorRoutes::Declared(routes) => routes.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ConnectorRoutes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RoutesVisitor;
        impl<'de> Visitor<'de> for RoutesVisitor {
            type Value = ConnectorRoutes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""any" or a list of {action, methods, path}"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "any" {
                    Ok(ConnectorRoutes::Any)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut routes = Vec::new();
                while let Some(r) = seq.next_element::<RouteConfig>()? {
                    routes.push(r);
                }
                Ok(ConnectorRoutes::Declared(routes))
            }
        }
        d.deserialize_any(RoutesVisitor)
    }
}

/// A route declaration that cannot be compiled; `key` names it in the
/// configuration (e.g. `tenants[0].connectors[1].routes[2].methods`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct RouteConfigError {
    pub key: String,
    pub reason: String,
}

/// Routes sharing one template.
#[derive(Debug)]
struct Node {
    template: Arc<str>,
    routes: Vec<(MethodSet, Arc<str>)>,
}

/// A connector's compiled routes.
#[derive(Debug, Default)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    nodes: Vec<Node>,
    routes: usize,
}

/// What a connector lets through.
#[derive(Debug)]
pub enum Binding {
    Bound(RouteTable),
    /// `routes = "any"`.
    Unbound,
}

impl Binding {
    /// Compiles a connector's routes; `key` is the connector's key in the
    /// configuration (`tenants[0].connectors[1]`).
    pub fn compile(
        routes: &ConnectorRoutes,
        catalogue: &TenantCatalogue,
        key: &str,
    ) -> Result<Self, RouteConfigError> {
        match routes {
            ConnectorRoutes::Any => Ok(Binding::Unbound),
            ConnectorRoutes::Declared(list) => {
                RouteTable::compile(list, catalogue, key).map(Binding::Bound)
            }
        }
    }
}

/// A matched route: its template and captures, and the actions its routes
/// carry out with the request's method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'t> {
    pub template: &'t str,
    /// The same template, shared (outlives the table's borrow).
    pub shared: Arc<str>,
    /// `(name, percent-decoded value)`, in template order.
    pub params: Vec<(&'t str, String)>,
    /// Actions of the template's routes that allow the method.
    pub actions: Vec<&'t str>,
}

impl RouteMatch<'_> {
    pub fn allows(&self, action: &str) -> bool {
        self.actions.contains(&action)
    }
}

/// Why no route carries a call (403 `action_route_mismatch`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteMiss {
    #[error("no route of this connector matches the path")]
    NoRoute,
    #[error("no route of this connector matches {method} {template}")]
    Method { method: String, template: String },
    #[error("a path capture is not valid UTF-8 once decoded")]
    Capture,
}

/// Most characters of a client-supplied method echoed in a reason.
const ECHO: usize = 16;

impl RouteTable {
    /// Compiles `routes` (each checked against the catalogue).
    pub fn compile(
        routes: &[RouteConfig],
        catalogue: &TenantCatalogue,
        key: &str,
    ) -> Result<Self, RouteConfigError> {
        let mut table = RouteTable::default();
        let mut by_template: HashMap<&str, usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let err = |field: &str, reason: String| RouteConfigError {
                key: format!("{key}.routes[{i}].{field}"),
                reason,
            };
            let allowed = catalogue.methods(&r.action).ok_or_else(|| {
                err(
                    "action",
                    format!(
                        "{:?} is not in the action catalogue (built-in or the tenant's catalog.methods)",
                        r.action
                    ),
                )
            })?;
            if r.methods.is_empty() {
                return Err(err("methods", "name at least one method".into()));
            }
            let methods = MethodSet::parse(r.methods.iter().map(String::as_str))
                .map_err(|e| err("methods", e.to_string()))?;
            if !methods.is_subset(allowed) {
                return Err(err(
                    "methods",
                    format!(
                        "{} {:?} is not allowed: the catalogue allows {} for {}",
                        r.methods.join(","),
                        r.path,
                        allowed.names().join(", "),
                        r.action
                    ),
                ));
            }
            check_template(&r.path).map_err(|e| err("path", e))?;
            let node = match by_template.get(r.path.as_str()) {
                Some(&n) => n,
                None => {
                    let n = table.nodes.len();
                    table.router.insert(r.path.as_str(), n).map_err(|e| {
                        err(
                            "path",
                            format!("{:?} conflicts with another route: {e}", r.path),
                        )
                    })?;
                    table.nodes.push(Node {
                        template: Arc::from(r.path.as_str()),
                        routes: Vec::new(),
                    });
                    by_template.insert(&r.path, n);
                    n
                }
            };
            table.nodes[node]
                .routes
                .push((methods, Arc::from(r.action.as_str())));
            table.routes += 1;
        }
        Ok(table)
    }

    /// The route for `method` + `path` (the canonical path, see
    /// [`path::canonical`]).
    pub fn lookup<'t>(&'t self, method: &str, path: &str) -> Result<RouteMatch<'t>, RouteMiss> {
        let found = self.router.at(path).map_err(|_| RouteMiss::NoRoute)?;
        let node = self.nodes.get(*found.value).ok_or(RouteMiss::NoRoute)?;
        let actions: Vec<&str> = node
            .routes
            .iter()
            .filter(|(m, _)| m.contains(method))
            .map(|(_, a)| &**a)
            .collect();
        if actions.is_empty() {
            return Err(RouteMiss::Method {
                method: crate::clip(method, ECHO).to_owned(),
                template: node.template.to_string(),
            });
        }
        let mut params = Vec::with_capacity(found.params.len());
        for (name, value) in found.params.iter() {
            let name = template_name(&node.template, name);
            params.push((name, path::decode(value).ok_or(RouteMiss::Capture)?));
        }
        Ok(RouteMatch {
            template: &node.template,
            shared: node.template.clone(),
            params,
            actions,
        })
    }

    /// Declared routes.
    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }
}

/// `name` as a slice of `template` (so a match borrows only the table).
fn template_name<'t>(template: &'t str, name: &str) -> &'t str {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|s| s.trim_start_matches('*'))
        .find(|s| *s == name)
        .unwrap_or_default()
}

/// Longest template accepted.
const MAX_TEMPLATE: usize = 2048;

/// A template: absolute, canonical literal segments, whole-segment
/// `{name}` captures with distinct names, `{*name}` only last.
fn check_template(t: &str) -> Result<(), String> {
    if t.len() > MAX_TEMPLATE {
        return Err(format!("a template is at most {MAX_TEMPLATE} bytes"));
    }
    if !t.starts_with('/') {
        return Err(format!("{t:?} must start with '/'"));
    }
    let segments: Vec<&str> = t[1..].split('/').collect();
    let mut names: Vec<&str> = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (rest, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if rest && !last {
                return Err(format!("{t:?}: {{*{name}}} may only be the last segment"));
            }
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "{t:?}: capture names are letters, digits and '_' (not starting with a digit)"
                ));
            }
            if names.contains(&name) {
                return Err(format!("{t:?}: the capture {name:?} appears twice"));
            }
            names.push(name);
            continue;
        }
        if s.contains(['{', '}', '*']) {
            return Err(format!(
                "{t:?}: a segment is either literal or one whole {{name}} / final {{*name}} capture"
            ));
        }
        if s.is_empty() && !last {
            return Err(format!("{t:?} has an empty segment"));
        }
    }
    match path::canonical(t) {
        Ok(c) if c == t => Ok(()),
        Ok(c) => Err(format!("{t:?} is not canonical; write {c:?}")),
        Err(e) => Err(format!("{t:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(action: &str, methods: &[&str], path: &str) -> RouteConfig {
        RouteConfig {
            action: action.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.into(),
        }
    }

    fn builtin() -> TenantCatalogue {
        TenantCatalogue::new(None).unwrap()
    }

    fn demo() -> RouteTable {
        RouteTable::compile(
            &[
                route("crm.contact.read", &["GET"], "/api/contacts/{id}"),
                route("crm.contact.list", &["GET"], "/api/contacts"),
                route(
                    "crm.contact.update",
                    &["PUT", "PATCH"],
                    "/api/contacts/{id}",
                ),
                route("crm.contact.delete", &["DELETE"], "/api/contacts/{id}"),
                route("sap.vendor.create", &["POST"], "/api/vendors"),
                route("erp.vendor.read", &["GET"], "/api/vendors/{vendor_id}"),
                route("sap.payment.execute", &["POST"], "/api/pay"),
                route("kb.docs.search", &["GET", "POST"], "/api/docs/{*rest}"),
                route("erp.order.list", &["GET"], "/api/orders/recent"),
                route("erp.order.read", &["GET"], "/api/orders/{id}"),
            ],
            &builtin(),
            "c",
        )
        .unwrap()
    }

    #[test]
    fn a_call_matches_its_actions_routes_only() {
        let t = demo();
        let m = t.lookup("GET", "/api/contacts/7").unwrap();
        assert_eq!(m.template, "/api/contacts/{id}");
        assert_eq!(m.params, vec![("id", "7".to_string())]);
        assert_eq!(m.actions, vec!["crm.contact.read"]);
        assert!(m.allows("crm.contact.read"));
        assert!(!m.allows("crm.contact.update"));
        let m = t.lookup("PATCH", "/api/contacts/7").unwrap();
        assert_eq!(m.actions, vec!["crm.contact.update"]);
        assert!(t
            .lookup("DELETE", "/api/contacts/7")
            .unwrap()
            .allows("crm.contact.delete"));
        // The reported hole: a read mandate on pay and vendor deletion.
        assert!(matches!(t.lookup("POST", "/api/pay"), Ok(m) if !m.allows("crm.contact.read")));
        assert_eq!(
            t.lookup("DELETE", "/api/vendors/1"),
            Err(RouteMiss::Method {
                method: "DELETE".into(),
                template: "/api/vendors/{vendor_id}".into()
            })
        );
        assert_eq!(t.lookup("GET", "/api/other"), Err(RouteMiss::NoRoute));
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn edges_of_method_slash_encoding_and_rest() {
        let t = demo();
        // Methods are exact: lower case is another method.
        assert!(t.lookup("get", "/api/contacts/7").is_err());
        assert!(t.lookup("HEAD", "/api/contacts/7").is_err());
        // Trailing slashes and empty captures do not match.
        assert_eq!(t.lookup("GET", "/api/contacts/"), Err(RouteMiss::NoRoute));
        assert!(t
            .lookup("GET", "/api/contacts")
            .unwrap()
            .allows("crm.contact.list"));
        assert_eq!(t.lookup("GET", "/api/contacts/7/"), Err(RouteMiss::NoRoute));
        assert_eq!(
            t.lookup("GET", "/api/contacts/7/x"),
            Err(RouteMiss::NoRoute)
        );
        // Captures are one segment and arrive decoded.
        let m = t.lookup("GET", "/api/contacts/a%20b").unwrap();
        assert_eq!(m.params, vec![("id", "a b".to_string())]);
        assert_eq!(
            t.lookup("GET", "/api/contacts/%FF"),
            Err(RouteMiss::Capture)
        );
        // {*rest}: one or more characters after the slash, slashes included.
        let m = t.lookup("POST", "/api/docs/a/b/c.md").unwrap();
        assert_eq!(m.params, vec![("rest", "a/b/c.md".to_string())]);
        assert_eq!(t.lookup("GET", "/api/docs/"), Err(RouteMiss::NoRoute));
        assert_eq!(t.lookup("GET", "/api/docs"), Err(RouteMiss::NoRoute));
        // A literal beats a capture, and only its own routes decide.
        let m = t.lookup("GET", "/api/orders/recent").unwrap();
        assert_eq!(m.actions, vec!["erp.order.list"]);
        assert!(t
            .lookup("GET", "/api/orders/7")
            .unwrap()
            .allows("erp.order.read"));
        // Literal bytes are exact (case, lookalikes).
        assert_eq!(t.lookup("GET", "/API/contacts/7"), Err(RouteMiss::NoRoute));
        assert_eq!(
            t.lookup("GET", "/api/contacts;x/7"),
            Err(RouteMiss::NoRoute)
        );
    }

    #[test]
    fn captures_at_one_position_keep_their_own_names() {
        let t = RouteTable::compile(
            &[
                route("crm.contact.read", &["GET"], "/api/{a}/x"),
                route("crm.contact.list", &["GET"], "/api/{b}/y"),
                route("crm.account.read", &["GET"], "/api/static/{*rest}"),
            ],
            &builtin(),
            "c",
        )
        .unwrap();
        let m = t.lookup("GET", "/api/1/x").unwrap();
        assert_eq!(
            (m.template, m.params),
            ("/api/{a}/x", vec![("a", "1".into())])
        );
        let m = t.lookup("GET", "/api/2/y").unwrap();
        assert_eq!(
            (m.template, m.params),
            ("/api/{b}/y", vec![("b", "2".into())])
        );
        assert_eq!(t.lookup("GET", "/api/3/z"), Err(RouteMiss::NoRoute));
        let m = t.lookup("GET", "/api/static/a/b").unwrap();
        assert_eq!(m.actions, vec!["crm.account.read"]);
        // Literal routes beside a catch-all: the literal wins.
        let t = RouteTable::compile(
            &[
                route("crm.contact.read", &["GET"], "/api/{*rest}"),
                route("sap.payment.execute", &["POST"], "/api/pay"),
            ],
            &builtin(),
            "c",
        )
        .unwrap();
        assert!(t
            .lookup("GET", "/api/x/y")
            .unwrap()
            .allows("crm.contact.read"));
        assert!(t
            .lookup("POST", "/api/pay")
            .unwrap()
            .allows("sap.payment.execute"));
        assert!(t.lookup("GET", "/api/pay").is_err());
    }

    #[test]
    fn several_actions_may_share_a_route() {
        let t = RouteTable::compile(
            &[
                route("crm.contact.read", &["GET"], "/api/hello"),
                route("system.status.get", &["GET"], "/api/hello"),
            ],
            &builtin(),
            "c",
        )
        .unwrap();
        let m = t.lookup("GET", "/api/hello").unwrap();
        assert_eq!(m.actions, vec!["crm.contact.read", "system.status.get"]);
    }

    #[test]
    fn methods_the_catalogue_forbids_are_config_errors_naming_the_key() {
        let err = |routes: &[RouteConfig]| {
            RouteTable::compile(routes, &builtin(), "tenants[0].connectors[1]").unwrap_err()
        };
        let e = err(&[
            route("crm.contact.read", &["GET"], "/a"),
            route("crm.contact.read", &["GET", "DELETE"], "/a/{id}"),
        ]);
        assert_eq!(e.key, "tenants[0].connectors[1].routes[1].methods");
        assert!(e.reason.contains("allows GET"), "{e}");
        let e = err(&[route("sap.payment.execute", &["GET"], "/pay")]);
        assert_eq!(e.key, "tenants[0].connectors[1].routes[0].methods");
        let e = err(&[route("crm.contact.delete", &["POST"], "/c/{id}")]);
        assert!(e.to_string().contains("allows DELETE"), "{e}");
        let e = err(&[route("made.up.action", &["GET"], "/x")]);
        assert_eq!(e.key, "tenants[0].connectors[1].routes[0].action");
        for methods in [&[][..], &["get"], &["HEAD"], &["FETCH"]] {
            let e = err(&[route("crm.contact.read", methods, "/x")]);
            assert!(e.key.ends_with(".methods"), "{methods:?}: {e}");
        }
    }

    #[test]
    fn bad_templates_are_config_errors() {
        for bad in [
            "api/x",
            "/api//x",
            "/api/{id",
            "/api/id}",
            "/api/{}",
            "/api/{1d}",
            "/api/{a-b}",
            "/api/{*rest}/x",
            "/api/{id}/{id}",
            "/api/x{id}",
            "/api/{id}.json",
            "/api/*",
            "/api/../x",
            "/api/%2e",
            "/api/v%65ndors",
            "/api/{{id}}",
        ] {
            let e =
                RouteTable::compile(&[route("crm.contact.read", &["GET"], bad)], &builtin(), "c")
                    .unwrap_err();
            assert_eq!(e.key, "c.routes[0].path", "{bad}");
        }
        // A capture and a catch-all at one position.
        let e = RouteTable::compile(
            &[
                route("crm.contact.read", &["GET"], "/api/{a}/x"),
                route("crm.contact.list", &["GET"], "/api/{*rest}"),
            ],
            &builtin(),
            "c",
        )
        .unwrap_err();
        assert_eq!(e.key, "c.routes[1].path");
        // Two spellings of one template (only the capture names differ).
        let e = RouteTable::compile(
            &[
                route("crm.contact.read", &["GET"], "/api/{a}"),
                route("crm.contact.list", &["GET"], "/api/{b}"),
            ],
            &builtin(),
            "c",
        )
        .unwrap_err();
        assert_eq!(e.key, "c.routes[1].path");
    }

    #[test]
    fn tenant_extension_actions_route_with_their_methods() {
        let cat = TenantCatalogue::new(Some(
            &serde_json::json!({"catalog": {"methods": {"acme.ledger.close": ["POST"]}}}),
        ))
        .unwrap();
        let t = RouteTable::compile(
            &[route("acme.ledger.close", &["POST"], "/ledger/close")],
            &cat,
            "c",
        )
        .unwrap();
        assert!(t
            .lookup("POST", "/ledger/close")
            .unwrap()
            .allows("acme.ledger.close"));
        assert!(
            RouteTable::compile(&[route("acme.ledger.close", &["GET"], "/l")], &cat, "c").is_err()
        );
    }

    #[test]
    fn routes_deserialize_from_a_list_or_any() {
        #[derive(Deserialize)]
        struct C {
            #[serde(default)]
            routes: ConnectorRoutes,
        }
        let c: C = toml::from_str(
            "[[routes]]\naction = \"crm.contact.read\"\nmethods = [\"GET\"]\npath = \"/a\"\n",
        )
        .unwrap();
        assert_eq!(
            c.routes,
            ConnectorRoutes::Declared(vec![route("crm.contact.read", &["GET"], "/a")])
        );
        let c: C = toml::from_str("routes = \"any\"").unwrap();
        assert_eq!(c.routes, ConnectorRoutes::Any);
        let c: C = toml::from_str("").unwrap();
        assert_eq!(c.routes, ConnectorRoutes::Declared(vec![]));
        for bad in [
            "routes = \"all\"",
            "routes = 1",
            "[[routes]]\naction = \"a\"\n",
        ] {
            assert!(toml::from_str::<C>(bad).is_err(), "{bad}");
        }
        // And back.
        let v = serde_json::to_value(ConnectorRoutes::Any).unwrap();
        assert_eq!(v, "any");
    }

    #[test]
    fn the_cost_of_a_match_does_not_depend_on_the_route_count() {
        // 10,000 routes compile; the one asked for is found (timing is in
        // benches/routes.rs, never here).
        let routes: Vec<RouteConfig> = (0..10_000)
            .map(|i| {
                route(
                    "crm.contact.read",
                    &["GET"],
                    &format!("/api/r{i}/items/{{id}}"),
                )
            })
            .collect();
        let t = RouteTable::compile(&routes, &builtin(), "c").unwrap();
        let m = t.lookup("GET", "/api/r9999/items/42").unwrap();
        assert_eq!(m.template, "/api/r9999/items/{id}");
        assert_eq!(t.len(), 10_000);
    }
}
