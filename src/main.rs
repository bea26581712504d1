//! The `atb` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use atb::config::{self, Config};
use atb::dev::{self, DevOptions};

/// mimalloc instead of the system allocator: the policy engine (regorus)
/// allocates and frees small values on every step of an evaluation, and
/// glibc's malloc/free were ≈ 20% of a policy decision's CPU; on mimalloc a
/// high-risk decision takes ≈ 9% less, the slowest (a constraint denial)
/// ≈ 20% less (README, Benchmarks). Declared here,
/// in the binary, not in the library, so a bench or test can install its own
/// (e.g. a counting allocator).
#[cfg(not(feature = "count-allocations"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features count-allocations`: mimalloc, counted
/// (`atb::alloc_count`; the broker exports the totals on `/metrics` and
/// `atb bench` reports them per request).
#[cfg(feature = "count-allocations")]
#[global_allocator]
static ALLOCATOR: atb::alloc_count::Counting<mimalloc::MiMalloc> =
    atb::alloc_count::Counting::new(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(name = "atb", version, about = "ATB — the Agent Trust Broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (mTLS agent listener + admin listener).
    Broker {
        /// TOML configuration file; environment variables override it.
        #[arg(long, short, env = "ATB_CONFIG")]
        config: Option<PathBuf>,
        /// Validate the configuration and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run AgentAuth (challenges, approvals, mandates; HTTPS + admin listener).
    Agentauth {
        /// TOML configuration file; environment variables override it.
        #[arg(long, short, env = "ATB_CONFIG")]
        config: Option<PathBuf>,
        /// Validate the configuration and keys, then exit.
        #[arg(long)]
        check: bool,
    },
    /// AgentAuth signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run everything locally on embedded defaults: dev PKI, demo upstream,
    /// broker and AgentAuth.
    Dev {
        /// Where the dev PKI and admin token live (created if missing).
        #[arg(long, default_value = "atb-dev")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9000")]
        upstream: SocketAddr,
        /// Each demo tenant's request rate limit (burst is twice that;
        /// connectors get half). Raise it for load benchmarks.
        #[arg(long, default_value_t = 100.0)]
        tenant_rps: f64,
        #[arg(long, default_value = "127.0.0.1:8444")]
        agentauth: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8081")]
        agentauth_admin: SocketAddr,
        /// Keep both services' shared state (replay cache, challenges) in
        /// this Redis (`[redis] url`, e.g. redis://127.0.0.1:6379) instead
        /// of in memory, so that more replicas can join.
        #[arg(long, env = "ATB_DEV_REDIS", value_name = "URL")]
        redis: Option<String>,
    },
    /// Revoke mandates (jti) and signing keys (kid) of a tenant for every
    /// broker replica: written to the shared Redis of the configuration's
    /// `[redis]` section; each broker applies it within a second. (Without
    /// Redis, use each broker's `POST /admin/tenants/T/revocations`.)
    Revoke {
        /// TOML configuration file with a `[redis]` section (or REDIS_*).
        #[arg(long, short, env = "ATB_CONFIG")]
        config: Option<PathBuf>,
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// A mandate id to revoke (repeatable).
        #[arg(long = "jti")]
        jtis: Vec<String>,
        /// A signing key id to revoke (repeatable).
        #[arg(long = "kid")]
        kids: Vec<String>,
    },
    /// Load benchmark: the same request mix direct to the demo upstream and
    /// through the broker, closed loop and open loop, in one run (README
    /// "Benchmarks"). Starts its own upstream and broker unless --broker.
    Bench {
        /// Directory for the dev PKI, keys, broker.toml and logs; with
        /// --broker, the directory of the PKI and signing key that broker
        /// trusts (e.g. atb-dev).
        #[arg(long, default_value = "atb-bench")]
        dir: PathBuf,
        /// Closed-loop keep-alive connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Open-loop connections (the pool that carries --rate).
        #[arg(long, default_value_t = 32)]
        open_connections: usize,
        /// Seconds of each timed phase (four phases).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Open-loop rate, requests per second.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Configure this many generated tenants (instead of the two demo
        /// tenants) and spread traffic over --active-tenants of them.
        #[arg(long)]
        tenants: Option<usize>,
        #[arg(long, default_value_t = 50)]
        active_tenants: usize,
        /// Closed-loop mandate budget: max-rps × duration mandates are
        /// minted; raise it if the report shows `starved`.
        #[arg(long, default_value_t = 30000.0)]
        max_rps: f64,
        /// Unmeasured requests per connection before each timed phase.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// A running broker's agent listener (its server certificate must
        /// be valid for localhost); needs --upstream.
        #[arg(long)]
        broker: Option<SocketAddr>,
        /// The running broker's pid (for CPU and RSS).
        #[arg(long)]
        broker_pid: Option<u32>,
        /// The upstream the running broker proxies to (the direct path).
        #[arg(long)]
        upstream: Option<SocketAddr>,
        #[arg(long)]
        upstream_pid: Option<u32>,
        /// Keep the started broker's shared state (replay cache, limits) in
        /// this Redis instead of in memory.
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Soak instead of the four phases: one open-loop phase of
        /// --duration seconds (up to 780) at --rate through the started
        /// broker, then re-send used mandates (each must be refused
        /// poa_replay), stop the broker with SIGTERM and verify its audit
        /// chain; reports the broker's RSS and open fds (README "Soak").
        #[arg(long)]
        soak: bool,
        /// With --soak: seconds between samples of the broker's RSS and fds.
        #[arg(long, default_value_t = 60)]
        sample_interval: u64,
    },
    /// The demo upstream alone (what `atb dev` and `atb bench` start): an
    /// HTTP service answering every request with what it received.
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
    /// Mint a PoA mandate (dev/test helper): an EdDSA JWT signed with KEY.
    Mint {
        /// Ed25519 private key, PKCS#8 PEM.
        #[arg(long)]
        key: PathBuf,
        /// The agent's SPIFFE ID.
        #[arg(long)]
        sub: String,
        /// The action, e.g. crm.contact.read.
        #[arg(long)]
        act: String,
        /// Constraints (JSON object).
        #[arg(long, default_value = "{}")]
        con: String,
        /// Legal basis and approval evidence (JSON object).
        #[arg(
            long,
            default_value = r#"{"jurisdiction":"EU","accountable_party":{"type":"user","id":"dev-owner"}}"#
        )]
        leg: String,
        /// Lifetime in seconds (exp - iat).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        /// Issued-at (Unix seconds); default now.
        #[arg(long, allow_negative_numbers = true)]
        iat: Option<i64>,
        /// Mandate id; default random.
        #[arg(long, allow_hyphen_values = true)]
        jti: Option<String>,
        #[arg(long)]
        iss: Option<String>,
        #[arg(long)]
        aud: Option<String>,
        /// Key id; default the key's RFC 7638 thumbprint (base64url, so it
        /// may start with '-').
        #[arg(long, allow_hyphen_values = true)]
        kid: Option<String>,
    },
    /// Certificate helpers.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Biscuit capabilities: root keys, minting, offline attenuation,
    /// inspection (README "Biscuit capabilities").
    Biscuit {
        #[command(subcommand)]
        command: BiscuitCommand,
    },
}

#[derive(Subcommand)]
enum BiscuitCommand {
    /// A new Ed25519 root key pair. With --out PREFIX: PREFIX.key (private,
    /// 0600) and PREFIX.pub; else both printed (private first).
    Keygen {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Mint a capability for an agent, signed by the tenant's root key.
    Mint {
        /// The tenant id.
        #[arg(long)]
        tenant: String,
        /// The agent's SPIFFE ID.
        #[arg(long)]
        agent: String,
        /// An action it grants (repeatable).
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        /// Lifetime in seconds (at most 900).
        #[arg(long, default_value_t = 300)]
        ttl: i64,
        /// Constraints (JSON object).
        #[arg(long, default_value = "{}")]
        con: String,
        /// Legal basis and approval evidence (JSON object).
        #[arg(long, default_value = "{}")]
        leg: String,
        /// The root private key file (`ed25519-private/<hex>`); default
        /// `atb-dev/<tenant>-biscuit-root.key`.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The root key id the broker selects the public key by.
        #[arg(long, default_value_t = 1)]
        root_key_id: u32,
        /// Unique id (default random).
        #[arg(long)]
        id: Option<String>,
    },
    /// Narrow a capability offline (no key needed): each option adds a check.
    Attenuate {
        /// The token, or `-` to read it from stdin.
        token: String,
        /// Only these actions (repeatable).
        #[arg(long = "action")]
        actions: Vec<String>,
        /// Expires this many seconds from now.
        #[arg(long)]
        ttl: Option<i64>,
        /// The `amount` parameter at most this.
        #[arg(long)]
        max_amount: Option<i64>,
        /// Only through this connector.
        #[arg(long)]
        connector: Option<String>,
        /// Only this call: METHOD PATH (a route template if PATH has `{`);
        /// at most once.
        #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"])]
        route: Option<Vec<String>>,
        /// A raw Datalog check, e.g. 'check if method("GET")' (repeatable).
        #[arg(long = "check")]
        checks: Vec<String>,
    },
    /// Print a capability's blocks, revocation ids, root key id and expiry
    /// as JSON (not verified).
    Inspect {
        /// The token, or `-` to read it from stdin.
        token: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate the key directory: previous <- active <- next <- new key.
    /// Creates the directory's first keys when it is empty. AgentAuth
    /// picks the change up without a restart.
    Rotate {
        /// The key directory (AgentAuth's `agentauth.keys_dir`).
        #[arg(long)]
        dir: PathBuf,
        /// Compromise: revoke every key in the directory (brokers refuse
        /// their mandates after their next JWKS refresh) and start over
        /// with fresh keys.
        #[arg(long)]
        emergency: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chains of an audit log (a file, or `-` for stdin):
    /// every line's own hash, its sequence number and its link to the
    /// previous line of its chain. Exits 0 when every line verifies, 1 at
    /// the first break (a chain that starts again inside the file is a
    /// break too, unless `--accept-linked-restarts` and it links to the
    /// chain's last line), 3 when every complete line verifies but the last
    /// line is torn (no newline, not an intact line: the writer was killed
    /// mid-write; the broker cuts it off at its next start).
    Verify {
        file: PathBuf,
        /// Accept restarts whose first line links to the chain's last
        /// intact line (a writer that died mid-line and restarted).
        #[arg(long)]
        accept_linked_restarts: bool,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Generate a dev CA, a localhost server certificate and agent client
    /// certificates with SPIFFE URI SANs for two tenants.
    Dev {
        #[arg(long, default_value = "atb-dev")]
        out: PathBuf,
        /// Certificate lifetime in days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Replace an existing PKI in --out.
        #[arg(long)]
        force: bool,
        /// Extra agents as NAME=SPIFFE_ID (repeatable).
        #[arg(long = "agent", value_name = "NAME=SPIFFE_ID")]
        agents: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("atb: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Broker { config, check } => {
            let path = config;
            let config = Config::load(path.as_deref(), &config::env::process_env)
                .map_err(|e| e.to_string())?;
            if check {
                atb::runtime::tls::acceptor_with(&config.tls, &config.tenant_client_cas())?;
                atb::admin_token(&config)?;
                println!("configuration is valid");
                return Ok(());
            }
            atb::runtime::logging::init(&config.logging)?;
            Ok(actix_web::rt::System::new().block_on(atb::broker::run(config, path))?)
        }
        Command::Agentauth { config, check } => {
            let config = Config::load(config.as_deref(), &config::env::process_env)
                .map_err(|e| e.to_string())?;
            config
                .agentauth
                .validate_for_service()
                .map_err(|e| e.to_string())?;
            if check {
                atb::runtime::tls::acceptor_with(&config.tls, &config.tenant_client_cas())?;
                atb::agentauth::keyring::KeyRing::load(&config.agentauth.keys_dir)?;
                atb::agentauth::biscuits::BiscuitSigners::load(&config.tenants)?;
                println!("configuration is valid");
                return Ok(());
            }
            atb::runtime::logging::init(&config.logging)?;
            Ok(actix_web::rt::System::new().block_on(atb::agentauth::run(config))?)
        }
        Command::Biscuit { command } => biscuit_command(command),
        Command::Revoke {
            config,
            tenant,
            jtis,
            kids,
        } => {
            let config = Config::load(config.as_deref(), &config::env::process_env)
                .map_err(|e| e.to_string())?;
            Ok(atb::broker::shared_revocations::revoke_command(
                &config, &tenant, &kids, &jtis,
            )?)
        }
        Command::Keys {
            command: KeysCommand::Rotate { dir, emergency },
        } => {
            let r = atb::agentauth::keyring::rotate(&dir, emergency)?;
            println!("active   {}", r.active);
            println!("next     {}", r.next);
            if let Some(p) = r.previous {
                println!("previous {p}");
            }
            for k in r.revoked {
                println!("revoked  {k}");
            }
            Ok(())
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    accept_linked_restarts: accept,
                },
        } => {
            let result = if file.as_os_str() == "-" {
                atb::audit::chain::verify(std::io::stdin().lock(), accept)
            } else {
                std::fs::File::open(&file)
                    .and_then(|f| atb::audit::chain::verify(std::io::BufReader::new(f), accept))
            }
            .map_err(|e| format!("{}: {e}", file.display()))?;
            for (chain, (lines, starts)) in &result.chains {
                println!("chain {chain}: {lines} lines, {starts} start(s)");
            }
            if result.linked_restarts > 0 {
                println!("linked restarts accepted: {}", result.linked_restarts);
            }
            match (result.broken, result.torn_tail) {
                (None, None) => {
                    println!("intact: {} lines", result.lines);
                    Ok(())
                }
                (None, Some((line, bytes))) => {
                    println!("intact: {} complete lines", result.lines);
                    eprintln!(
                        "torn tail: line {line} ({bytes} bytes) has no newline and is not an \
                         intact line (the writer stopped mid-write); every line before it verifies"
                    );
                    std::process::exit(3);
                }
                (Some((line, why)), _) => {
                    Err(format!("audit chain broken at line {line}: {why}").into())
                }
            }
        }
        Command::Dev {
            dir,
            listen,
            admin,
            upstream,
            tenant_rps,
            agentauth,
            agentauth_admin,
            redis,
        } => {
            let opts = DevOptions {
                dir,
                listen_addr: listen,
                admin_addr: admin,
                upstream_addr: upstream,
                tenant_rps,
                agentauth_addr: agentauth,
                agentauth_admin_addr: agentauth_admin,
                redis,
            };
            let pki = dev::prepare(&opts.dir)?;
            let mut config = dev::config(&pki, &opts);
            config
                .apply_env(&config::env::process_env)
                .map_err(|e| e.to_string())?;
            config.validate().map_err(|e| e.to_string())?;
            // What runs, as files: more replicas start from them.
            dev::write_config_files(&config, &opts.dir)?;
            atb::runtime::logging::init(&config.logging)?;
            actix_web::rt::System::new().block_on(async move {
                let demo = atb::dev::demo_upstream::start(opts.upstream_addr).map_err(|e| {
                    format!(
                        "cannot start the demo upstream on {}: {e}",
                        opts.upstream_addr
                    )
                })?;
                let demo: actix_web::dev::Server = demo;
                let demo_handle = demo.handle();
                actix_web::rt::spawn(demo);
                eprintln!("{}", dev::banner(&pki, &opts));
                let result = futures_util::future::try_join(
                    atb::broker::run(config.clone(), None),
                    atb::agentauth::run(config),
                )
                .await
                .map(|_| ());
                demo_handle.stop(true).await;
                Ok(result?)
            })
        }
        Command::Bench {
            dir,
            connections,
            open_connections,
            duration,
            rate,
            tenants,
            active_tenants,
            max_rps,
            warmup,
            json,
            broker,
            broker_pid,
            upstream,
            upstream_pid,
            redis,
            soak,
            sample_interval,
        } => {
            let opts = atb::bench::BenchOptions {
                dir,
                connections,
                open_connections,
                duration: std::time::Duration::from_secs(duration),
                rate,
                tenants,
                active_tenants,
                max_rps,
                warmup,
                broker,
                broker_pid,
                upstream,
                upstream_pid,
                redis,
                soak,
                sample_interval: std::time::Duration::from_secs(sample_interval),
                command_line: std::env::args()
                    .skip(1)
                    .fold("atb".to_owned(), |a, b| a + " " + &b),
            };
            if soak {
                let report = atb::bench::run_soak(&opts)?;
                print!("{}", report.text());
                if let Some(path) = json {
                    let text = serde_json::to_string_pretty(&report)?;
                    std::fs::write(&path, text + "\n")
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                if !report.passed {
                    return Err(format!("the soak failed: {}", report.failures.join("; ")).into());
                }
                return Ok(());
            }
            let report = atb::bench::run(&opts)?;
            print!("{}", report.text());
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            if report.errors_total > 0 {
                return Err(format!(
                    "{} requests failed (see errors by status above)",
                    report.errors_total
                )
                .into());
            }
            Ok(())
        }
        Command::DemoUpstream { listen } => actix_web::rt::System::new().block_on(async move {
            let server = atb::dev::demo_upstream::start(listen)
                .map_err(|e| format!("cannot start the demo upstream on {listen}: {e}"))?;
            eprintln!("demo upstream on http://{listen}");
            server.await?;
            Ok(())
        }),
        Command::Mint {
            key,
            sub,
            act,
            con,
            leg,
            ttl,
            iat,
            jti,
            iss,
            aud,
            kid,
        } => {
            let signing = atb::poa::keys::load_signing_pem(&key)?;
            let object = |name: &str, text: &str| -> Result<serde_json::Value, String> {
                match serde_json::from_str(text) {
                    Ok(v @ serde_json::Value::Object(_)) => Ok(v),
                    _ => Err(format!("--{name} must be a JSON object")),
                }
            };
            let iat = iat.unwrap_or_else(atb::runtime::clock::unix_now);
            let jti = match jti {
                Some(j) => j,
                None => {
                    let mut b = [0u8; 16];
                    openssl::rand::rand_bytes(&mut b).map_err(|e| e.to_string())?;
                    b.iter().map(|x| format!("{x:02x}")).collect()
                }
            };
            let mut claims = serde_json::json!({
                "sub": sub, "act": act, "con": object("con", &con)?, "leg": object("leg", &leg)?,
                "iat": iat, "exp": iat + ttl, "jti": jti,
            });
            if let Some(i) = iss {
                claims["iss"] = i.into();
            }
            if let Some(a) = aud {
                claims["aud"] = a.into();
            }
            let kid = kid.unwrap_or_else(|| atb::poa::keys::thumbprint(&signing.verifying_key()));
            println!("{}", atb::poa::token::sign(&claims, &signing, &kid));
            Ok(())
        }
        Command::Pki {
            command:
                PkiCommand::Dev {
                    out,
                    days,
                    force,
                    agents,
                },
        } => {
            let mut specs = atb::dev::pki::default_agents();
            for a in agents {
                let (name, id) = a
                    .split_once('=')
                    .ok_or_else(|| format!("--agent {a:?}: expected NAME=SPIFFE_ID"))?;
                specs.push(atb::dev::pki::AgentSpec {
                    name: name.into(),
                    spiffe_id: id.into(),
                });
            }
            let pki = atb::dev::pki::generate(&out, &specs, days, force)?;
            println!("dev PKI written to {}", pki.dir.display());
            for s in &specs {
                println!("  {}.crt / {}.key  {}", s.name, s.name, s.spiffe_id);
            }
            Ok(())
        }
    }
}

/// A token argument, or stdin for `-`.
fn token_arg(token: String) -> Result<String, Box<dyn std::error::Error>> {
    if token == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s.trim().to_owned())
    } else {
        Ok(token.trim().to_owned())
    }
}

fn biscuit_command(command: BiscuitCommand) -> Result<(), Box<dyn std::error::Error>> {
    use atb::biscuit::tools;
    match command {
        BiscuitCommand::Keygen { out } => {
            let (private, public) = tools::keygen();
            match out {
                Some(prefix) => {
                    let with = |ext: &str| {
                        let mut p = prefix.clone().into_os_string();
                        p.push(ext);
                        PathBuf::from(p)
                    };
                    atb::runtime::files::write_file(
                        &with(".key"),
                        format!("{private}\n").as_bytes(),
                        true,
                    )?;
                    std::fs::write(with(".pub"), format!("{public}\n"))?;
                    println!("{public}");
                }
                None => println!("{private}\n{public}"),
            }
            Ok(())
        }
        BiscuitCommand::Mint {
            tenant,
            agent,
            actions,
            ttl,
            con,
            leg,
            key,
            root_key_id,
            id,
        } => {
            let key =
                key.unwrap_or_else(|| PathBuf::from(format!("atb-dev/{tenant}-biscuit-root.key")));
            let private = std::fs::read_to_string(&key)
                .map_err(|e| format!("cannot read {}: {e}", key.display()))?;
            let json = |name: &str, text: &str| -> Result<serde_json::Value, String> {
                match serde_json::from_str(text) {
                    Ok(v @ serde_json::Value::Object(_)) => Ok(v),
                    _ => Err(format!("--{name} must be a JSON object")),
                }
            };
            let token = tools::mint(
                &private,
                &tools::Mint {
                    tenant: &tenant,
                    agent: &agent,
                    actions: &actions,
                    issued: atb::runtime::clock::unix_now(),
                    ttl,
                    con: &json("con", &con)?,
                    leg: &json("leg", &leg)?,
                    id: id.as_deref(),
                    root_key_id,
                },
            )?;
            println!("{token}");
            Ok(())
        }
        BiscuitCommand::Attenuate {
            token,
            actions,
            ttl,
            max_amount,
            connector,
            route,
            checks,
        } => {
            let token = token_arg(token)?;
            // `--route` given twice collects four values: refused, never
            // dropped (dropping it would silently widen the attenuation).
            let route = match route.as_deref() {
                None => None,
                Some([m, p]) => Some((m.clone(), p.clone())),
                Some(_) => {
                    return Err(
                        "give --route once (METHOD PATH); attenuate again to add another block"
                            .into(),
                    )
                }
            };
            let narrowed = tools::attenuate(
                &token,
                &tools::Attenuation {
                    actions,
                    ttl,
                    max_amount,
                    connector,
                    route,
                    checks,
                    now: atb::runtime::clock::unix_now(),
                },
            )?;
            println!("{narrowed}");
            Ok(())
        }
        BiscuitCommand::Inspect { token } => {
            let shown = tools::inspect(&token_arg(token)?)?;
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
    }
}
