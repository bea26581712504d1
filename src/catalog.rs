//! The action catalogue outside the policy: which HTTP methods each action
//! may be carried out with.
//!
//! - One source. The methods come from the same `catalog.json` the policy
//!   loads (`data.atb.catalog.methods`): reads and lists GET, searches and
//!   exports GET/POST, writes POST/PUT/PATCH, deletes DELETE.
//! - Built-in actions keep their methods. A tenant adds methods only for
//!   its own extension actions (`policy_data.catalog.methods`); it cannot
//!   widen a built-in action (that is a configuration error).
//! - Plain logic: methods are strings; no HTTP types.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

/// Whether `a` is an action name in its one canonical form: two or more
/// dot-separated segments of lowercase ASCII letters, digits and `_`, at
/// most 256 bytes. Case variants, lookalikes and whitespace are not names;
/// they are never mapped to a tier.
pub fn is_canonical_action(a: &str) -> bool {
    a.len() <= crate::poa::MAX_ACTION_LEN
        && a.split('.').count() >= 2
        && a.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Why an action is refused everywhere (403 `policy_denied` at the broker,
/// 400 at AgentAuth), with reason `unknown_action`.
pub fn unknown_action_reason(catalogue: &TenantCatalogue, a: &str) -> Option<&'static str> {
    if !is_canonical_action(a) {
        Some("the action is not a canonical name (lowercase segments separated by dots)")
    } else if catalogue.methods(a).is_none() {
        Some("the action is not in the catalogue (built-in or the tenant's own)")
    } else {
        None
    }
}

/// A set of the methods routes may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u8);

/// The methods a catalogue entry or route may name, in display order.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

impl MethodSet {
    pub const EMPTY: MethodSet = MethodSet(0);

    fn bit(method: &str) -> Option<u8> {
        METHODS.iter().position(|m| *m == method).map(|i| 1 << i)
    }

    /// The set of `methods` (exact, upper case); `Err` names the first
    /// method that is not one of [`METHODS`].
    pub fn parse<'a>(methods: impl IntoIterator<Item = &'a str>) -> Result<Self, CatalogError> {
        let mut set = 0;
        for m in methods {
            set |= Self::bit(m).ok_or_else(|| CatalogError::Method(m.to_owned()))?;
        }
        Ok(Self(set))
    }

    /// Whether `method` (as the request spelt it: methods are case
    /// sensitive) is in the set.
    pub fn contains(self, method: &str) -> bool {
        Self::bit(method).is_some_and(|b| self.0 & b != 0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every method of `self` is in `other`.
    pub fn is_subset(self, other: MethodSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The methods, in [`METHODS`] order.
    pub fn names(self) -> Vec<&'static str> {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, m)| *m)
            .collect()
    }
}

/// A catalogue document that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog.methods must map actions to lists of methods")]
    NotAMap,
    #[error("catalog.methods.{action:?}: {reason}")]
    Action {
        action: String,
        reason: Box<CatalogError>,
    },
    #[error("must be a non-empty list of methods")]
    NotAList,
    #[error("{0:?} is not a method routes may name (GET, POST, PUT, PATCH, DELETE)")]
    Method(String),
    #[error("action names are lowercase segments separated by dots")]
    NotCanonical,
    #[error("built-in actions keep the methods of the built-in catalogue")]
    BuiltIn,
}

/// Action → allowed methods.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    methods: HashMap<String, MethodSet>,
}

impl Catalogue {
    /// The built-in catalogue (embedded in the binary).
    pub fn builtin() -> &'static Catalogue {
        static BUILTIN: OnceLock<Catalogue> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            // The embedded catalogue is checked by this module's tests; a
            // broken one would leave every action unknown (fail closed).
            let doc: Value =
                serde_json::from_str(crate::policy::EMBEDDED_CATALOG).unwrap_or(Value::Null);
            Catalogue::from_methods(&doc["atb"]["catalog"]["methods"]).unwrap_or_default()
        })
    }

    /// Reads a `{"action": ["GET", …], …}` document.
    pub fn from_methods(doc: &Value) -> Result<Self, CatalogError> {
        let obj = doc.as_object().ok_or(CatalogError::NotAMap)?;
        let mut methods = HashMap::with_capacity(obj.len());
        for (action, list) in obj {
            let names = list
                .as_array()
                .filter(|l| !l.is_empty())
                .and_then(|l| l.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
                .ok_or_else(|| CatalogError::Action {
                    action: action.clone(),
                    reason: Box::new(CatalogError::NotAList),
                })?;
            let set = MethodSet::parse(names).map_err(|e| CatalogError::Action {
                action: action.clone(),
                reason: Box::new(e),
            })?;
            methods.insert(action.clone(), set);
        }
        Ok(Self { methods })
    }

    /// The methods of `action`, `None` for an action outside the catalogue.
    pub fn methods(&self, action: &str) -> Option<MethodSet> {
        self.methods.get(action).copied()
    }

    pub fn len(&self) -> usize {
        self.methods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

/// The built-in catalogue plus one tenant's extension actions.
#[derive(Debug, Clone)]
pub struct TenantCatalogue {
    builtin: &'static Catalogue,
    extensions: Catalogue,
}

impl TenantCatalogue {
    /// From a tenant's `policy_data` (its `catalog.methods`, if any).
    /// Refused: a malformed document, or one that names a built-in action.
    pub fn new(policy_data: Option<&Value>) -> Result<Self, CatalogError> {
        let builtin = Catalogue::builtin();
        let extensions = match policy_data.and_then(|d| d.get("catalog")?.get("methods")) {
            None => Catalogue::default(),
            Some(doc) => Catalogue::from_methods(doc)?,
        };
        if let Some(a) = extensions.methods.keys().find(|a| !is_canonical_action(a)) {
            return Err(CatalogError::Action {
                action: a.clone(),
                reason: Box::new(CatalogError::NotCanonical),
            });
        }
        if let Some(a) = extensions
            .methods
            .keys()
            .find(|a| builtin.methods(a).is_some())
        {
            return Err(CatalogError::Action {
                action: a.clone(),
                reason: Box::new(CatalogError::BuiltIn),
            });
        }
        Ok(Self {
            builtin,
            extensions,
        })
    }

    pub fn methods(&self, action: &str) -> Option<MethodSet> {
        self.builtin
            .methods(action)
            .or_else(|| self.extensions.methods(action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(m: &[&str]) -> MethodSet {
        MethodSet::parse(m.iter().copied()).unwrap()
    }

    #[test]
    fn method_sets() {
        let s = set(&["GET", "POST"]);
        assert!(s.contains("GET") && s.contains("POST") && !s.contains("DELETE"));
        // Methods are case sensitive: "get" is another (extension) method.
        assert!(!s.contains("get"));
        assert!(!s.contains("HEAD"));
        assert!(set(&["GET"]).is_subset(s));
        assert!(!set(&["GET", "PUT"]).is_subset(s));
        assert_eq!(s.names(), vec!["GET", "POST"]);
        assert!(MethodSet::parse(["HEAD"]).is_err());
        assert!(MethodSet::parse(["get"]).is_err());
        assert!(MethodSet::EMPTY.is_empty());
    }

    #[test]
    fn the_builtin_catalogue_gives_every_action_one_method_class() {
        let doc: Value = serde_json::from_str(crate::policy::EMBEDDED_CATALOG).unwrap();
        let c = &doc["atb"]["catalog"];
        let b = Catalogue::builtin();
        let reads = set(&["GET"]);
        let searches = set(&["GET", "POST"]);
        let writes = set(&["POST", "PUT", "PATCH"]);
        let deletes = set(&["DELETE"]);
        let mut every = 0;
        for section in ["tiers", "low_risk"] {
            for (action, _) in c[section].as_object().unwrap() {
                let m = b.methods(action).unwrap_or_else(|| panic!("{action}"));
                assert!(
                    [reads, searches, writes, deletes].contains(&m),
                    "{action}: {m:?}"
                );
                every += 1;
            }
        }
        assert!(every >= 190, "{every}");
        assert_eq!(b.len(), c["methods"].as_object().unwrap().len());
        // The low-risk list the policy uses for unmandated calls agrees.
        for (action, methods) in c["low_risk"].as_object().unwrap() {
            let listed: Vec<&str> = methods
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap())
                .collect();
            assert_eq!(b.methods(action), Some(set(&listed)), "{action}");
        }
        // The classes by verb.
        assert_eq!(b.methods("crm.contact.read"), Some(reads));
        assert_eq!(b.methods("kb.docs.search"), Some(searches));
        assert_eq!(b.methods("sap.payment.execute"), Some(writes));
        assert_eq!(b.methods("sap.vendor.create"), Some(writes));
        assert_eq!(b.methods("crm.contact.delete"), Some(deletes));
        assert_eq!(b.methods("made.up.action"), None);
    }

    #[test]
    fn action_names_have_one_canonical_form() {
        for ok in [
            "crm.contact.read",
            "hr.employee.view_limited",
            "a.b",
            "acme.v2.close",
        ] {
            assert!(is_canonical_action(ok), "{ok}");
        }
        for bad in [
            "CRM.contact.read",
            "crm.Contact.read",
            "crm.contact.read ",
            " crm.contact.read",
            "crm..read",
            ".crm.read",
            "crm.read.",
            "crm",
            "crm.contact-read",
            "crm:contact.read",
            "crm.contact.reаd", // Cyrillic а
            "",
        ] {
            assert!(!is_canonical_action(bad), "{bad:?}");
        }
        assert!(!is_canonical_action(&format!("a.{}", "b".repeat(256))));
        // Every built-in action is canonical.
        let doc: Value = serde_json::from_str(crate::policy::EMBEDDED_CATALOG).unwrap();
        for a in doc["atb"]["catalog"]["methods"].as_object().unwrap().keys() {
            assert!(is_canonical_action(a), "{a}");
        }
        let t = TenantCatalogue::new(None).unwrap();
        assert_eq!(unknown_action_reason(&t, "crm.contact.read"), None);
        assert!(unknown_action_reason(&t, "made.up.action").is_some());
        assert!(unknown_action_reason(&t, "CRM.CONTACT.READ").is_some());
    }

    #[test]
    fn tenants_extend_but_never_widen() {
        let t = TenantCatalogue::new(Some(&json!({
            "catalog": {"methods": {"acme.ledger.close": ["POST"]}}
        })))
        .unwrap();
        assert_eq!(t.methods("acme.ledger.close"), Some(set(&["POST"])));
        assert_eq!(t.methods("crm.contact.read"), Some(set(&["GET"])));
        assert_eq!(TenantCatalogue::new(None).unwrap().methods("x.y"), None);
        for bad in [
            json!({"catalog": {"methods": {"crm.contact.read": ["GET", "DELETE"]}}}),
            json!({"catalog": {"methods": {"acme.x": []}}}),
            json!({"catalog": {"methods": {"acme.x": ["FETCH"]}}}),
            json!({"catalog": {"methods": {"acme.x": "GET"}}}),
            json!({"catalog": {"methods": ["GET"]}}),
            json!({"catalog": {"methods": {"Acme.X": ["GET"]}}}),
        ] {
            assert!(TenantCatalogue::new(Some(&bad)).is_err(), "{bad}");
        }
    }
}
