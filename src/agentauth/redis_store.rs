//! AgentAuth's state on Redis, shared by every replica: challenges and
//! rate-limit buckets behind the same traits as the in-memory store.
//!
//! Keys (all of one tenant share the hash tag `{tenant}`, so on a Redis
//! Cluster they live on one slot and every script touches one slot only):
//!
//! * `atb:{t}:challenge:<id>` — a hash `{v, j}`: a version counter and the
//!   challenge as JSON. It expires `expires_at + grace` (the time the
//!   in-memory store would sweep it), so Redis removes it by itself.
//! * `atb:{t}:challenges` — sorted set of the tenant's live ids, scored by
//!   `expires_at`: the capacity count and what `list` walks (in score
//!   order, which is creation order for a fixed challenge lifetime).
//! * `atb:{t}:challenges:unreported` — sorted set of ids whose expiry has
//!   not been audited yet, scored by `expires_at`: what `sweep` walks.
//! * `atb:agentauth:rl:<key>` — one token bucket (`LUA_TAKE`).
//!
//! Ids carry their tenant (`chal_<tenant>.<random>`, see
//! [`challenge::challenge_id`]), so `get(id)` reads one key in one round
//! trip, with no id → tenant mapping to keep in step (which would live on
//! another slot and could not be written in the same script).
//!
//! Atomicity: a transition is an optimistic compare-and-set. The challenge
//! and its version are read, the Rust transition (which enforces the
//! distinct-approver, tier and single-mint rules on the state it sees) runs
//! locally, and a script writes the result only if the version is still
//! the one read; otherwise the read-transition-write is retried with the
//! new state (at most [`MAX_CAS_ATTEMPTS`] times, then refused as busy).
//! Two replicas racing on one challenge are therefore serialised exactly
//! like two threads on the in-memory store's lock.
//!
//! Failure: any Redis error or timeout is `Refusal::Store`, which the HTTP
//! layer answers with 503 `state_unavailable` (and `Retry-After`); never a
//! success.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use redis::Script;

use super::challenge::{self, Challenge, Refusal, Status};
use super::store::{ChallengeStore, RateLimiter, Swept, Transition};
use crate::store::keys::{tenant_key, LUA_TAKE};
use crate::store::redis::{RedisStore, StoreError};

/// Read-transition-write attempts before an update is refused as busy.
pub const MAX_CAS_ATTEMPTS: usize = 16;
/// Ids read per `list` script call.
const LIST_BATCH: usize = 200;
/// Expired challenges examined per tenant per sweep.
const SWEEP_BATCH: usize = 500;

/// Stores a new challenge unless the tenant is at capacity or the id is
/// taken. KEYS: challenge, index, unreported. ARGV: id, json, expires_at,
/// ttl seconds, capacity, now, grace. Returns 1 stored, 0 full, -1 taken.
const INSERT: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[6]) - tonumber(ARGV[7]))
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'v', 1, 'j', ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
for i = 2, 3 do
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
return 1
"#;

/// Writes a transition's result if the version is unchanged. KEYS:
/// challenge. ARGV: version read, new json. Returns 1 written, 0 changed
/// meanwhile, -1 gone. `HSET` keeps the key's expiry.
const CAS: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', tonumber(v) + 1, 'j', ARGV[2])
return 1
"#;

/// One page of a tenant's challenges, oldest first. KEYS: index. ARGV:
/// start rank, stop rank, the tenant's challenge key prefix (same hash tag,
/// same slot). Returns {ids seen, jsons of those still stored}.
const LIST: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local j = redis.call('HGET', ARGV[3] .. id, 'j')
  if j then out[#out + 1] = j end
end
return {#ids, out}
"#;

/// Drops ids past their grace from the index and names the ids due for an
/// expiry report. KEYS: index, unreported. ARGV: now, grace, batch.
/// Returns {removed, held, due ids}.
const SWEEP: &str = r#"
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
return {removed, redis.call('ZCARD', KEYS[1]), due}
"#;

fn unavailable(e: StoreError) -> Refusal {
    tracing::warn!(error = %e, "agentauth: shared state unavailable");
    Refusal::Store("the shared challenge state did not answer".into())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "agentauth: unreadable {what} in redis");
    Refusal::Store(format!("unreadable {what} in the shared state"))
}

/// Challenges on Redis, shared by every replica.
pub struct RedisChallenges {
    store: Arc<RedisStore>,
    /// The configured tenants (`list` for every tenant, `sweep`).
    tenants: Vec<String>,
    /// Most live challenges per tenant.
    capacity: usize,
    /// Seconds an expired challenge stays readable.
    grace: i64,
    insert: Script,
    cas: Script,
    list: Script,
    sweep: Script,
}

fn challenge_key(tenant: &str, id: &str) -> String {
    tenant_key(tenant, "challenge", id)
}

fn index_key(tenant: &str) -> String {
    tenant_key(tenant, "challenges", "")
}

fn unreported_key(tenant: &str) -> String {
    tenant_key(tenant, "challenges", "unreported")
}

impl RedisChallenges {
    /// `capacity` bounds each tenant's live challenges (`Refusal::Full`
    /// past it); `grace` is how long an expired challenge stays readable.
    pub fn new(store: Arc<RedisStore>, tenants: Vec<String>, capacity: usize, grace: i64) -> Self {
        Self {
            store,
            tenants,
            capacity,
            grace,
            insert: Script::new(INSERT),
            cas: Script::new(CAS),
            list: Script::new(LIST),
            sweep: Script::new(SWEEP),
        }
    }

    /// The challenge and its version, `None` when it is not stored.
    async fn read(&self, tenant: &str, id: &str) -> Result<Option<(String, Challenge)>, Refusal> {
        let key = challenge_key(tenant, id);
        let (v, j): (Option<String>, Option<String>) = self
            .store
            .run("agentauth_challenge_read", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("j")
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        let (Some(v), Some(j)) = (v, j) else {
            return Ok(None);
        };
        let c: Challenge = serde_json::from_str(&j).map_err(|e| corrupt("challenge", e))?;
        // The key names the id and tenant; a record that disagrees is not
        // this challenge.
        if c.id != id || c.tenant != tenant {
            return Ok(None);
        }
        Ok(Some((v, c)))
    }

    async fn update_inner(
        &self,
        id: &str,
        mut transition: Transition<'_>,
    ) -> Result<Challenge, Refusal> {
        let tenant = challenge::tenant_of_challenge_id(id).ok_or(Refusal::NotFound)?;
        let key = challenge_key(tenant, id);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (version, mut c) = self.read(tenant, id).await?.ok_or(Refusal::NotFound)?;
            transition(&mut c)?;
            let json = serde_json::to_string(&c).map_err(|e| corrupt("challenge", e))?;
            let (script, key) = (&self.cas, &key);
            let written: i64 = self
                .store
                .run("agentauth_challenge_cas", |mut conn| async move {
                    script
                        .key(key)
                        .arg(version)
                        .arg(json)
                        .invoke_async(&mut conn)
                        .await
                })
                .await
                .map_err(unavailable)?;
            match written {
                1 => return Ok(c),
                -1 => return Err(Refusal::NotFound),
                // Another replica (or task) changed it: run the transition
                // again on what it wrote.
                _ => tokio::task::yield_now().await,
            }
        }
        tracing::warn!(
            challenge_id = id,
            "agentauth: challenge update lost {MAX_CAS_ATTEMPTS} races"
        );
        Err(Refusal::Store("the challenge is busy; try again".into()))
    }

    /// Up to `limit` of one tenant's challenges in `status`, oldest first.
    async fn list_tenant(
        &self,
        tenant: &str,
        status: Option<Status>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Challenge>, Refusal> {
        // Tenant names from an approver's token: only valid ids name keys.
        if !crate::config::valid_id(tenant) {
            return Ok(Vec::new());
        }
        let index = index_key(tenant);
        let prefix = challenge_key(tenant, "");
        let prefix = format!("{prefix}:");
        let mut found = Vec::new();
        let mut start = 0usize;
        while found.len() < limit {
            let (script, index, prefix) = (&self.list, &index, &prefix);
            let (seen, jsons): (usize, Vec<String>) = self
                .store
                .run("agentauth_challenge_list", |mut c| async move {
                    script
                        .key(index)
                        .arg(start)
                        .arg(start + LIST_BATCH - 1)
                        .arg(prefix)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(unavailable)?;
            for j in jsons {
                let c: Challenge = serde_json::from_str(&j).map_err(|e| corrupt("challenge", e))?;
                if c.tenant == tenant && status.is_none_or(|s| c.status(now) == s) {
                    found.push(c);
                }
            }
            if seen < LIST_BATCH {
                break;
            }
            start += LIST_BATCH;
        }
        Ok(found)
    }

    async fn sweep_tenant(&self, tenant: &str, now: i64, swept: &mut Swept) -> Result<(), Refusal> {
        let (index, unreported) = (index_key(tenant), unreported_key(tenant));
        let (script, ki, ku) = (&self.sweep, &index, &unreported);
        let (removed, held, due): (usize, usize, Vec<String>) = self
            .store
            .run("agentauth_challenge_sweep", |mut c| async move {
                script
                    .key(ki)
                    .key(ku)
                    .arg(now)
                    .arg(self.grace)
                    .arg(SWEEP_BATCH)
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .map_err(unavailable)?;
        swept.removed += removed;
        *swept.held.get_or_insert(0) += held;
        for id in due {
            // Exactly one replica flips `expiry_reported`: the one whose
            // compare-and-set lands reports it.
            let r = self
                .update_inner(
                    &id,
                    Box::new(|c| {
                        if c.expiry_reported || c.expires_at > now {
                            return Err(Refusal::NotPending(Status::Expired));
                        }
                        c.expiry_reported = true;
                        Ok(())
                    }),
                )
                .await;
            match r {
                Ok(c) => {
                    if c.minted.is_none() && c.rejected.is_none() {
                        swept.expired.push(c);
                    }
                }
                Err(Refusal::Store(e)) => return Err(Refusal::Store(e)),
                // Reported by another replica, gone, or not ours to report.
                Err(_) => {}
            }
            let (ku, id) = (&unreported, &id);
            self.store
                .run("agentauth_challenge_sweep", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(ku)
                        .arg(id)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

impl ChallengeStore for RedisChallenges {
    fn insert(&self, c: Challenge) -> BoxFuture<'_, Result<(), Refusal>> {
        Box::pin(async move {
            // Only ids this store can find again (the tenant inside).
            if challenge::tenant_of_challenge_id(&c.id) != Some(c.tenant.as_str()) {
                return Err(Refusal::Store(
                    "challenge id does not name its tenant".into(),
                ));
            }
            let json = serde_json::to_string(&c).map_err(|e| corrupt("challenge", e))?;
            let ttl = (c.expires_at + self.grace - c.created_at).max(1);
            let keys = (
                challenge_key(&c.tenant, &c.id),
                index_key(&c.tenant),
                unreported_key(&c.tenant),
            );
            let (script, keys, c) = (&self.insert, &keys, &c);
            let stored: i64 = self
                .store
                .run("agentauth_challenge_insert", |mut conn| async move {
                    script
                        .key(&keys.0)
                        .key(&keys.1)
                        .key(&keys.2)
                        .arg(&c.id)
                        .arg(json)
                        .arg(c.expires_at)
                        .arg(ttl)
                        .arg(self.capacity)
                        .arg(c.created_at)
                        .arg(self.grace)
                        .invoke_async(&mut conn)
                        .await
                })
                .await
                .map_err(unavailable)?;
            match stored {
                1 => Ok(()),
                0 => Err(Refusal::Full),
                _ => Err(Refusal::Store("challenge id collision".into())),
            }
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Challenge, Refusal>> {
        Box::pin(async move {
            let tenant = challenge::tenant_of_challenge_id(id).ok_or(Refusal::NotFound)?;
            Ok(self.read(tenant, id).await?.ok_or(Refusal::NotFound)?.1)
        })
    }

    fn update<'a>(
        &'a self,
        id: &'a str,
        transition: Transition<'a>,
    ) -> BoxFuture<'a, Result<Challenge, Refusal>> {
        Box::pin(self.update_inner(id, transition))
    }

    fn list<'a>(
        &'a self,
        tenant: Option<&'a str>,
        status: Option<Status>,
        now: i64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Challenge>, Refusal>> {
        Box::pin(async move {
            let mut found = Vec::new();
            match tenant {
                Some(t) => found = self.list_tenant(t, status, now, limit).await?,
                None => {
                    for t in &self.tenants {
                        found.append(&mut self.list_tenant(t, status, now, limit).await?);
                    }
                }
            }
            found.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            found.truncate(limit);
            Ok(found)
        })
    }

    fn sweep(&self, now: i64, _grace: i64) -> BoxFuture<'_, Result<Swept, Refusal>> {
        // The grace is the store's own (it set the keys' expiry with it).
        Box::pin(async move {
            let mut swept = Swept::default();
            for t in &self.tenants {
                self.sweep_tenant(t, now, &mut swept).await?;
            }
            Ok(swept)
        })
    }
}

/// Rate-limit buckets on Redis: one script call per hit, the bucket read,
/// refilled and taken atomically on the server's clock (`TIME`), so every
/// replica draws on one budget.
pub struct RedisRateLimiter {
    store: Arc<RedisStore>,
    take: Script,
}

impl RedisRateLimiter {
    pub fn new(store: Arc<RedisStore>) -> Self {
        Self {
            store,
            take: Script::new(&format!(
                "{LUA_TAKE}\nreturn take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), now_ms())"
            )),
        }
    }
}

/// The bucket key of a limiter key (`addr:…`, `agent:…`, `approver:…`).
/// One key per script call, so no hash tag is needed for atomicity; braces
/// are escaped so a caller-chosen name cannot pick the slot (keys spread
/// over the cluster by their whole name).
pub fn bucket_key(key: &str) -> String {
    let mut k = String::with_capacity(16 + key.len());
    k.push_str("atb:agentauth:rl:");
    for ch in key.chars() {
        match ch {
            '%' => k.push_str("%25"),
            '{' => k.push_str("%7B"),
            '}' => k.push_str("%7D"),
            c => k.push(c),
        }
    }
    k
}

impl RateLimiter for RedisRateLimiter {
    fn hit<'a>(
        &'a self,
        key: &'a str,
        per_minute: u32,
        _now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, Refusal>> {
        Box::pin(async move {
            if per_minute == 0 {
                return Ok(Some(60));
            }
            let bucket = bucket_key(key);
            let rate = f64::from(per_minute) / 60.0;
            let (script, bucket) = (&self.take, &bucket);
            let wait_ms: i64 = self
                .store
                .run("agentauth_rate_limit", |mut c| async move {
                    script
                        .key(bucket)
                        .arg(rate)
                        .arg(per_minute)
                        .invoke_async(&mut c)
                        .await
                })
                .await
                .map_err(unavailable)?;
            Ok((wait_ms > 0).then(|| (wait_ms as u64).div_ceil(1000).max(1)))
        })
    }
}

#[cfg(test)]
mod tests;
