//! The broker process: the mTLS agent listener, the admin listener, and
//! their lifecycle (maintenance, drain on SIGTERM).

pub mod admin;
pub mod admission;
pub mod config;
pub mod connection;
pub mod context;
pub mod gateway;
pub mod multipart_method;
pub mod params;
pub mod platform;
pub mod policy_client;
pub mod replay;
pub mod shared_admission;
pub mod shared_revocations;
pub mod shed_log;
pub mod state;
pub mod tenant_in_flight;
pub mod tenants;
pub mod upstream;
pub mod validator;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use crate::config::Config;
use crate::policy::config::PolicyEngine;
use crate::runtime::{StartError, Starting};
pub use state::BrokerState;

/// Runs the broker until SIGTERM/SIGINT, then drains and returns;
/// `config_path` is re-read on a configuration reload (SIGHUP,
/// `POST /admin/config/reload`). Must be called inside an actix `System`.
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), StartError> {
    let admin_token = crate::admin_token(&config).starting("admin")?;
    // The handshake trusts every configured client CA (read at start: a
    // new CA needs a restart); which CA may vouch for which tenant is
    // checked per connection against the tenant set.
    let tls = crate::runtime::tls::acceptor_with(&config.tls, &config.tenant_client_cas())
        .starting("tls")?;
    let state = BrokerState::start(config, config_path.clone(), admin_token)?;
    if let Some(shared) = &state.shared {
        // Single use on Redis remembers from now (see
        // `shared_admission::SharedAdmission::begin_memory`); a round trip
        // per tenant, off the start-up path.
        let admission = shared.admission.clone();
        let tenants: Vec<String> = state.config.tenants.iter().map(|t| t.id.clone()).collect();
        actix_web::rt::spawn(async move { admission.begin_memory(&tenants).await });
    }
    watch_config(state.clone(), config_path);
    let config = state.config.clone();
    let b = &config.broker;
    let workers = if b.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        b.workers
    };
    if config.debug.fault_injection {
        tracing::warn!("debug.fault_injection is ON: POST /debug/fault can crash tenant shards; never enable this in production");
    }
    if config.tenants.is_empty() {
        tracing::warn!("no tenants are configured: every agent request will be refused");
    }
    // Connections never outgrow the open-file limit (see
    // `runtime::open_files`).
    let mut max_connections = b.max_connections_per_worker;
    if let Some(open_files) = crate::runtime::open_files::raise_open_files() {
        let fit = crate::runtime::open_files::connections_that_fit(open_files, workers);
        if fit < max_connections {
            tracing::warn!(
                open_files,
                workers,
                configured = max_connections,
                per_worker = fit,
                "broker.max_connections_per_worker does not fit the open-file limit (two descriptors per connection); lowered, raise `ulimit -n` to keep it"
            );
            max_connections = fit;
        }
    }

    let data = web::Data::from(state.clone());
    // Each worker of both listeners gets its own outbound HTTP client.
    let connect_timeout = Duration::from_secs(config.upstream.connect_timeout_seconds);
    let gateway = {
        let data = data.clone();
        let connections = state.connections.clone();
        let outbound_tls = state.outbound_tls.clone();
        HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::Data::new(gateway::Outbound::new(
                    &outbound_tls,
                    connect_timeout,
                )))
                .wrap_fn(crate::runtime::graceful_stop::hold_busy)
                .wrap(TracingLogger::<crate::runtime::logging::RequestSpan>::new())
                .configure(gateway::routes)
        })
        .on_connect(move |conn, ext| connections.on_connect(conn, ext))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(b.shutdown_grace_seconds)
        .client_request_timeout(Duration::from_secs(b.client_request_timeout_seconds))
        .keep_alive(Duration::from_secs(b.keep_alive_seconds))
        // An answer goes out at once, not after the client's delayed ACK
        // of the previous segment (Nagle): without this, a response
        // written in two parts could wait 40 ms (tests/overload saw an
        // idle tenant's p99 at 13-17 ms; 3-6 ms with it).
        .tcp_nodelay(true)
        .max_connections(max_connections)
        .bind_openssl(b.listen_addr, tls)
        .map_err(|e| format!("cannot listen on broker.listen_addr {}: {e}", b.listen_addr))
        .starting("listener")?
        .run()
    };
    let fault_injection = config.debug.fault_injection;
    let operator_tls = match &config.admin.operator_listen_addr {
        Some(_) if !config.admin.operator_ids.is_empty() => {
            let mut tls = config.tls.clone();
            if let Some(ca) = &config.admin.operator_ca_file {
                tls.client_ca_file = ca.clone();
            }
            Some(crate::runtime::tls::acceptor(&tls).starting("admin.operator_ca_file")?)
        }
        _ => None,
    };
    let admin = {
        let data = data.clone();
        let outbound_tls = state.outbound_tls.clone();
        let connections = state.connections.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::Data::new(gateway::Outbound::new(
                    &outbound_tls,
                    connect_timeout,
                )))
                .wrap_fn(crate::runtime::graceful_stop::hold_busy)
                .wrap_fn(admin::stamp_request_id)
                .wrap(TracingLogger::<crate::runtime::logging::RequestSpan>::new())
                .configure(|c| admin::routes(c, fault_injection))
        })
        .on_connect(move |conn, ext| {
            admin::operator_on_connect(conn, ext);
            crate::runtime::graceful_stop::list(connections.open(), conn, ext);
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(b.shutdown_grace_seconds)
        .bind(b.admin_addr)
        .map_err(|e| format!("cannot listen on broker.admin_addr {}: {e}", b.admin_addr))
        .starting("listener")?;
        // Operators' mTLS listener: the same routes; a verified operator
        // certificate is what lets mutating routes through.
        match (operator_tls, config.admin.operator_listen_addr) {
            (Some(tls), Some(addr)) => server
                .bind_openssl(addr, tls)
                .map_err(|e| format!("cannot listen on admin.operator_listen_addr {addr}: {e}"))
                .starting("listener")?,
            _ => server,
        }
        .run()
    };
    tracing::info!(
        listen_addr = %b.listen_addr,
        admin_addr = %b.admin_addr,
        tenants = config.tenants.len(),
        shards = state.shards.router().shard_count(),
        workers,
        maintenance = state.maintenance(),
        "broker started"
    );

    if let Some(shared) = &state.shared {
        start_revocation_sync(&state, shared.revocations.clone());
    }

    if config.policy.reload_seconds > 0 && config.policy.engine == PolicyEngine::Embedded {
        let reloading = state.clone();
        let every = Duration::from_secs(config.policy.reload_seconds);
        state.start_periodic("policy_reload", every, move || {
            let state = reloading.clone();
            async move {
                // The outcome is logged and counted by reload_policy.
                let _ = web::block(move || state.reload_policy()).await;
                every
            }
        });
    }

    let gateway_handle = gateway.handle();
    let admin_handle = admin.handle();
    let drain_delay = Duration::from_secs(b.drain_delay_seconds);
    let lifecycle = state.clone();
    actix_web::rt::spawn(async move {
        let signal = crate::runtime::shutdown_signal().await;
        lifecycle.start_draining();
        tracing::info!(
            signal,
            drain_delay_s = drain_delay.as_secs(),
            "shutdown requested: readiness is now false, draining"
        );
        actix_web::rt::time::sleep(drain_delay).await;
        // The agent listener closes, in-flight requests get the grace,
        // idle connections are closed meanwhile so they do not hold the
        // stop; then the admin listener (probes answer until then).
        let open = lifecycle.connections.open();
        crate::runtime::graceful_stop::stop(&gateway_handle, open).await;
        crate::runtime::graceful_stop::stop(&admin_handle, open).await;
    });

    let (g, a) = futures_util::future::join(gateway, admin).await;
    state.settle_in_flight(Duration::from_secs(2)).await;
    state
        .audit
        .flush(Duration::from_secs(b.shutdown_grace_seconds))
        .await;
    state.stop_periodic();
    g.starting("agent listener")?;
    a.starting("admin listener")?;
    tracing::info!("broker stopped");
    Ok(())
}

/// Reloads the configuration off the I/O threads, then starts the JWKS
/// loops of tenants it added on the calling runtime.
pub async fn reload_config(
    state: std::sync::Arc<BrokerState>,
) -> Result<state::ReloadOutcome, state::ReloadError> {
    let reloading = state.clone();
    let outcome = web::block(move || reloading.reload_config())
        .await
        .map_err(|_| state::ReloadError::NotRun)?;
    state.start_pending_jwks();
    outcome
}

/// Reloads on SIGHUP, and whenever the configuration file changes (checked
/// every `broker.config_watch_seconds`).
fn watch_config(state: std::sync::Arc<BrokerState>, path: Option<std::path::PathBuf>) {
    let Some(path) = path else {
        return;
    };
    let hup = state.clone();
    actix_web::rt::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::error!(
                "cannot install the SIGHUP handler; reload with POST /admin/config/reload"
            );
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // The outcome is logged and counted by reload_config; a panic
            // is caught and counted, and the next SIGHUP still reloads.
            let reload = std::panic::AssertUnwindSafe(reload_config(hup.clone()));
            if futures_util::FutureExt::catch_unwind(reload).await.is_err() {
                hup.metrics
                    .actors
                    .restarts
                    .with_label_values(&["config_signal", "-"])
                    .inc();
                tracing::error!("the SIGHUP reload panicked; the running configuration stays");
            }
        }
    });
    let every = Duration::from_secs(state.config.broker.config_watch_seconds);
    if every.is_zero() {
        return;
    }
    // The file itself and the client CA bundles its tenants read.
    let fingerprint = |p: &std::path::Path, state: &BrokerState| {
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        let bundles = tenants::issuer_files(&state.tenants.load().config);
        std::iter::once(stamp(p))
            .chain(bundles.iter().map(|b| stamp(b)))
            .collect::<Vec<_>>()
    };
    let seen = std::rc::Rc::new(std::cell::RefCell::new(fingerprint(&path, &state)));
    let watcher = state.clone();
    state.start_periodic("config_watch", every, move || {
        let (state, seen, path) = (watcher.clone(), seen.clone(), path.clone());
        async move {
            let now = fingerprint(&path, &state);
            let changed = *seen.borrow() != now;
            if changed {
                *seen.borrow_mut() = now;
                let _ = reload_config(state).await;
            }
            every
        }
    });
}

/// Merges the revocations every replica stored in Redis into this
/// replica's sets (`shared_revocations` says when a read is due), so a
/// revocation made anywhere refuses its mandates here within a second.
fn start_revocation_sync(
    state: &Arc<BrokerState>,
    revocations: Arc<crate::broker::shared_revocations::SharedRevocations>,
) {
    use crate::broker::shared_revocations::{SyncState, SYNC_EVERY};
    let syncing = state.clone();
    let seen = std::rc::Rc::new(std::cell::RefCell::new(SyncState::default()));
    state.start_periodic("revocation_sync", Duration::ZERO, move || {
        let (state, revocations, seen) = (syncing.clone(), revocations.clone(), seen.clone());
        async move {
            let tenants = state.tenants.load_full();
            let identity = Arc::as_ptr(&tenants) as usize;
            let version = match revocations.version().await {
                Ok(v) => v,
                Err(_) => {
                    seen.borrow_mut().failed();
                    return SYNC_EVERY;
                }
            };
            if !seen.borrow_mut().must_read(version, identity, SYNC_EVERY) {
                return SYNC_EVERY;
            }
            let ids: Vec<String> = tenants.config.tenants.iter().map(|t| t.id.clone()).collect();
            match revocations.read(&ids).await {
                Ok(sets) => {
                    for (id, (kids, jtis)) in ids.iter().zip(sets) {
                        let Some(auth) = tenants.auth.get(id) else {
                            continue;
                        };
                        let kids: Vec<String> =
                            kids.into_iter().filter(|k| !auth.kid_listed(k)).collect();
                        let jtis: Vec<String> =
                            jtis.into_iter().filter(|j| !auth.jti_revoked(j)).collect();
                        if kids.is_empty() && jtis.is_empty() {
                            continue;
                        }
                        match auth.revoke(&kids, &jtis) {
                            Ok(()) => tracing::info!(
                                tenant = %id,
                                kids = kids.len(),
                                jtis = jtis.len(),
                                "revocations from other replicas applied"
                            ),
                            Err(e) => tracing::warn!(tenant = %id, error = %e, "shared revocations not applied"),
                        }
                    }
                    seen.borrow_mut().read_done(version, identity);
                }
                Err(_) => seen.borrow_mut().failed(),
            }
            SYNC_EVERY
        }
    });
}
