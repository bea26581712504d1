//! Keys from a JWKS URL, refreshed without storms.
//!
//! * One refresh at a time per tenant (single flight): callers that find an
//!   unknown `kid` queue on one lock; the first fetches, the rest re-check.
//! * A cooldown (≥ 30 s) between refreshes triggered by unknown `kid`s, and
//!   a negative cache of unknown `kid`s, so a flood of bogus `kid`s costs at
//!   most one fetch per cooldown.
//! * Keys from the last good fetch stay usable for a bounded stale window
//!   while refreshes fail; past it, verification fails closed.
//! * [`start_refresh`] runs one periodic loop per source: it fetches at
//!   start and then periodically, retrying a failed fetch with backoff (so
//!   a JWKS outage at start-up is survived, and a JWKS that returns is read
//!   soon after, not a whole refresh interval later); a panic in a fetch is
//!   contained and the loop goes on. Each fetch has its own client, closed
//!   with its connection when done: nothing idles on the JWKS server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ed25519_dalek::VerifyingKey;

use super::keys::{parse_jwks, DocumentError, KeySet};

/// Why a JWKS refresh failed (the previous keys stay within their stale
/// window).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS fetch failed: {0}")]
    Fetch(String),
    #[error("JWKS answered HTTP {0}")]
    Status(u16),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// Timings of a JWKS source.
#[derive(Debug, Clone, Copy)]
pub struct JwksTimings {
    /// Periodic refresh interval.
    pub refresh: Duration,
    /// Least time between refreshes caused by unknown kids.
    pub cooldown: Duration,
    /// How long an unknown kid is remembered as unknown.
    pub negative_ttl: Duration,
    /// How long keys stay usable after the last successful fetch.
    pub stale_after: Duration,
    /// Time limit of one fetch.
    pub timeout: Duration,
}

/// The refresh bookkeeping: plain state, driven with explicit times.
#[derive(Debug, Default)]
pub struct RefreshState {
    last_attempt: Option<Instant>,
    negative: HashMap<String, Instant>,
}

/// Largest number of remembered unknown kids.
const MAX_NEGATIVE: usize = 10_000;

impl RefreshState {
    /// Whether an unknown `kid` may trigger a fetch at `now`. Records the
    /// kid as unknown when it may not.
    pub fn may_fetch_for(&mut self, kid: &str, now: Instant, t: &JwksTimings) -> bool {
        if let Some(seen) = self.negative.get(kid) {
            if now.saturating_duration_since(*seen) < t.negative_ttl {
                return false;
            }
        }
        if self
            .last_attempt
            .is_some_and(|last| now.saturating_duration_since(last) < t.cooldown)
        {
            self.remember_unknown(kid, now, t);
            return false;
        }
        true
    }

    pub fn attempted(&mut self, now: Instant) {
        self.last_attempt = Some(now);
    }

    /// Remembers `kid` as unknown (bounded).
    pub fn remember_unknown(&mut self, kid: &str, now: Instant, t: &JwksTimings) {
        if self.negative.len() >= MAX_NEGATIVE {
            self.negative
                .retain(|_, seen| now.saturating_duration_since(*seen) < t.negative_ttl);
            if self.negative.len() >= MAX_NEGATIVE {
                return;
            }
        }
        self.negative.insert(kid.to_owned(), now);
    }

    /// A successful fetch makes every remembered unknown kid worth a new look.
    pub fn fetched(&mut self) {
        self.negative.clear();
    }
}

/// A key document a [`JwksCache`] holds: parsed from a JWKS body.
pub trait KeyDocument: Default + Send + Sync + 'static {
    fn parse(body: &[u8]) -> Result<Self, DocumentError>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeyDocument for KeySet {
    fn parse(body: &[u8]) -> Result<Self, DocumentError> {
        parse_jwks(body)
    }

    fn len(&self) -> usize {
        KeySet::len(self)
    }
}

/// The keys of the last good fetch.
#[derive(Debug, Default)]
pub struct Snapshot<S = KeySet> {
    pub keys: S,
    pub fetched_at: Option<Instant>,
}

impl<S> Snapshot<S> {
    /// Whether the keys are within their stale window at `now`.
    pub fn fresh(&self, now: Instant, t: &JwksTimings) -> bool {
        self.fetched_at
            .is_some_and(|at| now.saturating_duration_since(at) <= t.stale_after)
    }
}

impl Snapshot<KeySet> {
    /// The key for `kid`, if the snapshot is not past its stale window.
    pub fn get(&self, kid: &str, now: Instant, t: &JwksTimings) -> Option<VerifyingKey> {
        if self.fresh(now, t) {
            self.keys.get(kid).copied()
        } else {
            None
        }
    }
}

/// Keys from one JWKS URL (a tenant's mandate keys, AgentAuth's approver
/// IdP keys).
pub struct JwksCache<S: KeyDocument = KeySet> {
    /// For logs and the metric label: the tenant id, or what the keys are for.
    pub name: String,
    pub url: String,
    pub timings: JwksTimings,
    snapshot: ArcSwap<Snapshot<S>>,
    state: Mutex<RefreshState>,
    /// Serialises fetches (single flight).
    pub(crate) fetch_lock: tokio::sync::Mutex<()>,
    metrics: Option<JwksMetrics>,
}

#[derive(Clone)]
pub struct JwksMetrics {
    pub refreshes: prometheus::IntCounterVec,
    pub keys: prometheus::IntGaugeVec,
    /// `atb_dependency_up{dependency="jwks", tenant}`: the last fetch.
    pub up: prometheus::IntGaugeVec,
    /// Unix time of the last good fetch, by tenant.
    pub last_success: prometheus::IntGaugeVec,
}

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;

impl<S: KeyDocument> JwksCache<S> {
    pub fn new(
        name: String,
        url: String,
        timings: JwksTimings,
        metrics: Option<JwksMetrics>,
    ) -> Self {
        Self {
            name,
            url,
            timings,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            state: Mutex::new(RefreshState::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// Whether a fetch has ever succeeded and its keys are still usable.
    pub fn has_usable_keys(&self, now: Instant) -> bool {
        let s = self.snapshot.load();
        s.fresh(now, &self.timings) && !s.keys.is_empty()
    }

    /// `find` over the keys (an empty document once they are past their
    /// stale window), refreshing when it finds nothing: single flight, at
    /// most one fetch per cooldown, and `kid` remembered as unknown for the
    /// negative TTL when even a fresh fetch does not have it.
    pub async fn lookup<T>(
        &self,
        client: &awc::Client,
        kid: &str,
        find: impl Fn(&S) -> Option<T>,
    ) -> Option<T> {
        if let Some(k) = self.cached(&find) {
            return Some(k);
        }
        if !self.may_fetch_for(kid) {
            return None;
        }
        let _flight = self.fetch_lock.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(k) = self.cached(&find) {
            return Some(k);
        }
        if !self.may_fetch_for(kid) {
            return None;
        }
        let _ = self.fetch(client).await;
        let found = self.cached(&find);
        if found.is_none() {
            if let Ok(mut s) = self.state.lock() {
                s.remember_unknown(kid, Instant::now(), &self.timings);
            }
        }
        found
    }

    /// `find` over the keys as they are (an empty document once past their
    /// stale window), without fetching.
    pub fn cached<T>(&self, find: &impl Fn(&S) -> Option<T>) -> Option<T> {
        let snap = self.snapshot.load();
        if snap.fresh(Instant::now(), &self.timings) {
            find(&snap.keys)
        } else {
            find(&S::default())
        }
    }

    fn may_fetch_for(&self, kid: &str) -> bool {
        self.state
            .lock()
            .map(|mut s| s.may_fetch_for(kid, Instant::now(), &self.timings))
            .unwrap_or(false)
    }

    /// Fetches now, single flight with every other fetch of this cache
    /// (the issuer said its keys changed: no cooldown applies).
    pub async fn refresh_now(&self, client: &awc::Client) -> Result<usize, JwksError> {
        let _flight = self.fetch_lock.lock().await;
        self.fetch(client).await
    }

    /// Fetches the JWKS once; on success replaces the keys.
    pub async fn fetch(&self, client: &awc::Client) -> Result<usize, JwksError> {
        if let Ok(mut s) = self.state.lock() {
            s.attempted(Instant::now());
        }
        let result = self.fetch_inner(client).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        if let Some(m) = &self.metrics {
            m.refreshes.with_label_values(&[&self.name, label]).inc();
            m.up.with_label_values(&["jwks", &self.name])
                .set(i64::from(result.is_ok()));
        }
        match &result {
            Ok(n) => {
                if let Some(m) = &self.metrics {
                    m.keys.with_label_values(&[&self.name]).set(*n as i64);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    m.last_success
                        .with_label_values(&[&self.name])
                        .set(i64::try_from(now).unwrap_or(i64::MAX));
                }
                if let Ok(mut s) = self.state.lock() {
                    s.fetched();
                }
            }
            Err(e) => {
                tracing::warn!(keys = %self.name, url = %self.url, error = %e, "JWKS refresh failed; keeping the previous keys within their stale window")
            }
        }
        result
    }

    async fn fetch_inner(&self, client: &awc::Client) -> Result<usize, JwksError> {
        let mut response = client
            .get(&self.url)
            .timeout(self.timings.timeout)
            .send()
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        let body = response
            .body()
            .limit(MAX_JWKS_BYTES)
            .await
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        let keys = S::parse(&body)?;
        let n = keys.len();
        self.snapshot.store(Arc::new(Snapshot {
            keys,
            fetched_at: Some(Instant::now()),
        }));
        Ok(n)
    }
}

impl JwksCache<KeySet> {
    /// The mandate key for `kid` (see [`JwksCache::lookup`]).
    pub async fn key(&self, client: &awc::Client, kid: &str) -> Option<VerifyingKey> {
        self.lookup(client, kid, |keys| keys.get(kid).copied())
            .await
    }

    /// Whether the last good fetch listed `kid` as revoked (revocations
    /// hold whatever the snapshot's age).
    pub fn is_revoked(&self, kid: &str) -> bool {
        self.snapshot.load().keys.is_revoked(kid)
    }
}

/// Refreshes one JWKS source forever as its own periodic loop
/// (`atb_actors::periodic`, actor `jwks_refresh`, keyed by the cache's
/// name): at start, then every `timings.refresh`; after a failed fetch,
/// sooner, backing off from 1 s up to the refresh interval — whether or not
/// the keys are still within their stale window, so a JWKS that comes back
/// is read within about as long as it was away (at most one refresh
/// interval) rather than a full interval later. One loop per tenant, so a
/// slow or dead JWKS delays nobody else's.
pub fn start_refresh<S: KeyDocument + 'static>(
    cache: Arc<JwksCache<S>>,
    tls: openssl::ssl::SslConnector,
    metrics: &atb_actors::ActorMetrics,
) -> atb_actors::PeriodicHandle {
    let backoff = std::rc::Rc::new(std::cell::Cell::new(Duration::from_secs(1)));
    let name = atb_actors::PeriodicName {
        actor: "jwks_refresh",
        key: cache.name.clone(),
    };
    atb_actors::periodic::start(name, Duration::ZERO, metrics, move || {
        let cache = cache.clone();
        // A client per fetch, dropped with its connection when the fetch
        // is done: fetches are minutes apart, so a pooled connection would
        // only sit idle on the JWKS server (an idle HTTP/2 connection there
        // held a graceful stop of AgentAuth for its whole shutdown timeout).
        let client = crate::runtime::tls::http_client(&tls, Duration::from_secs(5));
        let backoff = backoff.clone();
        async move {
            let ok = {
                let _flight = cache.fetch_lock.lock().await;
                cache.fetch(&client).await.is_ok()
            };
            let refresh = cache.timings.refresh;
            if ok {
                backoff.set(Duration::from_secs(1));
                refresh
            } else {
                let wait = backoff.get();
                backoff.set((wait * 2).min(refresh));
                wait
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> JwksTimings {
        JwksTimings {
            refresh: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(60),
            stale_after: Duration::from_secs(3600),
            timeout: Duration::from_millis(1500),
        }
    }

    #[test]
    fn the_negative_kid_cache_is_bounded_and_full_it_still_limits_fetches() {
        let timings = t();
        let mut s = RefreshState::default();
        let t0 = Instant::now();
        s.attempted(t0);
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..MAX_NEGATIVE + 500 {
            assert!(!s.may_fetch_for(&format!("bogus-{i}"), t1, &timings));
        }
        assert_eq!(s.negative.len(), MAX_NEGATIVE);
        // A kid not remembered (the cache was full) is still held back by
        // the cooldown: no fetch storm.
        assert!(!s.may_fetch_for("one-more", t1, &timings));
        // Past their TTL, remembered kids make room for new ones.
        let t2 = t1 + timings.negative_ttl;
        s.attempted(t2);
        s.remember_unknown("late", t2, &timings);
        assert_eq!(s.negative.len(), 1);
    }

    #[test]
    fn unknown_kids_fetch_at_most_once_per_cooldown() {
        let timings = t();
        let mut s = RefreshState::default();
        let t0 = Instant::now();
        assert!(s.may_fetch_for("a", t0, &timings));
        s.attempted(t0);
        // A thousand bogus kids inside the cooldown: no fetch.
        for i in 0..1000 {
            assert!(!s.may_fetch_for(&format!("bogus-{i}"), t0 + Duration::from_secs(1), &timings));
        }
        // After the cooldown a new kid may fetch again…
        let t1 = t0 + Duration::from_secs(31);
        assert!(s.may_fetch_for("new", t1, &timings));
        // …but a kid remembered as unknown waits for its negative TTL.
        assert!(!s.may_fetch_for("bogus-1", t1, &timings));
        assert!(s.may_fetch_for("bogus-1", t0 + Duration::from_secs(62), &timings));
    }

    #[test]
    fn a_successful_fetch_forgets_unknown_kids() {
        let timings = t();
        let mut s = RefreshState::default();
        let t0 = Instant::now();
        s.remember_unknown("k", t0, &timings);
        assert!(!s.may_fetch_for("k", t0, &timings));
        s.fetched();
        assert!(s.may_fetch_for("k", t0, &timings));
    }

    #[test]
    fn stale_keys_are_served_only_within_the_window() {
        let timings = t();
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let mut keys = KeySet::default();
        keys.insert("k".into(), key);
        let t0 = Instant::now();
        let snap = Snapshot {
            keys,
            fetched_at: Some(t0),
        };
        assert!(snap
            .get("k", t0 + Duration::from_secs(3600), &timings)
            .is_some());
        assert!(snap
            .get("k", t0 + Duration::from_secs(3601), &timings)
            .is_none());
        assert!(snap.get("other", t0, &timings).is_none());
        assert!(Snapshot::default().get("k", t0, &timings).is_none());
    }
}
