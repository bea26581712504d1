//! Path canonicalisation (`atb::routes::path::canonical`, `decode`) and
//! route matching (`atb::routes::RouteTable::compile` + `lookup`).
//!
//! Input lines: the first is `METHOD PATH` (a request); every further line
//! is a route template compiled into a table of its own (with a fixed
//! action), besides the fixed table of the demo connector.
//!
//! Invariants: no panic; a canonical path is a fixed point of
//! canonicalisation (and comes back borrowed), is absolute, has no `//`,
//! `\`, `;`, dot segments or controls, and decodes to UTF-8; a match's
//! actions all allow the method and its template is one of the table's.
#![no_main]

use atb::catalog::TenantCatalogue;
use atb::routes::path::{canonical, decode};
use atb::routes::{RouteConfig, RouteTable};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use std::sync::OnceLock;

fn route(action: &str, methods: &[&str], path: &str) -> RouteConfig {
    RouteConfig {
        action: action.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
    }
}

fn demo() -> &'static (Vec<RouteConfig>, RouteTable) {
    static T: OnceLock<(Vec<RouteConfig>, RouteTable)> = OnceLock::new();
    T.get_or_init(|| {
        let routes = vec![
            route("crm.contact.read", &["GET"], "/api/contacts/{id}"),
            route("crm.contact.list", &["GET"], "/api/contacts"),
            route("crm.contact.update", &["PUT", "PATCH"], "/api/contacts/{id}"),
            route("crm.contact.delete", &["DELETE"], "/api/contacts/{id}"),
            route("sap.vendor.create", &["POST"], "/api/vendors"),
            route("erp.vendor.read", &["GET"], "/api/vendors/{vendor_id}"),
            route("sap.payment.execute", &["POST"], "/api/pay"),
            route("kb.docs.search", &["GET", "POST"], "/api/docs/{*rest}"),
            route("erp.order.list", &["GET"], "/api/orders/recent"),
            route("erp.order.read", &["GET"], "/api/orders/{id}"),
        ];
        let catalogue = TenantCatalogue::new(None).expect("built-in catalogue");
        let table = RouteTable::compile(&routes, &catalogue, "c").expect("demo routes compile");
        (routes, table)
    })
}

fn check_canonical(path: &str) -> Option<Cow<'_, str>> {
    let c = canonical(path).ok()?;
    assert!(c.starts_with('/'));
    assert!(!c.contains("//") && !c.contains('\\') && !c.contains(';'));
    assert!(!c.bytes().any(|b| b.is_ascii_control() || b == b' '));
    assert!(c.split('/').all(|s| s != "." && s != ".."));
    assert!(decode(&c).is_some(), "a canonical path decodes to UTF-8");
    // A fixed point: the canonical form canonicalises to itself (it may
    // be rebuilt rather than borrowed, e.g. around a kept `%1F`).
    match canonical(&c) {
        Ok(again) => assert_eq!(&*again, &*c, "not a fixed point"),
        Err(e) => panic!("canonical form {c:?} refused: {e}"),
    }
    Some(c)
}

fn check_lookup(table: &RouteTable, templates: &[&str], method: &str, path: &str) {
    if let Ok(m) = table.lookup(method, path) {
        assert!(!m.actions.is_empty());
        assert!(templates.contains(&m.template), "{:?}", m.template);
        assert_eq!(&*m.shared, m.template);
        for (name, _) in &m.params {
            assert!(m.template.contains(&format!("{{{name}}}")) || m.template.contains(&format!("{{*{name}}}")));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    let (method, path) = first.split_once(' ').unwrap_or(("GET", first));
    let _ = decode(path);
    let canon = check_canonical(path);
    let (routes, table) = demo();
    let templates: Vec<&str> = routes.iter().map(|r| r.path.as_str()).collect();
    // The broker looks up only canonical paths; the table must not panic
    // on anything else either.
    check_lookup(table, &templates, method, path);
    if let Some(c) = &canon {
        check_lookup(table, &templates, method, c);
    }
    let extra: Vec<RouteConfig> = lines
        .take(8)
        .map(|t| route("crm.contact.read", &["GET"], t))
        .collect();
    if extra.is_empty() {
        return;
    }
    let catalogue = TenantCatalogue::new(None).expect("built-in catalogue");
    if let Ok(t) = RouteTable::compile(&extra, &catalogue, "f") {
        let templates: Vec<&str> = extra.iter().map(|r| r.path.as_str()).collect();
        for tpl in &templates {
            // Templates compile only in canonical form.
            assert!(check_canonical(tpl).is_some_and(|c| c == *tpl), "{tpl:?}");
        }
        check_lookup(&t, &templates, method, path);
        if let Some(c) = &canon {
            check_lookup(&t, &templates, method, c);
        }
    }
});
