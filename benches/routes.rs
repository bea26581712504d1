//! Route binding on the hot path: canonicalising a request path and
//! matching method + path among a connector's routes. The radix tree makes
//! a match cost the path's length, so 10 routes and 10,000 routes should
//! cost about the same (target: ≤ 2 µs per match among 10,000).

use std::hint::black_box;

use atb::catalog::TenantCatalogue;
use atb::routes::{path, RouteConfig, RouteTable};
use criterion::{criterion_group, criterion_main, Criterion};

/// `n` routes of realistic shapes: literal prefixes, a capture, a nested
/// capture, and a catch-all, spread over several actions.
fn table(n: usize) -> RouteTable {
    let catalogue = TenantCatalogue::new(None).expect("built-in catalogue");
    let routes: Vec<RouteConfig> = (0..n)
        .map(|i| {
            let (action, methods, path) = match i % 4 {
                0 => (
                    "crm.contact.read",
                    vec!["GET"],
                    format!("/api/v1/svc{i}/contacts/{{id}}"),
                ),
                1 => (
                    "crm.contact.update",
                    vec!["PUT", "PATCH"],
                    format!("/api/v1/svc{}/contacts/{{id}}", i - 1),
                ),
                2 => (
                    "kb.docs.search",
                    vec!["GET", "POST"],
                    format!("/api/v1/svc{i}/docs/{{*rest}}"),
                ),
                _ => (
                    "erp.order.read",
                    vec!["GET"],
                    format!("/api/v1/svc{i}/orders/{{order}}/lines/{{line}}"),
                ),
            };
            RouteConfig {
                action: action.into(),
                methods: methods.into_iter().map(String::from).collect(),
                path,
            }
        })
        .collect();
    RouteTable::compile(&routes, &catalogue, "bench").expect("bench routes")
}

fn bench(c: &mut Criterion) {
    for n in [10, 10_000] {
        let t = table(n);
        let last = (n - 1) / 4 * 4;
        let hit = format!("/api/v1/svc{last}/contacts/4711");
        c.bench_function(&format!("route_match_{n}"), |b| {
            b.iter(|| {
                t.lookup(black_box("GET"), black_box(&hit))
                    .map(|m| m.allows("crm.contact.read"))
            })
        });
        let deep = format!(
            "/api/v1/svc{}/orders/77/lines/3",
            last + 3 - 4 * usize::from(n == 10)
        );
        c.bench_function(&format!("route_match_two_captures_{n}"), |b| {
            b.iter(|| t.lookup(black_box("GET"), black_box(&deep)).is_ok())
        });
        c.bench_function(&format!("route_miss_{n}"), |b| {
            b.iter(|| t.lookup(black_box("DELETE"), black_box(&hit)).is_err())
        });
    }
    c.bench_function("path_canonical_clean", |b| {
        b.iter(|| path::canonical(black_box("/api/v1/svc9996/contacts/4711")).is_ok())
    });
    c.bench_function("path_canonical_escaped", |b| {
        b.iter(|| path::canonical(black_box("/api/v1/svc9996/c%6Fntacts/%34711%20x")).is_ok())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
