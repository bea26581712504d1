//! Load for integration tests: one agent's traffic over keep-alive mTLS
//! connections, each request with a freshly signed single-use mandate,
//! either closed loop (every connection sends its next request as soon as
//! the previous one is answered) or open loop at a fixed rate (latency is
//! measured from the intended send time, so a slow broker cannot hide its
//! queueing by slowing the sender down).
//!
//! Each [`Traffic`] runs on a thread of its own with its own runtime, so
//! one flooding agent does not delay another agent's sends on the client
//! side. Bounded: every run has a duration and every request a timeout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod};

/// One agent's traffic.
#[derive(Clone)]
pub struct Traffic {
    /// Full URL on the broker's agent listener.
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The agent's SPIFFE ID (the mandates' `sub`).
    pub sub: String,
    pub act: String,
    /// The tenant's mandate signing key (PEM).
    pub signing_key: PathBuf,
    pub connections: usize,
    /// Requests per second (open loop), or `None` for closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
}

/// One answered (or failed) request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status; 0 for a transport error or timeout.
    pub status: u16,
    /// The JSON `error` code of a refusal, empty otherwise.
    pub code: String,
    pub retry_after: Option<String>,
    pub latency: Duration,
    /// When it was meant to be sent, from the start of the timed phase.
    pub sent: Duration,
    /// How late the generator began sending it (its own lag, part of
    /// `latency`).
    pub late: Duration,
}

/// Figures over a run's outcomes.
#[derive(Debug)]
pub struct Summary {
    pub requests: usize,
    pub by_status: BTreeMap<(u16, String), usize>,
    pub ok: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The most the generator was late sending one of them.
    pub late: Duration,
    pub seconds: f64,
}

impl Summary {
    pub fn of(outcomes: &[Outcome], seconds: f64) -> Self {
        let mut by_status = BTreeMap::new();
        for o in outcomes {
            *by_status.entry((o.status, o.code.clone())).or_insert(0) += 1;
        }
        let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
        latencies.sort();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            requests: outcomes.len(),
            ok: outcomes.iter().filter(|o| o.status == 200).count(),
            p50: pct(0.50),
            p99: pct(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            late: outcomes.iter().map(|o| o.late).max().unwrap_or_default(),
            by_status,
            seconds,
        }
    }

    /// Figures over the outcomes meant to be sent `from` the start of the
    /// timed phase on (`seconds`: the span they cover).
    pub fn sent_from(outcomes: &[Outcome], from: Duration, seconds: f64) -> Self {
        let later: Vec<Outcome> = outcomes
            .iter()
            .filter(|o| o.sent >= from)
            .cloned()
            .collect();
        Self::of(&later, seconds)
    }

    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.ok as f64 / self.requests as f64
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1} s ({:.0}/s), {} ok ({:.1}%), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, sender late at most {:.1} ms, by status {:?}",
            self.requests,
            self.seconds,
            self.requests as f64 / self.seconds.max(0.001),
            self.ok,
            100.0 * self.success_rate(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.late.as_secs_f64() * 1e3,
            self.by_status
        )
    }
}

/// Runs every traffic at once (each on its own thread) and returns their
/// outcomes in the same order.
///
/// Each thread signs its mandates and opens its connections first; the
/// timed phases start together once all have, so one traffic's signing
/// or connecting does not overlap (and delay) another's timed phase.
pub fn run_all(traffic: Vec<Traffic>) -> Vec<Vec<Outcome>> {
    let ready = Arc::new(Barrier::new(traffic.len()));
    let threads: Vec<_> = traffic
        .into_iter()
        .map(|t| {
            let ready = ready.clone();
            std::thread::spawn(move || {
                let mut ready = Arrival(Some(&ready));
                Prepared::new(&t).run(&mut ready)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|h| h.join().expect("load thread"))
        .collect()
}

/// Most requests a closed-loop connection sends (its mandates are signed
/// before the timed phase).
pub const CLOSED_LOOP_MAX_PER_CONNECTION: usize = 1500;

/// Runs one traffic to completion on the calling thread. Every mandate is
/// signed before the timed phase (in a debug build signing costs about as
/// much as the broker's whole check), so the load is the broker's work.
pub fn run(t: &Traffic) -> Vec<Outcome> {
    Prepared::new(t).run(&mut Arrival(None))
}

/// A traffic's place at the common start: it arrives once, when it is
/// ready, or when it fails before (dropped while unwinding), so a failed
/// traffic never leaves the others waiting.
struct Arrival<'a>(Option<&'a Barrier>);

impl Arrival<'_> {
    fn arrive(&mut self) {
        if let Some(start) = self.0.take() {
            start.wait();
        }
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

/// A traffic with its mandates signed and its TLS settings built.
struct Prepared {
    traffic: Traffic,
    tokens: Vec<String>,
    tls: SslConnector,
}

impl Prepared {
    fn new(t: &Traffic) -> Self {
        let key = atb::poa::keys::load_signing_pem(&t.signing_key).expect("signing key");
        let kid = atb::poa::keys::thumbprint(&key.verifying_key());
        let count = match t.rate {
            Some(rate) => (rate * t.duration.as_secs_f64()).ceil() as usize,
            None => t.connections * CLOSED_LOOP_MAX_PER_CONNECTION,
        };
        let tokens = mint_all(t, &key, &kid, count);
        let mut tls = SslConnector::builder(SslMethod::tls()).unwrap();
        tls.set_ca_file(&t.ca).unwrap();
        tls.set_certificate_file(&t.cert, SslFiletype::PEM).unwrap();
        tls.set_private_key_file(&t.key, SslFiletype::PEM).unwrap();
        tls.set_alpn_protos(b"\x08http/1.1").unwrap();
        Self {
            traffic: t.clone(),
            tokens,
            tls: tls.build(),
        }
    }

    /// Opens the traffic's connections (as an agent's keep-alive
    /// connections are open before it calls), waits for `ready`, then
    /// runs the timed phase.
    fn run(self, ready: &mut Arrival<'_>) -> Vec<Outcome> {
        let Self {
            traffic: t,
            tokens,
            tls,
        } = self;
        actix_web::rt::System::new().block_on(async move {
            let client = awc::Client::builder()
                .connector(
                    awc::Connector::new()
                        .openssl(tls)
                        .limit(t.connections)
                        .timeout(Duration::from_secs(5)),
                )
                .timeout(Duration::from_secs(20))
                .finish();
            let health = health_url(&t.url);
            let opened = futures_util::future::join_all(
                (0..t.connections).map(|_| client.get(&health).send()),
            )
            .await;
            ready.arrive();
            for answer in opened {
                let status = answer.map(|r| r.status().as_u16());
                assert!(
                    matches!(status, Ok(200)),
                    "opening a connection: {status:?}"
                );
            }
            let start = Instant::now();
            let end = start + t.duration;
            let mut tasks = Vec::new();
            match t.rate {
                None => {
                    let per = tokens.len() / t.connections.max(1);
                    for chunk in tokens.chunks(per.max(1)).take(t.connections) {
                        let (client, url, chunk) = (client.clone(), t.url.clone(), chunk.to_vec());
                        tasks.push(actix_web::rt::spawn(async move {
                            let mut out = Vec::new();
                            for token in chunk {
                                if Instant::now() >= end {
                                    break;
                                }
                                out.push(send(&client, &url, &token, start, Instant::now()).await);
                            }
                            out
                        }));
                    }
                }
                Some(rate) => {
                    // One task per request at its intended send time; the
                    // connector's limit bounds the connections, so requests
                    // past it wait on the client side, and that wait counts.
                    let interval = Duration::from_secs_f64(1.0 / rate);
                    for (seq, token) in tokens.into_iter().enumerate() {
                        let intended = start + interval.mul_f64(seq as f64);
                        if intended >= end {
                            break;
                        }
                        actix_web::rt::time::sleep_until(intended.into()).await;
                        let (client, url) = (client.clone(), t.url.clone());
                        tasks.push(actix_web::rt::spawn(async move {
                            vec![send(&client, &url, &token, start, intended).await]
                        }));
                    }
                }
            }
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.expect("load task"));
            }
            all
        })
    }
}

/// `/health` on the listener `url` points at.
fn health_url(url: &str) -> String {
    let path = url
        .match_indices('/')
        .nth(2)
        .map_or(url.len(), |(at, _)| at);
    format!("{}/health", &url[..path])
}

/// Signs `count` single-use mandates on every core.
fn mint_all(t: &Traffic, key: &ed25519_dalek::SigningKey, kid: &str, count: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let now = atb::runtime::clock::unix_now();
    let run_id = unique();
    std::thread::scope(|scope| {
        let parts: Vec<_> = (0..threads)
            .map(|part| {
                scope.spawn(move || {
                    (part..count)
                        .step_by(threads)
                        .map(|i| {
                            let claims = serde_json::json!({
                                "sub": t.sub, "act": t.act, "con": {},
                                "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "load"}},
                                "iat": now, "exp": now + 120,
                                "jti": format!("load-{}-{run_id}-{i}", std::process::id()),
                            });
                            atb::poa::token::sign(&claims, key, kid)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("mint thread"))
            .collect()
    })
}

async fn send(
    client: &awc::Client,
    url: &str,
    token: &str,
    start: Instant,
    intended: Instant,
) -> Outcome {
    let late = intended.elapsed();
    let (status, code, retry_after) = match client.get(url).bearer_auth(token).send().await {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match r.body().limit(1 << 20).await {
                Ok(body) => {
                    let code = if status == 200 {
                        String::new()
                    } else {
                        serde_json::from_slice::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_owned))
                            .unwrap_or_default()
                    };
                    (status, code, retry_after)
                }
                Err(e) => (0, format!("body: {e}"), None),
            }
        }
        Err(e) => (0, format!("send: {e}"), None),
    };
    Outcome {
        status,
        code,
        retry_after,
        latency: intended.elapsed(),
        sent: intended.saturating_duration_since(start),
        late,
    }
}

/// A process-wide sequence number (jtis stay unique across runs).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
