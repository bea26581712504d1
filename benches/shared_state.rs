//! Per-request cost of admission state: the in-memory replay mark against
//! the shared admission on Redis (one script call: tenant bucket, connector
//! bucket, `SET NX PXAT` of the jti, the action's count), sequential and
//! with 16 admissions in flight.
//!
//! Starts its own `redis-server` on a free loopback port and stops it at the
//! end; without `redis-server` the Redis cases are skipped (with a message).

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atb::broker::replay::{MemoryReplay, Verdict};
use atb::broker::shared_admission::{Admit, SharedAdmission, SharedVerdict};
use atb::store::config::RedisConfig;
use atb::store::redis::RedisStore;
use criterion::{criterion_group, criterion_main, Criterion};

/// Admissions in flight in the concurrent case.
const IN_FLIGHT: u64 = 16;
/// Limits that never refuse.
const NEVER: (f64, u32) = (1e9, 1_000_000_000);

/// A throwaway `redis-server` on a free loopback port, killed on drop.
struct BenchRedis {
    child: Child,
    port: u16,
}

impl BenchRedis {
    /// `None` when `redis-server` is not installed.
    fn start() -> Option<Self> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "shared_state: redis-server not found on PATH; skipping the Redis cases \
                 (install the `redis-server` package to run them)"
            );
            return None;
        }
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let mut r = Self { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = r.child.try_wait() {
                    break; // port taken: try another
                }
                if r.ping() {
                    return Some(r);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        eprintln!("shared_state: redis-server did not start; skipping the Redis cases");
        None
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> i64 {
    atb::runtime::clock::unix_now()
}

fn admit<'a>(tenant: &'a str, jti: &'a str, until: i64) -> Admit<'a> {
    Admit {
        tenant,
        tenant_rate: NEVER,
        connector: "crm",
        connector_rate: Some(NEVER),
        single_use: Some(atb::broker::shared_admission::SingleUse {
            id: jti,
            until,
            issued: unix_now(),
        }),
        action: "crm.contact.read",
    }
}

async fn admit_fresh(shared: &SharedAdmission, jti: &str, until: i64) {
    let verdict = shared
        .admit(admit("acme", jti, until))
        .await
        .expect("redis answers");
    assert!(
        matches!(verdict, SharedVerdict::Admitted { .. }),
        "a fresh jti under high limits is admitted, got {verdict:?}"
    );
}

fn bench(c: &mut Criterion) {
    // (a) In memory: one fresh jti marked per request. Entries are swept
    // outside the timed loop so the map stays at a realistic size.
    let replay = MemoryReplay::new(usize::MAX / 2);
    let tenant: Arc<str> = Arc::from("acme");
    let mut seq = 0u64;
    c.bench_function("replay_memory_mark_fresh", |b| {
        b.iter_custom(|iters| {
            let now = unix_now();
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(100_000);
                let jtis: Vec<String> = (0..chunk)
                    .map(|i| format!("bench-{}-{now}", seq + i))
                    .collect();
                seq += chunk;
                let started = Instant::now();
                for jti in &jtis {
                    let v = replay
                        .mark(&tenant, black_box(jti), now + 60, now, usize::MAX)
                        .expect("room");
                    debug_assert_eq!(v, Verdict::Fresh);
                }
                total += started.elapsed();
                left -= chunk;
                if replay.len() > 1_000_000 {
                    replay.sweep(now + 61);
                }
            }
            total
        })
    });
    drop(replay);

    let Some(redis) = BenchRedis::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let config = RedisConfig {
        url: Some(format!("redis://127.0.0.1:{}", redis.port)),
        // Generous, so a hiccup of the shared host does not end the run;
        // the time limit does not change the cost of an operation.
        command_timeout_ms: 1000,
        connect_timeout_ms: 1000,
        ..RedisConfig::default()
    };
    let store = RedisStore::start(&config, None, &prometheus::Registry::new()).expect("store");
    let shared = Arc::new(SharedAdmission::new(store.clone()));
    let mut seq = 0u64;

    // The floor: one PING round trip through the same store (pool, I/O
    // thread, time limit, metrics).
    c.bench_function("redis_ping_roundtrip_store", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    store
                        .run("ping", |mut conn| async move {
                            redis::cmd("PING").query_async::<()>(&mut conn).await
                        })
                        .await
                        .expect("redis answers");
                }
                started.elapsed()
            })
        })
    });

    // The same PING on a connection driven by the caller's own runtime (no
    // pool, no hop to the store's I/O thread): what the hop costs.
    let direct_url = format!("redis://127.0.0.1:{}", redis.port);
    let mut direct = runtime.block_on(async {
        redis::Client::open(direct_url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    });
    c.bench_function("redis_ping_roundtrip_direct", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    redis::cmd("PING")
                        .query_async::<()>(&mut direct)
                        .await
                        .expect("redis answers");
                }
                started.elapsed()
            })
        })
    });
    drop(direct);

    // (b) One admission at a time, a fresh jti each.
    c.bench_function("shared_admit_fresh_sequential", |b| {
        b.iter_custom(|iters| {
            let until = unix_now() + 60;
            let jtis: Vec<String> = (0..iters)
                .map(|i| format!("seq-{}-{until}", seq + i))
                .collect();
            seq += iters;
            runtime.block_on(async {
                let started = Instant::now();
                for jti in &jtis {
                    admit_fresh(&shared, jti, until).await;
                }
                started.elapsed()
            })
        })
    });

    // (c) 16 admissions in flight; the time per admission is the total
    // over all of them (throughput).
    c.bench_function("shared_admit_fresh_16_in_flight", |b| {
        b.iter_custom(|iters| {
            let until = unix_now() + 60;
            let jtis: Vec<String> = (0..iters)
                .map(|i| format!("par-{}-{until}", seq + i))
                .collect();
            seq += iters;
            runtime.block_on(async {
                let started = Instant::now();
                let lanes = (0..IN_FLIGHT as usize).map(|lane| {
                    let shared = &shared;
                    let jtis = &jtis;
                    async move {
                        for jti in jtis.iter().skip(lane).step_by(IN_FLIGHT as usize) {
                            admit_fresh(shared, jti, until).await;
                        }
                    }
                });
                futures_util::future::join_all(lanes).await;
                started.elapsed()
            })
        })
    });

    drop(shared);
    drop(store);
    drop(redis);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench
}
criterion_main!(benches);
