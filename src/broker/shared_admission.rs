//! Admission on Redis, for brokers that share state: the tenant's and the
//! connector's rate limits, single use of the mandate and the action's
//! hourly count, all in ONE script call — one round trip per request.
//!
//! Design points:
//! - **One round trip.** The script takes the tenant's token, then the
//!   connector's, then marks the `jti` (`SET NX PXAT`), then counts the
//!   action; the first refusal ends it. A rate-limited request does not
//!   spend its mandate (SPEC §3: a refused mandate is not spent).
//! - **One slot.** Every key carries the tenant as a hash tag
//!   (`atb:{acme}:…`), so on a Redis Cluster the script runs on one node.
//! - **Counted before the decision.** The action is counted when it is
//!   admitted, so concurrent requests see each other (a limit cannot be
//!   overrun by a burst that all read the same count); a request the
//!   policy then denies is uncounted off the request path
//!   ([`SharedAdmission::uncount`]); if that fails the count stays high,
//!   which only ever refuses more.
//! - **Redis time.** Buckets run on the Redis server's clock, so replicas
//!   with skewed clocks share one notion of "now".
//! - **Fail closed.** Any error is a [`StoreError`]: the request is refused
//!   (503 `replay_store_unavailable`), never admitted.
//! - **A Redis that forgot refuses what it may have seen.** The tenant's
//!   `epoch` key records when this Redis began remembering the tenant's
//!   marks (set without expiry when the broker starts, and by the first
//!   single-use admission that finds it missing). A Redis restarted empty
//!   has lost its marks and its epoch with them: a mandate issued in a
//!   second before the new epoch cannot be proven unused and is refused
//!   ([`SharedVerdict::IssuedBeforeMemory`]); one minted since is served.
//!   Without this a restart re-admitted every spent mandate still within
//!   its lifetime. Left: a mandate issued in the very second of the
//!   restart, and clock skew between its issuer and Redis.

use std::sync::Arc;
use std::time::Duration;

use crate::store::keys::{tenant_key, LUA_TAKE};
use crate::store::redis::{RedisStore, StoreError};

/// The window of the per-action counts (as in memory).
const USAGE_WINDOW_MS: u64 = 3_600_000;

/// What the script decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedVerdict {
    /// Admitted; the action's uses this hour before this one.
    Admitted {
        usage: u64,
    },
    TenantLimited(Duration),
    ConnectorLimited(Duration),
    /// The `jti` was already used.
    Replayed,
    /// The mandate was issued before this Redis began remembering the
    /// tenant's marks (Unix ms of that moment).
    IssuedBeforeMemory(i64),
}

/// One request's admission.
#[derive(Debug, Clone, Copy)]
pub struct Admit<'a> {
    pub tenant: &'a str,
    /// requests per second, burst.
    pub tenant_rate: (f64, u32),
    pub connector: &'a str,
    pub connector_rate: Option<(f64, u32)>,
    /// The mandate's single-use id, until when it must stay used and when
    /// it was issued (Unix seconds); `None` without a mandate or with
    /// single use off.
    pub single_use: Option<SingleUse<'a>>,
    pub action: &'a str,
}

/// A mandate's single use, as the script checks it.
#[derive(Debug, Clone, Copy)]
pub struct SingleUse<'a> {
    pub id: &'a str,
    /// Unix seconds until which the mark must stay.
    pub until: i64,
    /// Unix seconds: when it was issued (`iat`).
    pub issued: i64,
}

const ADMIT: &str = r#"
local now = now_ms()
local wait = take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now)
if wait > 0 then return {1, wait} end
local con_rate = tonumber(ARGV[3])
if con_rate > 0 then
  wait = take(KEYS[2], con_rate, tonumber(ARGV[4]), now)
  if wait > 0 then return {2, wait} end
end
if ARGV[5] ~= '' then
  local epoch = tonumber(redis.call('GET', KEYS[5]))
  if not epoch then
    epoch = now
    redis.call('SET', KEYS[5], epoch)
  end
  if tonumber(ARGV[7]) < math.floor(epoch / 1000) then return {4, epoch} end
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PXAT', ARGV[5]) then return {3, 0} end
end
local n = redis.call('INCR', KEYS[4])
if n == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[6]) end
return {0, n - 1}
"#;

const BEGIN_MEMORY: &str = r#"
redis.call('SET', KEYS[1], now_ms(), 'NX')
return 1
"#;

const UNCOUNT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"#;

pub struct SharedAdmission {
    store: Arc<RedisStore>,
    admit: redis::Script,
    uncount: redis::Script,
    begin_memory: redis::Script,
}

impl SharedAdmission {
    pub fn new(store: Arc<RedisStore>) -> Self {
        Self {
            store,
            admit: redis::Script::new(&format!("{LUA_TAKE}{ADMIT}")),
            uncount: redis::Script::new(UNCOUNT),
            begin_memory: redis::Script::new(&format!("{LUA_TAKE}{BEGIN_MEMORY}")),
        }
    }

    /// Records, for each tenant whose Redis has none, that its memory of
    /// single use begins now (at start, so that mandates minted between
    /// the start and a tenant's first request are not taken for ones a
    /// lost Redis may have seen). Stops at the first failure (Redis is not
    /// answering): the first admission of each tenant sets it too.
    pub async fn begin_memory(&self, tenants: &[String]) {
        for tenant in tenants {
            let mut invocation = self.begin_memory.prepare_invoke();
            invocation.key(tenant_key(tenant, "epoch", ""));
            let set = self
                .store
                .run("begin_memory", |mut conn| async move {
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await;
            if set.is_err() {
                return;
            }
        }
    }

    pub fn store(&self) -> &Arc<RedisStore> {
        &self.store
    }

    /// Runs the admission script for one request.
    pub async fn admit(&self, a: Admit<'_>) -> Result<SharedVerdict, StoreError> {
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(tenant_key(a.tenant, "rl", ""))
            .key(tenant_key(a.tenant, "rl", a.connector))
            .key(match a.single_use {
                Some(u) => tenant_key(a.tenant, "jti", u.id),
                // An unused key of the same slot keeps the key count fixed.
                None => tenant_key(a.tenant, "jti", ""),
            })
            .key(tenant_key(a.tenant, "use", a.action))
            .key(tenant_key(a.tenant, "epoch", ""))
            .arg(a.tenant_rate.0)
            .arg(a.tenant_rate.1)
            .arg(a.connector_rate.map_or(0.0, |r| r.0))
            .arg(a.connector_rate.map_or(0, |r| r.1))
            .arg(match a.single_use {
                // PXAT: milliseconds; at least 1 s ahead of the epoch.
                Some(u) => (u.until.max(1) as u64 * 1000).to_string(),
                None => String::new(),
            })
            .arg(USAGE_WINDOW_MS)
            .arg(a.single_use.map_or(0, |u| u.issued));
        let (code, value): (i64, i64) = self
            .store
            .run("admit", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        verdict(code, value)
    }

    /// Takes back the count of an admitted request the policy denied, off
    /// the request path. A failure leaves the count high (refuses more,
    /// never less).
    pub fn uncount(self: &Arc<Self>, tenant: &str, action: &str) {
        let this = self.clone();
        let key = tenant_key(tenant, "use", action);
        actix_web::rt::spawn(async move {
            let mut invocation = this.uncount.prepare_invoke();
            invocation.key(key);
            let _ = this
                .store
                .run("uncount", |mut conn| async move {
                    invocation.invoke_async::<i64>(&mut conn).await
                })
                .await;
        });
    }
}

/// Reads the script's `{code, value}`.
fn verdict(code: i64, value: i64) -> Result<SharedVerdict, StoreError> {
    let ms = || Duration::from_millis(value.max(1) as u64);
    match code {
        0 => Ok(SharedVerdict::Admitted {
            usage: value.max(0) as u64,
        }),
        1 => Ok(SharedVerdict::TenantLimited(ms())),
        2 => Ok(SharedVerdict::ConnectorLimited(ms())),
        3 => Ok(SharedVerdict::Replayed),
        4 => Ok(SharedVerdict::IssuedBeforeMemory(value)),
        other => Err(StoreError::Reply(format!("admission code {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_answers_map_to_verdicts() {
        assert_eq!(verdict(0, 7), Ok(SharedVerdict::Admitted { usage: 7 }));
        assert_eq!(
            verdict(1, 250),
            Ok(SharedVerdict::TenantLimited(Duration::from_millis(250)))
        );
        assert_eq!(
            verdict(2, 0),
            Ok(SharedVerdict::ConnectorLimited(Duration::from_millis(1)))
        );
        assert_eq!(verdict(3, 0), Ok(SharedVerdict::Replayed));
        assert_eq!(
            verdict(4, 1_700_000_000_000),
            Ok(SharedVerdict::IssuedBeforeMemory(1_700_000_000_000))
        );
        assert!(verdict(9, 0).is_err(), "an unknown answer is a failure");
    }
}
