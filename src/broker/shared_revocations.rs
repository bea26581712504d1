//! Revocations shared by every broker replica through Redis.
//!
//! Design points:
//! - **Written once, seen everywhere.** A revocation (admin API or
//!   `atb revoke`) is added to the tenant's sets (`atb:{t}:revoked:kid`,
//!   `atb:{t}:revoked:jti`) and bumps one version counter.
//! - **Pulled, not pushed.** Each replica reads the version every
//!   [`SYNC_EVERY`] and re-reads the sets when it moved (and in full every
//!   [`FULL_EVERY`], and after a reload or a Redis outage), merging them
//!   into its in-memory sets: the hot path checks memory only, and every
//!   replica sees a revocation within a second. Polling works the same on
//!   one Redis, Sentinel and Cluster (pub/sub does not cross a cluster's
//!   shards reliably).
//! - **Bounded.** Each set holds at most `MAX_REVOCATIONS`; an addition
//!   that would pass it is refused whole (a script checks and adds
//!   atomically).

use std::sync::Arc;
use std::time::Duration;

use crate::broker::validator::MAX_REVOCATIONS;
use crate::store::keys::{tenant_key, REVOCATIONS_VERSION};
use crate::store::redis::{RedisStore, StoreError};

/// How often a replica checks the version.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);
/// How often a replica re-reads every set whatever the version says.
pub const FULL_EVERY: Duration = Duration::from_secs(10);

/// Why an addition failed.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("a tenant holds at most {MAX_REVOCATIONS} revoked kids and jtis")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

const ADD: &str = r#"
local nkids = tonumber(ARGV[2])
local kids = {}
local jtis = {}
for i = 3, 2 + nkids do kids[#kids + 1] = ARGV[i] end
for i = 3 + nkids, #ARGV do jtis[#jtis + 1] = ARGV[i] end
local function fits(key, items)
  local new = 0
  for _, v in ipairs(items) do
    if redis.call('SISMEMBER', key, v) == 0 then new = new + 1 end
  end
  return redis.call('SCARD', key) + new <= tonumber(ARGV[1])
end
if not fits(KEYS[1], kids) or not fits(KEYS[2], jtis) then return 0 end
for _, v in ipairs(kids) do redis.call('SADD', KEYS[1], v) end
for _, v in ipairs(jtis) do redis.call('SADD', KEYS[2], v) end
return 1
"#;

pub struct SharedRevocations {
    store: Arc<RedisStore>,
    add: redis::Script,
}

/// A tenant's revoked kids and jtis.
pub type Revoked = (Vec<String>, Vec<String>);

impl SharedRevocations {
    pub fn new(store: Arc<RedisStore>) -> Self {
        Self {
            store,
            add: redis::Script::new(ADD),
        }
    }

    /// Adds revocations of `tenant` for every replica.
    pub async fn add(
        &self,
        tenant: &str,
        kids: &[String],
        jtis: &[String],
    ) -> Result<(), AddError> {
        let mut invocation = self.add.prepare_invoke();
        invocation
            .key(tenant_key(tenant, "revoked", "kid"))
            .key(tenant_key(tenant, "revoked", "jti"))
            .arg(MAX_REVOCATIONS)
            .arg(kids.len());
        for v in kids.iter().chain(jtis) {
            invocation.arg(v);
        }
        let added: i64 = self
            .store
            .run("revoke", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if added != 1 {
            return Err(AddError::TooMany);
        }
        // A separate key (another slot on a cluster). If this fails the
        // replicas still pick the addition up at their next full read.
        self.store
            .run("revoke", |mut conn| async move {
                redis::cmd("INCR")
                    .arg(REVOCATIONS_VERSION)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The version counter (0 before any revocation).
    pub async fn version(&self) -> Result<i64, StoreError> {
        self.store
            .run("revocations_version", |mut conn| async move {
                redis::cmd("GET")
                    .arg(REVOCATIONS_VERSION)
                    .query_async::<Option<i64>>(&mut conn)
                    .await
            })
            .await
            .map(|v| v.unwrap_or(0))
    }

    /// The revocations of each of `tenants`, in order (one pipeline).
    pub async fn read(&self, tenants: &[String]) -> Result<Vec<Revoked>, StoreError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for t in tenants {
            pipe.cmd("SMEMBERS").arg(tenant_key(t, "revoked", "kid"));
            pipe.cmd("SMEMBERS").arg(tenant_key(t, "revoked", "jti"));
        }
        let sets: Vec<Vec<String>> = self
            .store
            .run("revocations_read", |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        let mut sets = sets.into_iter();
        Ok(tenants
            .iter()
            .map(|_| {
                (
                    sets.next().unwrap_or_default(),
                    sets.next().unwrap_or_default(),
                )
            })
            .collect())
    }
}

/// Why `atb revoke` failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeCommandError {
    #[error("no [redis] configured: revocations reach every replica only through Redis; without it, use each broker's POST /admin/tenants/{{id}}/revocations")]
    NoRedis,
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    #[error("give at least one --jti or --kid (1 to 256 characters each)")]
    Nothing,
    #[error(transparent)]
    Start(#[from] crate::store::redis::StoreStartError),
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Add(#[from] AddError),
}

/// `atb revoke`: adds revocations of `tenant` to the shared store.
pub fn revoke_command(
    config: &crate::config::Config,
    tenant: &str,
    kids: &[String],
    jtis: &[String],
) -> Result<(), RevokeCommandError> {
    let redis = config.redis.as_ref().ok_or(RevokeCommandError::NoRedis)?;
    if !config.tenants.iter().any(|t| t.id == tenant) {
        return Err(RevokeCommandError::UnknownTenant(tenant.to_owned()));
    }
    let bad = kids
        .iter()
        .chain(jtis)
        .any(|v| v.is_empty() || v.len() > 256);
    if bad || (kids.is_empty() && jtis.is_empty()) {
        return Err(RevokeCommandError::Nothing);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RevokeCommandError::Runtime)?;
    runtime.block_on(async {
        let store = RedisStore::start(
            redis,
            config.tls.outbound_ca_file.as_deref(),
            &prometheus::Registry::new(),
        )?;
        SharedRevocations::new(store)
            .add(tenant, kids, jtis)
            .await?;
        println!(
            "{}",
            serde_json::json!({"tenant": tenant, "revoked": {"kids": kids, "jtis": jtis}})
        );
        Ok(())
    })
}

/// What a sync tick must do, given what it saw last.
#[derive(Debug, Default)]
pub struct SyncState {
    version: Option<i64>,
    /// Identity of the tenant set merged last (changes on reload).
    tenants: usize,
    since_full: Duration,
}

impl SyncState {
    /// Whether the sets must be read now: the version moved, the tenants
    /// were reloaded, the last read failed, or a full read is due.
    pub fn must_read(&mut self, version: i64, tenants: usize, elapsed: Duration) -> bool {
        self.since_full += elapsed;
        let due = self.version != Some(version)
            || self.tenants != tenants
            || self.since_full >= FULL_EVERY;
        if due {
            self.since_full = Duration::ZERO;
        }
        due
    }

    /// Records a successful read.
    pub fn read_done(&mut self, version: i64, tenants: usize) {
        self.version = Some(version);
        self.tenants = tenants;
    }

    /// Forgets the version after a failure, so the next tick reads again.
    pub fn failed(&mut self) {
        self.version = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_when_the_version_or_tenants_move_or_a_full_read_is_due() {
        let mut s = SyncState::default();
        let tick = SYNC_EVERY;
        assert!(s.must_read(0, 1, tick), "first tick reads");
        s.read_done(0, 1);
        assert!(!s.must_read(0, 1, tick));
        assert!(s.must_read(1, 1, tick), "version moved");
        s.read_done(1, 1);
        assert!(s.must_read(1, 2, tick), "tenants reloaded");
        s.read_done(1, 2);
        s.failed();
        assert!(s.must_read(1, 2, tick), "after a failure");
        s.read_done(1, 2);
        assert!(s.must_read(1, 2, FULL_EVERY), "full read due");
    }
}
