//! The connection to Redis that every shared-state operation goes through.
//!
//! Design points:
//! - **One topology seam.** A plain URL, Sentinel (the master of
//!   `master_name`, asked of the sentinels on every new connection, so a
//!   failover is followed by reconnecting) and Cluster (the client follows
//!   `MOVED`/`ASK`) all yield one [`Connection`] type; callers never know
//!   which they talk to.
//! - **Pooled with bb8.** Connections are multiplexed; the pool keeps up to
//!   `pool_size` of them and never pings on checkout (that would double the
//!   round trips). A checkout only picks a connection: it goes back to the
//!   pool before the command runs, so concurrent requests share it. A
//!   connection that failed with a connection error, a timeout or
//!   `READONLY` (a demoted master after failover) is flagged; the next
//!   checkout that meets it drops it and the pool discards it.
//! - **Fail closed within the command timeout.** [`RedisStore::run`] bounds
//!   getting a connection plus the command by `command_timeout_ms`; any
//!   failure is a [`StoreError`], which callers turn into a refusal (503),
//!   never into an allow.
//! - **Its own I/O thread.** Connections are established on a dedicated
//!   runtime thread (`atb-redis`), so their driver tasks do not depend on
//!   any one web worker being alive or idle.
//! - **Observable.** `atb_redis_up` (set by every operation and by a
//!   periodic `PING`), `atb_redis_errors_total{op}` and
//!   `atb_redis_command_seconds{op}`; [`RedisStore::up`] feeds `/ready`.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value,
};

use super::config::{RedisConfig, Topology};

/// Why a shared-state operation failed. Every variant means "refuse".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("redis: {0}")]
    Redis(String),
    /// Redis answered something the caller cannot read.
    #[error("unexpected redis reply: {0}")]
    Reply(String),
}

/// Why the store could not be set up (bad addresses, unreadable files).
#[derive(Debug, thiserror::Error)]
pub enum StoreStartError {
    #[error("redis: cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Client(#[from] RedisError),
    #[error("redis: cannot start the I/O thread: {0}")]
    Thread(std::io::Error),
    #[error("redis: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The Redis series, registered once per registry.
#[derive(Clone)]
pub struct RedisMetrics {
    pub up: IntGauge,
    pub errors: IntCounterVec,
    pub seconds: HistogramVec,
}

impl RedisMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let up = IntGauge::new(
            "atb_redis_up",
            "1 while the shared-state Redis answers, 0 while it does not",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "atb_redis_errors_total",
                "Redis operations that failed (the request was refused), by operation",
            ),
            &["op"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "atb_redis_command_seconds",
                "Time of one Redis operation (connection checkout included), by operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
            &["op"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self {
            up,
            errors,
            seconds,
        })
    }
}

/// A connection of any topology.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A pooled connection and whether it failed in a way that means it must
/// not be reused.
pub struct Pooled {
    conn: Connection,
    broken: Arc<AtomicBool>,
}

/// Builds a client for a master address the sentinels name.
type MasterClient = Box<dyn Fn(&str, u16) -> Result<Client, RedisError> + Send + Sync>;

/// How new connections are made.
enum Connector {
    Single(Client),
    Sentinel {
        sentinels: Vec<Client>,
        master_name: String,
        master: MasterClient,
    },
    Cluster(Box<redis::cluster::ClusterClient>),
}

struct Manager {
    connector: Arc<Connector>,
    io: tokio::runtime::Handle,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

impl bb8_redis::bb8::ManageConnection for Manager {
    type Connection = Pooled;
    type Error = RedisError;

    async fn connect(&self) -> Result<Pooled, RedisError> {
        let connector = self.connector.clone();
        let config = self.config.clone();
        let limit = self.connect_timeout;
        // On the I/O thread, so the connection's driver task lives there.
        let made = self
            .io
            .spawn(async move { connect(&connector, config, limit).await })
            .await
            .map_err(|e| {
                RedisError::from((ErrorKind::Io, "redis connect task", e.to_string()))
            })??;
        Ok(Pooled {
            conn: made,
            broken: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn is_valid(&self, conn: &mut Pooled) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Pooled) -> bool {
        conn.broken.load(Ordering::Acquire)
    }
}

async fn connect(
    connector: &Connector,
    config: AsyncConnectionConfig,
    limit: Duration,
) -> Result<Connection, RedisError> {
    match connector {
        Connector::Single(client) => Ok(Connection::Single(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        )),
        Connector::Cluster(client) => Ok(Connection::Cluster(client.get_async_connection().await?)),
        Connector::Sentinel {
            sentinels,
            master_name,
            master,
        } => {
            let mut last = RedisError::from((ErrorKind::Io, "no sentinel answered"));
            for sentinel in sentinels {
                match master_through(sentinel, master_name, master, &config, limit).await {
                    Ok(conn) => return Ok(Connection::Single(conn)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Asks one sentinel for the master of `name`, connects to it and checks
/// that it is a master (a sentinel that has not yet seen a failover may
/// name a demoted node).
async fn master_through(
    sentinel: &Client,
    name: &str,
    master: &MasterClient,
    config: &AsyncConnectionConfig,
    limit: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let ask = async {
        let mut s = sentinel
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query_async::<Option<(String, u16)>>(&mut s)
            .await
    };
    let (host, port) = tokio::time::timeout(limit * 2, ask)
        .await
        .map_err(|_| RedisError::from((ErrorKind::Io, "sentinel timed out")))??
        .ok_or_else(|| {
            RedisError::from((
                ErrorKind::Io,
                "the sentinel does not know the master set",
                name.to_owned(),
            ))
        })?;
    let mut conn = master(&host, port)?
        .get_multiplexed_async_connection_with_config(config)
        .await?;
    let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
    match role.first() {
        Some(Value::BulkString(b)) if b.as_slice() == b"master" => Ok(conn),
        _ => Err(RedisError::from((
            ErrorKind::Io,
            "the node the sentinel named is not a master",
            format!("{host}:{port}"),
        ))),
    }
}

/// Shared state on Redis: the pool, its time limits and metrics.
pub struct RedisStore {
    pool: bb8_redis::bb8::Pool<Manager>,
    command_timeout: Duration,
    metrics: RedisMetrics,
    up: AtomicBool,
    topology: Topology,
    /// Stops the I/O thread when the store is dropped.
    _io: IoThread,
}

struct IoThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for IoThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn start_io_thread() -> Result<IoThread, StoreStartError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StoreStartError::Thread)?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("atb-redis".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            })
        })
        .map_err(StoreStartError::Thread)?;
    Ok(IoThread {
        handle,
        stop: Some(stop),
    })
}

impl RedisStore {
    /// Sets up the pool (connecting lazily: an unreachable Redis at start
    /// means refusals and `/ready` false until it answers, not a failed
    /// start) and the health probe.
    pub fn start(
        config: &RedisConfig,
        ca_file: Option<&Path>,
        registry: &Registry,
    ) -> Result<Arc<Self>, StoreStartError> {
        let metrics = RedisMetrics::register(registry)?;
        let password = match (&config.password, &config.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| StoreStartError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let ca = match ca_file {
            Some(path) if config.uses_tls() => {
                Some(std::fs::read(path).map_err(|source| StoreStartError::Read {
                    path: path.to_owned(),
                    source,
                })?)
            }
            _ => None,
        };
        let client = {
            let password = password.clone();
            let ca = ca.clone();
            move |url: &str| -> Result<Client, RedisError> {
                let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
                if let Some(p) = &password {
                    if info.redis_settings().password().is_none() {
                        let settings = info.redis_settings().clone().set_password(p);
                        info = info.set_redis_settings(settings);
                    }
                }
                match (&ca, url.starts_with("rediss://")) {
                    (Some(ca), true) => Client::build_with_tls(
                        info,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(ca.clone()),
                        },
                    ),
                    _ => Client::open(info),
                }
            }
        };
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let connector = match config.topology() {
            Topology::Single => {
                Connector::Single(client(config.url.as_deref().unwrap_or_default())?)
            }
            Topology::Sentinel => {
                let sentinels = config
                    .sentinels
                    .iter()
                    .map(|u| client(u))
                    .collect::<Result<Vec<_>, _>>()?;
                // The master is reached with the first sentinel's scheme.
                let scheme = if config.sentinels[0].starts_with("rediss://") {
                    "rediss"
                } else {
                    "redis"
                };
                Connector::Sentinel {
                    sentinels,
                    master_name: config.master_name.clone(),
                    master: Box::new(move |host, port| {
                        client(&format!("{scheme}://{host}:{port}"))
                    }),
                }
            }
            Topology::Cluster => {
                let mut builder =
                    redis::cluster::ClusterClient::builder(config.cluster_nodes.clone())
                        .connection_timeout(connect_timeout)
                        .response_timeout(command_timeout)
                        .retries(2);
                if let Some(p) = &password {
                    builder = builder.password(p);
                }
                Connector::Cluster(Box::new(builder.build()?))
            }
        };
        let io = start_io_thread()?;
        let manager = Manager {
            connector: Arc::new(connector),
            io: io.handle.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(command_timeout)),
            connect_timeout,
        };
        let pool = {
            let _runtime = io.handle.enter();
            bb8_redis::bb8::Pool::builder()
                .max_size(config.pool_size)
                .min_idle(None)
                .test_on_check_out(false)
                .connection_timeout(command_timeout)
                .build_unchecked(manager)
        };
        metrics.up.set(0);
        let store = Arc::new(Self {
            pool,
            command_timeout,
            metrics,
            up: AtomicBool::new(false),
            topology: config.topology(),
            _io: io,
        });
        let probe = Arc::downgrade(&store);
        let every = Duration::from_millis(config.health_interval_ms);
        store._io.handle.spawn(async move {
            let mut policy_checked = false;
            loop {
                let Some(store) = probe.upgrade() else { return };
                if !policy_checked {
                    policy_checked = store.check_eviction_policy().await;
                }
                let _ = store
                    .run("ping", |mut c| async move {
                        redis::cmd("PING").query_async::<()>(&mut c).await
                    })
                    .await;
                drop(store);
                tokio::time::sleep(every).await;
            }
        });
        Ok(store)
    }

    /// Warns when Redis may evict keys: an evicted replay mark lets its
    /// mandate be used again. True once the policy was read (or cannot be:
    /// managed services may refuse `CONFIG`).
    async fn check_eviction_policy(&self) -> bool {
        let read = self
            .run("config", |mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<Vec<String>>(&mut c)
                    .await
            })
            .await;
        match read {
            Ok(v) => {
                let policy = v.get(1).map(String::as_str).unwrap_or("unknown");
                if policy != "noeviction" {
                    tracing::warn!(
                        policy,
                        "redis maxmemory-policy is not noeviction: evicted replay marks would let mandates be used twice; set maxmemory-policy noeviction"
                    );
                }
                true
            }
            Err(StoreError::Redis(e)) if !self.up() => {
                tracing::debug!(error = %e, "eviction policy not read yet");
                false
            }
            Err(_) => self.up(),
        }
    }

    /// Whether the last operation (or probe) succeeded.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.metrics.up.set(i64::from(up));
            if up {
                tracing::info!("redis reachable");
            } else {
                tracing::warn!("redis unreachable; requests that need it are refused");
            }
        }
    }

    /// Runs `f` on a pooled connection within the command timeout,
    /// counting it as `op`. A failure flags the connection when it means
    /// the connection (or the node behind it) can no longer be trusted.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let started = Instant::now();
        let attempt = async {
            // Multiplexed connections carry many requests at once: the
            // checkout only picks one (skipping a flagged one, which the
            // pool then discards) and is returned before the command runs.
            let (conn, broken) = loop {
                let pooled = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| (StoreError::Redis(pool_error(e)), true))?;
                if !pooled.broken.load(Ordering::Acquire) {
                    break (pooled.conn.clone(), pooled.broken.clone());
                }
            };
            f(conn).await.map_err(|e| {
                let down = discards_connection(&e);
                if down {
                    broken.store(true, Ordering::Release);
                }
                (StoreError::Redis(e.to_string()), down)
            })
        };
        let outcome = match tokio::time::timeout(self.command_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err((
                StoreError::Timeout(self.command_timeout.as_millis() as u64),
                true,
            )),
        };
        self.metrics
            .seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(v) => {
                self.set_up(true);
                Ok(v)
            }
            Err((e, down)) => {
                self.metrics.errors.with_label_values(&[op]).inc();
                if down {
                    self.set_up(false);
                }
                tracing::debug!(op, error = %e, "redis operation failed");
                Err(e)
            }
        }
    }
}

fn pool_error(e: bb8_redis::bb8::RunError<RedisError>) -> String {
    match e {
        bb8_redis::bb8::RunError::User(e) => e.to_string(),
        bb8_redis::bb8::RunError::TimedOut => "no connection available in time".into(),
    }
}

/// Errors after which a connection must not be reused: the link is gone,
/// or the node no longer takes writes (a master demoted by a failover).
fn discards_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_and_io_errors_discard_the_connection() {
        let readonly = RedisError::from((ErrorKind::Server(ServerErrorKind::ReadOnly), "READONLY"));
        assert!(discards_connection(&readonly));
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(discards_connection(&io));
        let typed = RedisError::from((ErrorKind::UnexpectedReturnType, "wrong type"));
        assert!(!discards_connection(&typed));
    }

    #[actix_rt::test]
    async fn an_unreachable_redis_fails_within_the_command_timeout() {
        // A port nothing listens on: refused at once, reported as down.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = RedisConfig {
            url: Some(format!("redis://127.0.0.1:{port}")),
            command_timeout_ms: 200,
            ..RedisConfig::default()
        };
        let store = RedisStore::start(&config, None, &Registry::new()).unwrap();
        let started = Instant::now();
        let r = store
            .run("test", |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!store.up());
        assert_eq!(store.metrics.errors.with_label_values(&["test"]).get(), 1);
    }
}
