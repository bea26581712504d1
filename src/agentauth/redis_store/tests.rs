//! Against real `redis-server` processes (each test its own, on a free
//! port), with two `RedisStore`s standing for two replicas.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;

use super::*;
use crate::agentauth::challenge::{parse_request, Approver, Tier};
use crate::store::config::RedisConfig;

/// A throwaway `redis-server` on a free loopback port, killed on drop.
struct TestRedis {
    child: Child,
    port: u16,
}

impl TestRedis {
    fn start() -> Self {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(r) = Self::on(port) {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts on `port`; `None` if it exited (port taken).
    fn on(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let mut r = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = r.child.try_wait() {
                return None;
            }
            if r.ping() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {port} did not answer");
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

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A store on this Redis (a "replica").
    fn store(&self) -> Arc<RedisStore> {
        let config = RedisConfig {
            url: Some(self.url()),
            command_timeout_ms: 1000,
            connect_timeout_ms: 500,
            health_interval_ms: 200,
            ..RedisConfig::default()
        };
        RedisStore::start(&config, None, &Registry::new()).unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three cluster-enabled masters on loopback, joined into one Redis
/// Cluster (no replicas), killed on drop.
struct TestCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            nodes.push(
                Command::new("redis-server")
                    .args(["--port", &port.to_string()])
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                    .arg(format!("nodes-{port}.conf"))
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server is installed"),
            );
            ports.push(port);
        }
        let cluster = Self {
            nodes,
            ports,
            _dir: dir,
        };
        let cli = |port: u16, args: &[&str]| -> String {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli is installed");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cluster
            .ports
            .iter()
            .all(|p| cli(*p, &["PING"]).contains("PONG"))
        {
            assert!(Instant::now() < deadline, "cluster nodes did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .ports
            .iter()
            .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn store(&self) -> Arc<RedisStore> {
        let config = RedisConfig {
            cluster_nodes: self
                .ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            command_timeout_ms: 1000,
            connect_timeout_ms: 500,
            health_interval_ms: 200,
            ..RedisConfig::default()
        };
        RedisStore::start(&config, None, &Registry::new()).unwrap()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn challenges(store: &Arc<RedisStore>, capacity: usize) -> RedisChallenges {
    RedisChallenges::new(
        store.clone(),
        vec!["acme".into(), "globex".into()],
        capacity,
        5,
    )
}

fn challenge(tenant: &str, tier: Tier, now: i64) -> Challenge {
    let req = parse_request(
        &serde_json::json!({"act": "a.b", "con": {"n": 1}, "leg": {}}),
        "spiffe://t/agent",
    )
    .unwrap();
    Challenge::new(
        challenge::challenge_id(tenant).unwrap(),
        tenant.into(),
        "spiffe://t/agent".into(),
        req,
        tier,
        now,
        60,
    )
}

fn person(id: String) -> Approver {
    Approver {
        id,
        email: None,
        roles: vec![],
        tenants: vec!["acme".into()],
        cross_tenant: false,
    }
}

fn now() -> i64 {
    crate::runtime::clock::unix_now()
}

/// `threads` threads, spread over `replicas`, each trying 4 concurrent
/// mints of `id`; every outcome.
fn race_mints(
    replicas: &[Arc<RedisChallenges>],
    id: &str,
    threads: usize,
) -> Vec<Result<Challenge, Refusal>> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = replicas[t % replicas.len()].clone();
            let id = id.to_owned();
            std::thread::spawn(move || {
                block_on(async move {
                    let tries = (0..4).map(|i| {
                        let (s, id) = (&store, &id);
                        let jti = format!("poa_{t}_{i}");
                        async move {
                            s.update(
                                id,
                                Box::new(move |c| c.mint("spiffe://t/agent", &jti, 0, now())),
                            )
                            .await
                        }
                    });
                    futures_util::future::join_all(tries).await
                })
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    actix_web::rt::System::new().block_on(f)
}

#[actix_web::test]
async fn insert_get_list_update_and_keys() {
    let redis = TestRedis::start();
    let (a, b) = (redis.store(), redis.store());
    let (ra, rb) = (challenges(&a, 10), challenges(&b, 10));
    let t = now();
    let high = challenge("acme", Tier::High, t);
    let low = challenge("acme", Tier::Low, t + 1);
    let other = challenge("globex", Tier::Medium, t + 2);
    for c in [&high, &low, &other] {
        ra.insert(c.clone()).await.unwrap();
    }
    // Written on one replica, read on the other, as written.
    assert_eq!(rb.get(&high.id).await.unwrap(), high);
    assert_eq!(rb.get("chal_nope").await, Err(Refusal::NotFound));
    assert_eq!(
        rb.get(&challenge::challenge_id("acme").unwrap()).await,
        Err(Refusal::NotFound)
    );
    // An id naming another tenant is not found there.
    let forged = high.id.replacen("chal_acme.", "chal_globex.", 1);
    assert_eq!(rb.get(&forged).await, Err(Refusal::NotFound));
    // A duplicate id is refused.
    assert!(matches!(
        rb.insert(high.clone()).await,
        Err(Refusal::Store(_))
    ));

    let ids = |v: Vec<Challenge>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(rb.list(Some("acme"), None, t, 10).await.unwrap()),
        vec![high.id.clone(), low.id.clone()]
    );
    assert_eq!(
        ids(rb.list(None, None, t, 10).await.unwrap()),
        vec![high.id.clone(), low.id.clone(), other.id.clone()]
    );
    assert_eq!(ids(rb.list(None, None, t, 2).await.unwrap()).len(), 2);
    assert_eq!(
        ids(rb
            .list(Some("acme"), Some(Status::Pending), t, 10)
            .await
            .unwrap()),
        vec![high.id.clone()]
    );
    assert!(rb
        .list(Some("{bad}"), None, t, 10)
        .await
        .unwrap()
        .is_empty());

    // A transition is applied on one replica and seen on the other; a
    // refused one changes nothing.
    let c = ra
        .update(
            &high.id,
            Box::new(|c| c.approve(&person("p1".into()), &[], now())),
        )
        .await
        .unwrap();
    assert_eq!(c.approvals.len(), 1);
    assert_eq!(rb.get(&high.id).await.unwrap().approvals.len(), 1);
    let r = rb
        .update(
            &high.id,
            Box::new(|c| {
                c.act = "changed".into();
                Err(Refusal::SelfApproval)
            }),
        )
        .await;
    assert_eq!(r, Err(Refusal::SelfApproval));
    assert_eq!(ra.get(&high.id).await.unwrap().act, "a.b");
    assert_eq!(
        rb.update("chal_acme.AAAAAAAAAAAAAAAAAAAAAA", Box::new(|_| Ok(())))
            .await,
        Err(Refusal::NotFound)
    );

    // Keys: the tenant's hash tag, an expiry of lifetime + grace.
    let key = challenge_key("acme", &high.id);
    assert!(key.starts_with("atb:{acme}:challenge:chal_acme."));
    let (ttl, index_ttl): (i64, i64) = a
        .run("test", |mut c| async move {
            let ttl = redis::cmd("TTL").arg(&key).query_async(&mut c).await?;
            let i = redis::cmd("TTL")
                .arg(index_key("acme"))
                .query_async(&mut c)
                .await?;
            Ok((ttl, i))
        })
        .await
        .unwrap();
    assert!((60..=65).contains(&ttl), "{ttl}");
    assert!(index_ttl >= ttl, "{index_ttl}");
}

#[actix_web::test]
async fn capacity_is_per_tenant_and_frees_after_the_grace() {
    let redis = TestRedis::start();
    let (a, b) = (redis.store(), redis.store());
    let (ra, rb) = (challenges(&a, 2), challenges(&b, 2));
    let t = now();
    // Expires at t - 4, leaves the index once its 5 s grace is over.
    ra.insert(challenge("acme", Tier::Low, t - 64))
        .await
        .unwrap();
    rb.insert(challenge("acme", Tier::Low, t)).await.unwrap();
    // Full across replicas…
    assert_eq!(
        rb.insert(challenge("acme", Tier::Low, t)).await,
        Err(Refusal::Full)
    );
    // …for this tenant only.
    ra.insert(challenge("globex", Tier::Low, t)).await.unwrap();
    // A second later the first one is past its grace: room again.
    ra.insert(challenge("acme", Tier::Low, t + 1))
        .await
        .unwrap();
    assert_eq!(
        rb.insert(challenge("acme", Tier::Low, t + 1)).await,
        Err(Refusal::Full)
    );
}

#[actix_web::test]
async fn sweep_reports_each_expiry_once_across_replicas() {
    let redis = TestRedis::start();
    let (a, b) = (redis.store(), redis.store());
    let (ra, rb) = (challenges(&a, 10), challenges(&b, 10));
    let t = now();
    let pending = challenge("acme", Tier::High, t - 61);
    let rejected = challenge("acme", Tier::High, t - 61);
    let live = challenge("globex", Tier::High, t);
    for c in [&pending, &rejected, &live] {
        ra.insert(c.clone()).await.unwrap();
    }
    rb.update(
        &rejected.id,
        Box::new(|c| c.reject(&person("x".into()), None, t - 61)),
    )
    .await
    .unwrap();
    // Both replicas sweep at the same moment: one report in all.
    let (sa, sb) = futures_util::future::join(ra.sweep(t, 5), rb.sweep(t, 5)).await;
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let reported: Vec<_> = sa
        .expired
        .iter()
        .chain(&sb.expired)
        .map(|c| &c.id)
        .collect();
    assert_eq!(reported, vec![&pending.id]);
    assert_eq!(sa.held, Some(3));
    // Later sweeps report nothing more; it stays readable as expired.
    assert!(ra.sweep(t + 1, 5).await.unwrap().expired.is_empty());
    let c = rb.get(&pending.id).await.unwrap();
    assert!(c.expiry_reported);
    assert_eq!(c.status(t), Status::Expired);
    // Past the grace it leaves the index (the key expires by its TTL).
    let s = ra.sweep(t + 5, 5).await.unwrap();
    assert_eq!((s.removed, s.held), (2, Some(1)));
}

#[test]
fn racing_approvals_on_two_replicas_are_counted_exactly() {
    let redis = TestRedis::start();
    let replicas = [redis.store(), redis.store()];
    let c = challenge("acme", Tier::High, now());
    let id = c.id.clone();
    block_on(challenges(&replicas[0], 10).insert(c)).unwrap();
    // 8 threads (4 per replica), each running 8 approvals at once, by 4
    // different people in all: exactly two approvals land, by two
    // different people.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = replicas[t % 2].clone();
            let id = id.clone();
            std::thread::spawn(move || {
                block_on(async move {
                    let s = challenges(&store, 10);
                    let tries = (0..8).map(|p| {
                        let who = person(format!("person-{}", (t * 8 + p) % 4));
                        let (s, id) = (&s, &id);
                        async move {
                            s.update(id, Box::new(move |c| c.approve(&who, &[], now())))
                                .await
                        }
                    });
                    futures_util::future::join_all(tries).await
                })
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 2, "{results:?}");
    // Every refusal is a rule, never a lost race.
    assert!(
        results.iter().all(|r| matches!(
            r,
            Ok(_) | Err(Refusal::DuplicateApprover | Refusal::NotPending(Status::Approved))
        )),
        "{results:?}"
    );
    let c = block_on(challenges(&replicas[1], 10).get(&id)).unwrap();
    assert_eq!(c.approvals.len(), 2);
    assert_ne!(c.approvals[0].approver_id, c.approvals[1].approver_id);
}

#[test]
fn a_racing_mint_succeeds_once_across_replicas() {
    let redis = TestRedis::start();
    let replicas = [redis.store(), redis.store()];
    let c = challenge("acme", Tier::Low, now());
    let id = c.id.clone();
    block_on(challenges(&replicas[0], 10).insert(c)).unwrap();
    let results = race_mints(
        &[
            Arc::new(challenges(&replicas[0], 10)),
            Arc::new(challenges(&replicas[1], 10)),
        ],
        &id,
        8,
    );
    let minted: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(minted.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(_) | Err(Refusal::AlreadyMinted))));
    let stored = block_on(challenges(&replicas[1], 10).get(&id)).unwrap();
    assert_eq!(stored.minted, minted[0].minted);
}

#[actix_web::test]
async fn rate_limits_are_shared_and_redis_down_refuses() {
    let mut redis = TestRedis::start();
    let (a, b) = (redis.store(), redis.store());
    let (la, lb) = (RedisRateLimiter::new(a.clone()), RedisRateLimiter::new(b));
    // One budget of 3 per minute, drawn on from both replicas.
    assert_eq!(la.hit("agent:spiffe://x/{y}", 3, 0).await, Ok(None));
    assert_eq!(lb.hit("agent:spiffe://x/{y}", 3, 0).await, Ok(None));
    assert_eq!(la.hit("agent:spiffe://x/{y}", 3, 0).await, Ok(None));
    let wait = lb.hit("agent:spiffe://x/{y}", 3, 0).await.unwrap().unwrap();
    assert!((1..=20).contains(&wait), "{wait}");
    assert_eq!(la.hit("agent:spiffe://x/z", 3, 0).await, Ok(None));
    assert_eq!(bucket_key("a{b}%"), "atb:agentauth:rl:a%7Bb%7D%25");

    // Redis gone: every operation is a store refusal (503), not a success.
    let ra = challenges(&a, 10);
    let c = challenge("acme", Tier::Low, now());
    ra.insert(c.clone()).await.unwrap();
    redis.stop();
    assert!(matches!(la.hit("k", 3, 0).await, Err(Refusal::Store(_))));
    assert!(matches!(ra.get(&c.id).await, Err(Refusal::Store(_))));
    assert!(matches!(
        ra.insert(challenge("acme", Tier::Low, now())).await,
        Err(Refusal::Store(_))
    ));
    assert!(matches!(
        ra.update(&c.id, Box::new(|_| Ok(()))).await,
        Err(Refusal::Store(_))
    ));
    assert!(matches!(ra.sweep(now(), 5).await, Err(Refusal::Store(_))));
    assert!(!a.up());
    assert_eq!(
        crate::agentauth::challenge::Refusal::Store("x".into()).code(),
        "state_unavailable"
    );
    // Back (empty, on the same port): answers again, same store.
    let port = redis.port;
    let _back = TestRedis::on(port).expect("the port is free again");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if la.hit("k", 3, 0).await == Ok(None) {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ra.get(&c.id).await, Err(Refusal::NotFound));
    ra.insert(challenge("acme", Tier::Low, now()))
        .await
        .unwrap();
}

#[test]
fn on_a_redis_cluster_every_script_stays_on_its_tenants_slot() {
    let cluster = TestCluster::start();
    let replicas = [cluster.store(), cluster.store()];
    // Tenants whose hash tags land on different masters.
    let tenants = ["acme", "globex", "initech", "umbrella", "hooli", "wonka"];
    let masters: std::collections::HashSet<i64> = tenants
        .iter()
        .map(|t| {
            let key = index_key(t);
            let slot: i64 = block_on(replicas[0].run("test", |mut c| async move {
                redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
            }))
            .unwrap();
            // redis-cli splits the 16384 slots evenly over three masters.
            slot / 5462
        })
        .collect();
    assert!(masters.len() >= 2, "the tenants share one master");
    let store = |i: usize| {
        RedisChallenges::new(
            replicas[i].clone(),
            tenants.iter().map(|t| (*t).to_owned()).collect(),
            100,
            5,
        )
    };
    block_on(async {
        let (ra, rb) = (store(0), store(1));
        let t = now();
        let mut ids = Vec::new();
        for (i, tenant) in tenants.iter().enumerate() {
            let c = challenge(tenant, Tier::High, t - 61 + i as i64 % 2);
            ra.insert(c.clone()).await.unwrap();
            assert_eq!(rb.get(&c.id).await.unwrap(), c);
            ids.push(c.id);
        }
        assert_eq!(
            rb.list(None, None, t, 100).await.unwrap().len(),
            tenants.len()
        );
        assert_eq!(
            rb.list(Some("globex"), None, t, 100).await.unwrap()[0].id,
            ids[1]
        );
        let c = rb
            .update(
                &ids[2],
                Box::new(|c| c.approve(&person("p1".into()), &[], t - 60)),
            )
            .await
            .unwrap();
        assert_eq!(c.approvals.len(), 1);
        let (sa, sb) = futures_util::future::join(ra.sweep(t, 5), rb.sweep(t, 5)).await;
        let (sa, sb) = (sa.unwrap(), sb.unwrap());
        assert_eq!(sa.expired.len() + sb.expired.len(), tenants.len());
        let limiter = RedisRateLimiter::new(replicas[0].clone());
        assert_eq!(limiter.hit("agent:spiffe://x/y", 1, 0).await, Ok(None));
        assert!(limiter
            .hit("agent:spiffe://x/y", 1, 0)
            .await
            .unwrap()
            .is_some());
    });
    // The racing mint, across the cluster's two clients.
    let c = challenge("umbrella", Tier::Low, now());
    let id = c.id.clone();
    block_on(store(0).insert(c)).unwrap();
    let results = race_mints(&[Arc::new(store(0)), Arc::new(store(1))], &id, 4);
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
}
