//! Proves the real-Redis harness in `tests/common/redis.rs`: a server that
//! can crash and come back, a Sentinel set that fails over, and a Cluster.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::redis_procs::{RedisCluster, RedisServer, SentinelSet};

#[test]
fn server_answers_crashes_and_restarts_on_the_same_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.cli(&["set", "k", "v"]), "OK");
    assert_eq!(server.cli(&["get", "k"]), "v");

    server.kill();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts after kill"
    );
    assert_eq!(server.cli(&["ping"]), "", "a killed server answered");

    server.restart();
    assert_eq!(server.port(), port);
    assert_eq!(server.cli(&["ping"]), "PONG");
    // Persistence is off: the crash lost the data.
    assert_eq!(server.cli(&["get", "k"]), "");
    assert_eq!(server.cli(&["set", "k", "w"]), "OK");
}

#[test]
fn password_server_requires_auth() {
    let server = RedisServer::start_with_password("s3cret");
    assert_eq!(server.cli(&["set", "k", "v"]), "OK");
    let anonymous = common::redis_procs::redis_cli(server.port(), None, &["get", "k"]);
    assert!(anonymous.starts_with("NOAUTH"), "{anonymous}");
    let wrong = common::redis_procs::redis_cli(server.port(), Some("nope"), &["get", "k"]);
    // redis-cli reports the failed AUTH on stderr, then the command is refused.
    assert!(wrong.starts_with("NOAUTH"), "{wrong}");
}

#[test]
fn sentinel_set_fails_over_when_the_master_dies() {
    let mut set = SentinelSet::start();
    assert_eq!(set.sentinel_urls().len(), 3);
    let old = set.master_port();
    assert_eq!(set.master().cli(&["set", "before", "1"]), "OK");

    let killed = set.kill_master();
    assert_eq!(killed, old);
    let t = Instant::now();
    assert!(
        set.wait_failover(Duration::from_secs(45)),
        "no failover within 45 s; sentinel log:\n{}",
        set.sentinels()[0].log()
    );
    eprintln!("failover took {:?}", t.elapsed());
    let new = set.master_port();
    assert_ne!(new, old);
    let master = set.master();
    assert_eq!(master.cli(&["role"]).lines().next(), Some("master"));
    assert_eq!(master.cli(&["set", "after", "2"]), "OK");
    assert_eq!(master.cli(&["get", "after"]), "2");
}

#[test]
fn cluster_serves_keys_across_nodes() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.node_urls().len(), 3);
    for node in cluster.nodes() {
        let info = node.cli(&["cluster", "info"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    for node in cluster.nodes() {
        let p = node.port().to_string();
        let out = common::redis_procs::redis_cli(node.port(), None, &["-c", "set", "{x}a", &p]);
        assert_eq!(out, "OK");
    }
    assert_eq!(
        cluster.cli(&["get", "{x}a"]),
        cluster.nodes()[2].port().to_string()
    );
    // Keys spread over slots owned by different nodes all work.
    for k in ["a", "b", "c", "d", "e"] {
        assert_eq!(cluster.cli(&["set", k, k]), "OK");
        assert_eq!(cluster.cli(&["get", k]), k);
    }
}
