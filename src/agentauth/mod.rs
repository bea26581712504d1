//! AgentAuth: agents ask for authority (challenge), humans approve it per
//! risk tier, and the requesting agent receives exactly one signed mandate.
//!
//! * `client_addr` — the request's source address (trusted proxies only);
//! * `challenge` — the challenge model and its transitions (plain logic);
//! * `store` — state behind traits (in-memory here), atomic transitions;
//! * `redis_store` — the same traits on Redis, shared by replicas;
//! * `approver` — OIDC approver tokens (RS256/ES256/EdDSA, JWKS or PEM);
//! * `keyring` — signing keys from a directory, rotation;
//! * `biscuits` — mandates as Biscuits under the tenant's AgentAuth key;
//! * `state`, `http` — the service wiring and its HTTP API;
//! * `observe` — metrics and audit events.

pub mod approver;
pub mod biscuits;
pub mod challenge;
pub mod client_addr;
pub mod config;
pub mod http;
pub mod keyring;
pub mod observe;
pub mod redis_store;
pub mod state;
pub mod store;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::config::Config;
use crate::runtime::graceful_stop;
use crate::runtime::open_connections::OpenConnections;
use crate::runtime::{StartError, Starting};
use observe::AgentAuthEvent;
pub use state::AgentAuthState;

/// Seconds an expired challenge stays readable (status `expired`) before
/// it is swept.
pub(crate) const EXPIRED_GRACE_SECONDS: i64 = 300;

/// Runs AgentAuth until SIGTERM/SIGINT, then drains and returns. Must be
/// called inside an actix `System`.
pub async fn run(config: Config) -> Result<(), StartError> {
    config.agentauth.validate_for_service().starting("config")?;
    // As the broker: the handshake trusts every configured client CA; a
    // certificate counts for a tenant only if it chains to its bundle.
    let tls = crate::runtime::tls::acceptor_with(&config.tls, &config.tenant_client_cas())
        .starting("tls")?;
    let state = AgentAuthState::start(&config)?;
    let a = state.config.clone();
    let workers = if a.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        a.workers
    };
    let data = web::Data::from(state.clone());
    // Both listeners' connections, for closing the idle ones at a stop.
    let open = Arc::new(OpenConnections::default());
    let api = {
        let data = data.clone();
        HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap_fn(graceful_stop::hold_busy)
                .wrap(TracingLogger::<crate::runtime::logging::RequestSpan>::new())
                .configure(http::routes)
        })
        .on_connect({
            let state = state.clone();
            let open = open.clone();
            move |conn, ext| {
                http::on_connect(&state.tenants, conn, ext);
                graceful_stop::list(&open, conn, ext);
            }
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(a.shutdown_grace_seconds)
        .client_request_timeout(Duration::from_secs(5))
        .bind_openssl(a.listen_addr, tls)
        .map_err(|e| {
            format!(
                "cannot listen on agentauth.listen_addr {}: {e}",
                a.listen_addr
            )
        })
        .starting("listener")?
        .run()
    };
    let fault_injection = config.debug.fault_injection;
    if fault_injection {
        tracing::warn!("debug.fault_injection is ON: POST /debug/fault can panic AgentAuth's timer loops; never enable this in production");
    }
    let admin = {
        let data = data.clone();
        HttpServer::new(move || {
            let app = App::new().app_data(data.clone());
            let app = if fault_injection {
                app.route("/debug/fault", web::post().to(http::inject_fault))
            } else {
                app
            };
            app.wrap_fn(graceful_stop::hold_busy)
                .route("/health", web::get().to(http::health))
                .route("/ready", web::get().to(http::ready))
                .route("/.well-known/jwks.json", web::get().to(http::jwks))
                .route(
                    "/metrics",
                    web::get().to(|s: web::Data<AgentAuthState>| async move {
                        HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(s.metrics.render())
                    }),
                )
        })
        .on_connect({
            let open = open.clone();
            move |conn, ext| graceful_stop::list(&open, conn, ext)
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(a.shutdown_grace_seconds)
        .bind(a.admin_addr)
        .map_err(|e| {
            format!(
                "cannot listen on agentauth.admin_addr {}: {e}",
                a.admin_addr
            )
        })
        .starting("listener")?
        .run()
    };
    spawn_background(state.clone());
    spawn_policy_reload(state.clone(), &config);
    tracing::info!(
        listen_addr = %a.listen_addr,
        admin_addr = %a.admin_addr,
        issuer = %a.issuer,
        audience = %a.audience,
        active_kid = state.keys.load().as_ref().map_or("", |k| k.active.kid.as_str()),
        "agentauth started"
    );

    let (api_handle, admin_handle) = (api.handle(), admin.handle());
    let lifecycle = state.clone();
    actix_web::rt::spawn(async move {
        let signal = crate::runtime::shutdown_signal().await;
        lifecycle.start_draining();
        tracing::info!(
            signal,
            "shutdown requested: readiness is now false, draining"
        );
        // In-flight requests get the shutdown timeout; idle connections
        // are closed meanwhile, so they do not hold the stop.
        graceful_stop::stop(&api_handle, &open).await;
        graceful_stop::stop(&admin_handle, &open).await;
    });
    let (x, y) = futures_util::future::join(api, admin).await;
    state
        .audit
        .flush(Duration::from_secs(config.agentauth.shutdown_grace_seconds))
        .await;
    x.starting("agentauth listener")?;
    y.starting("agentauth admin listener")?;
    tracing::info!("agentauth stopped");
    Ok(())
}

/// Starts a timer loop named `actor` under the one supervision mechanism
/// (`atb_actors::periodic`: a panicking tick is counted and the loop goes
/// on).
fn periodic<F, Fut>(state: &AgentAuthState, actor: &'static str, first: Duration, tick: F)
where
    F: FnMut() -> Fut + 'static,
    Fut: std::future::Future<Output = Duration> + 'static,
{
    let name = atb_actors::PeriodicName::single(actor);
    let handle = atb_actors::periodic::start(name, first, &state.metrics.actors, tick);
    state
        .periodic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(handle);
}

/// Re-reads the policy every `policy.reload_seconds` so risk tiers follow
/// the broker's policy without a restart; a bad policy is refused (and
/// audited) and the running one stays.
fn spawn_policy_reload(state: Arc<AgentAuthState>, config: &Config) {
    if config.policy.reload_seconds == 0 {
        return;
    }
    let every = Duration::from_secs(config.policy.reload_seconds);
    let config = Arc::new(config.clone());
    // A policy that stays bad is reported once, not at every interval.
    let last_error: Rc<RefCell<Option<String>>> = Rc::default();
    let s = state.clone();
    periodic(&state, "policy_reload", every, move || {
        let (state, config, last_error) = (s.clone(), config.clone(), last_error.clone());
        async move {
            let (s, c) = (state.clone(), config);
            let outcome = web::block(move || {
                crate::policy::embedded::PolicyBundle::from_config(&c)
                    .and_then(|b| s.tiers.replace(b))
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            let mut event = AgentAuthEvent {
                event: "policy.reloaded",
                ..AgentAuthEvent::default()
            };
            let report = {
                let mut last = last_error.borrow_mut();
                match outcome {
                    Ok(false) => {
                        *last = None;
                        false
                    }
                    Ok(true) => {
                        tracing::info!("risk-tier policy reloaded");
                        event.outcome = "ok";
                        *last = None;
                        true
                    }
                    Err(e) if last.as_ref() == Some(&e) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, "policy reload refused; the running policy stays");
                        event.outcome = "error";
                        event.reason = e.clone();
                        *last = Some(e);
                        true
                    }
                }
            };
            if !report {
                return every;
            }
            state.audit(event).await;
            every
        }
    });
}

/// Tells every configured broker (`agentauth.broker_admin_urls`) to re-read
/// the JWKS now; a broker that cannot be told still refreshes on its own
/// schedule (logged, `atb_agentauth_broker_notifications_total`).
async fn notify_brokers(state: &AgentAuthState) {
    if state.config.broker_admin_urls.is_empty() {
        return;
    }
    let Some(token) = state.admin_token.as_deref() else {
        tracing::warn!("agentauth.broker_admin_urls is set but no admin token is configured: brokers are not told of key changes");
        return;
    };
    let client = crate::runtime::tls::http_client(&state.outbound_tls, Duration::from_secs(2));
    for base in &state.config.broker_admin_urls {
        let url = format!("{}/admin/jwks/refresh", base.trim_end_matches('/'));
        let sent = client
            .post(&url)
            .timeout(Duration::from_secs(5))
            .insert_header(("authorization", format!("Bearer {token}")))
            .send()
            .await;
        let ok = matches!(&sent, Ok(r) if r.status().is_success());
        if !ok {
            let why = match &sent {
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            tracing::warn!(broker = %base, error = %why, "could not tell a broker of the key change; it will see it at its next JWKS refresh");
        }
        state
            .metrics
            .broker_notifications
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }
}

/// Key directory reloads, expired-challenge sweeps, approver JWKS refresh.
fn spawn_background(state: Arc<AgentAuthState>) {
    let every = Duration::from_secs(state.config.key_reload_seconds);
    let seen = Rc::new(RefCell::new(keyring::fingerprint(&state.config.keys_dir)));
    let s = state.clone();
    periodic(&state, "key_reload", every, move || {
        let (s, seen) = (s.clone(), seen.clone());
        async move {
            let now = keyring::fingerprint(&s.config.keys_dir);
            if *seen.borrow() == now {
                return every;
            }
            *seen.borrow_mut() = now;
            let mut event = AgentAuthEvent {
                event: "keys.reloaded",
                ..AgentAuthEvent::default()
            };
            match s.reload_keys() {
                Ok(Some(kid)) => {
                    tracing::info!(active_kid = %kid, "signing keys reloaded");
                    event.outcome = "ok";
                    event.kid = kid;
                    // Brokers learn new and revoked keys now, not at their
                    // next JWKS refresh.
                    notify_brokers(&s).await;
                }
                Ok(None) => return every,
                Err(e) => {
                    tracing::error!(error = %e, "signing key reload failed; keeping the current keys");
                    event.outcome = "error";
                    event.reason = e.to_string();
                }
            }
            s.audit(event).await;
            every
        }
    });
    let sweep_every = Duration::from_secs(15);
    let s = state.clone();
    periodic(&state, "challenge_sweep", sweep_every, move || {
        let s = s.clone();
        async move {
            let now = crate::runtime::clock::unix_now();
            let Ok(swept) = s.challenges.sweep(now, EXPIRED_GRACE_SECONDS).await else {
                return sweep_every;
            };
            match swept.held {
                Some(held) => s.metrics.challenges_open.set(held as i64),
                None => s.metrics.challenges_open.sub(swept.removed as i64),
            }
            for c in swept.expired {
                s.audit(AgentAuthEvent {
                    event: "challenge.expired",
                    outcome: "ok",
                    challenge_id: c.id.clone(),
                    tenant: c.tenant.clone(),
                    agent: c.agent.clone(),
                    action: c.act.clone(),
                    risk_tier: c.tier.as_str().to_owned(),
                    approvals: Some(c.approvals.len()),
                    approvals_needed: Some(c.approvals_needed),
                    ..AgentAuthEvent::default()
                })
                .await;
            }
            sweep_every
        }
    });
    if state.approvers.keys.jwks_url().is_some() {
        let every = Duration::from_secs(state.config.approvers.jwks_refresh_seconds);
        let backoff = Rc::new(Cell::new(Duration::from_secs(1)));
        let s = state.clone();
        periodic(&state, "approver_keys", Duration::ZERO, move || {
            let (s, backoff) = (s.clone(), backoff.clone());
            async move {
                match s.approvers.keys.refresh().await {
                    Ok(n) => {
                        tracing::debug!(keys = n, "approver JWKS refreshed");
                        backoff.set(Duration::from_secs(1));
                        every
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "approver JWKS refresh failed");
                        let wait = backoff.get();
                        backoff.set((wait * 2).min(every));
                        wait
                    }
                }
            }
        });
    }
}
