//! Front-door hot-path pieces: SPIFFE parsing, tenant resolution and the
//! tenant shard's admission logic (without the mailbox hop).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use atb::broker::admission::{ShardRequest, TenantShardState};
use atb::config::Config;
use atb::spiffe::SpiffeId;
use atb::tenant::TenantDirectory;
use atb_actors::ShardLogic;
use criterion::{criterion_group, criterion_main, Criterion};

fn directory(n: usize) -> TenantDirectory {
    let mut toml = String::new();
    for i in 0..n {
        if i % 2 == 0 {
            toml += &format!("[[tenants]]\nid = \"t{i}\"\ntrust_domain = \"t{i}.example\"\n");
        } else {
            toml += &format!("[[tenants]]\nid = \"t{i}\"\nspiffe_prefix = \"spiffe://saas.example/tenants/t{i}\"\n");
        }
    }
    let c = Config::from_toml(&toml).expect("bench config");
    TenantDirectory::new(&c.tenants)
}

fn bench(c: &mut Criterion) {
    c.bench_function("spiffe_parse", |b| {
        b.iter(|| {
            SpiffeId::parse(black_box(
                "spiffe://saas.example/tenants/t999/agent/reporter",
            ))
        })
    });

    let dir = directory(1000);
    let by_domain = SpiffeId::parse("spiffe://t998.example/agent/a").expect("id");
    let by_prefix = SpiffeId::parse("spiffe://saas.example/tenants/t999/agent/a").expect("id");
    c.bench_function("tenant_resolve_trust_domain_1000", |b| {
        b.iter(|| dir.resolve(black_box(&by_domain)))
    });
    c.bench_function("tenant_resolve_prefix_1000_worst_case", |b| {
        b.iter(|| dir.resolve(black_box(&by_prefix)))
    });

    let mut shard = TenantShardState::default();
    let tenant: Arc<str> = Arc::from("t1");
    c.bench_function("shard_admit", |b| {
        b.iter(|| {
            shard.handle(ShardRequest::Admit {
                tenant: tenant.clone(),
                requests_per_second: 1e6,
                burst: 1_000_000,
                now: Instant::now(),
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
