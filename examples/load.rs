//! Load benchmark against a running broker (`atb dev --tenant-rps 1000000`
//! in another terminal, so the demo rate limits do not dominate):
//! N keep-alive mTLS connections, each sending requests with a freshly
//! minted low-risk mandate (single use), for a fixed time; prints
//! throughput and latency percentiles. Bounded in time and count; targets
//! loopback only.
//!
//!   cargo run --release --example load -- [DIR] [CONNECTIONS] [SECONDS] [URL]
//!   (defaults: atb-dev 16 10 https://localhost:8443/api/hello)

use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod};

const AGENT: &str = "spiffe://acme.example/agent/demo";

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().map_or("atb-dev", String::as_str));
    let connections: usize = args
        .get(1)
        .map_or(Ok(16), |s| s.parse())
        .map_err(|e| format!("connections: {e}"))?;
    let seconds: u64 = args
        .get(2)
        .map_or(Ok(10), |s| s.parse())
        .map_err(|e| format!("seconds: {e}"))?;
    let url = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "https://localhost:8443/api/hello".into());
    if !(1..=512).contains(&connections) || !(1..=600).contains(&seconds) {
        return Err("connections must be 1..=512 and seconds 1..=600".into());
    }
    let key = atb::poa::keys::load_signing_pem(&dir.join(atb::dev::SIGNING_KEY))
        .map_err(|e| e.to_string())?;
    let kid = atb::poa::keys::thumbprint(&key.verifying_key());

    let mut tls = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    tls.set_ca_file(dir.join("ca.crt"))
        .map_err(|e| e.to_string())?;
    tls.set_certificate_file(dir.join("acme-agent.crt"), SslFiletype::PEM)
        .map_err(|e| e.to_string())?;
    tls.set_private_key_file(dir.join("acme-agent.key"), SslFiletype::PEM)
        .map_err(|e| e.to_string())?;
    tls.set_alpn_protos(b"\x08http/1.1")
        .map_err(|e| e.to_string())?;
    let tls = tls.build();

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let results = actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().openssl(tls).limit(connections))
            .timeout(Duration::from_secs(10))
            .finish();
        let mut tasks = Vec::new();
        for worker in 0..connections {
            let client = client.clone();
            let url = url.clone();
            let key = key.clone();
            let kid = kid.clone();
            tasks.push(actix_web::rt::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = std::collections::BTreeMap::<u16, u64>::new();
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    seq += 1;
                    let now = atb::runtime::clock::unix_now();
                    let claims = serde_json::json!({
                        "sub": AGENT, "act": "crm.contact.read", "con": {},
                        "leg": {"jurisdiction": "EU", "accountable_party": {"type": "user", "id": "load"}},
                        "iat": now, "exp": now + 60, "jti": format!("load-{worker}-{seq}-{now}"),
                    });
                    let token = atb::poa::token::sign(&claims, &key, &kid);
                    let started = Instant::now();
                    let status = match client.get(&url).bearer_auth(&token).send().await {
                        Ok(mut r) => {
                            let status = r.status().as_u16();
                            if r.body().await.is_ok() { status } else { 0 }
                        }
                        Err(_) => 0,
                    };
                    if status == 200 {
                        latencies.push(started.elapsed());
                    } else {
                        *errors.entry(status).or_default() += 1;
                    }
                }
                (latencies, errors)
            }));
        }
        let mut all = Vec::new();
        let mut errors = std::collections::BTreeMap::<u16, u64>::new();
        for t in tasks {
            if let Ok((l, e)) = t.await {
                all.extend(l);
                for (k, v) in e {
                    *errors.entry(k).or_default() += v;
                }
            }
        }
        (all, errors)
    });
    let (mut latencies, errors) = results;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{} ok, failed by status (0 = transport) {errors:?}, in {seconds} s over {connections} connections: {:.0} req/s; p50 {:?} p90 {:?} p99 {:?} max {:?}",
        latencies.len(),
        latencies.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    Ok(())
}
