//! The command line: `herald serve`, `herald config init|check`, `herald token`,
//! `herald demo`.
//!
//! This is the binary's edge: errors become messages that say what to do
//! next, and exit codes (0 ok, 1 runtime failure, 2 bad configuration or
//! arguments).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod demo;
mod reload;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use crate::auth::{self, ConnectClaims, SubscribeClaims, TokenMinter};
use crate::config::{self, Config, LogFormat, Secret, Sources};
use crate::server::{Node, CENTRIFUGE_PATH};

/// The file `herald` reads when no `--config` is given and it exists.
const DEFAULT_CONFIG_FILE: &str = "herald.toml";

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "A realtime messaging server: WebSockets, channels, presence, history.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node (the default command). With no config, runs on the memory
    /// engine with secrets generated for this run.
    Serve(ServeArgs),
    /// Write or check a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Mint a connection token (or, with --channel, a subscription token)
    /// signed with the configured HMAC secret, for development and tests.
    Token(TokenArgs),
    /// Run a node with the demo apps (chat, live dashboard, live event,
    /// collaborative editor, fleet tracking) at http://127.0.0.1:8000/demos/.
    Demo(demo::DemoArgs),
}

#[derive(Debug, Default, Args)]
struct ConfigFlags {
    /// The TOML config file (default: ./herald.toml when it exists).
    #[arg(long, short, env = "HERALD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set any setting, e.g. `--set client.ping_interval=10s`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Debug, Default, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// Address to bind (overrides http.address).
    #[arg(long)]
    address: Option<IpAddr>,
    /// Port to bind, 0 for any free port (overrides http.port).
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Write a commented starter config with freshly generated secrets.
    Init {
        /// Where to write it.
        #[arg(default_value = DEFAULT_CONFIG_FILE)]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Report every problem of a config file, as `serve` would run it:
    /// with the HERALD_* variables and `--set` flags over it (exit 2 if
    /// there are any).
    Check {
        /// The file to check (default: $HERALD_CONFIG, else ./herald.toml).
        #[arg(env = "HERALD_CONFIG")]
        path: Option<PathBuf>,
        /// A setting `serve` would be given, e.g. `--set http.port=9000`;
        /// repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigFlags,
    /// The user id (`sub` claim).
    #[arg(long)]
    user: String,
    /// How long the token is valid, e.g. `1h`, `30m`; `0s` for no expiry.
    #[arg(long, default_value = "24h")]
    ttl: humantime::Duration,
    /// Mint a subscription token for this channel instead.
    #[arg(long)]
    channel: Option<String>,
    /// Subscribe the connection to this channel on connect (`channels` claim); repeatable.
    #[arg(long = "subscribe", value_name = "CHANNEL")]
    subscribe: Vec<String>,
    /// JSON for the `info` claim, e.g. '{"name":"Ann"}'.
    #[arg(long)]
    info: Option<String>,
    /// JSON for a connection token's `meta` claim, which only proxies see,
    /// e.g. '{"tenant":"t1"}'.
    #[arg(long)]
    meta: Option<String>,
    /// Sign with this secret instead of the configured client.token_hmac_secret.
    #[arg(long)]
    secret: Option<String>,
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or_else(|| Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Config { command: ConfigCommand::Init { path, force } } => config_init(&path, force),
        Command::Config { command: ConfigCommand::Check { path, set } } => {
            config_check(&path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE)), &set)
        }
        Command::Token(args) => token(args),
        Command::Demo(args) => demo::demo(args),
    }
}

fn sources(flags: &ConfigFlags, extra: Vec<(String, String)>) -> Result<Sources, String> {
    let file = flags
        .config
        .clone()
        .or_else(|| Path::new(DEFAULT_CONFIG_FILE).exists().then(|| PathBuf::from(DEFAULT_CONFIG_FILE)));
    let mut overrides = parse_settings(&flags.set)?;
    overrides.extend(extra);
    Ok(Sources { file, env: Sources::process_env(), overrides })
}

/// `--set KEY=VALUE` flags as `(key, value)` pairs.
fn parse_settings(settings: &[String]) -> Result<Vec<(String, String)>, String> {
    settings
        .iter()
        .map(|setting| {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("--set {setting}: expected KEY=VALUE, e.g. --set http.port=9000"))?;
            Ok((key.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

fn fail(message: impl std::fmt::Display, code: u8) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "herald: {message}");
    ExitCode::from(code)
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut extra = Vec::new();
    if let Some(address) = args.address {
        extra.push(("http.address".to_owned(), format!("\"{address}\"")));
    }
    if let Some(port) = args.port {
        extra.push(("http.port".to_owned(), port.to_string()));
    }
    let sources = match sources(&args.config, extra) {
        Ok(sources) => sources,
        Err(e) => return fail(e, 2),
    };
    // With a file, every problem at once, the secrets it lacks among them;
    // without, the secrets it lacks are made up for this run.
    let loaded = match sources.file {
        Some(_) => config::load_for_serving(&sources),
        None => config::load(&sources),
    };
    let mut config = match loaded {
        Ok(config) => config,
        Err(errors) => return fail(errors, 2),
    };
    let generated = if sources.file.is_none() { fill_development_defaults(&mut config) } else { Vec::new() };
    let missing = config.missing_secrets();
    if !missing.is_empty() {
        return fail(config::ConfigErrors(missing), 2);
    }
    let log = init_logging(&config);
    warn_of_overridden_mistakes(&sources);
    warn_of_a_short_token_secret(&config);

    run_to_end(serve_async(config, sources, generated, log))
}

/// Runs a node's work on a multi-threaded runtime until it ends: exit 0,
/// or 1 with the error logged.
fn run_to_end(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(format!("cannot start the async runtime: {e}"), 1),
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "herald stopped with an error");
            ExitCode::from(1)
        }
    }
}

/// Connections the kernel may hold for a listener before it accepts them.
/// Linux caps it at `net.core.somaxconn` (4,096 by default), so this asks
/// for the most the machine allows, as Go servers do. Tokio's own bind asks
/// for 1,024: in a reconnect storm the queue overflowed, the kernel dropped
/// handshakes, and clients waited out SYN retries of 1, 3 and 7 seconds.
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds a listener with the deepest accept queue the kernel allows.
fn bind_listener(bind: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match bind {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds the node's listener, saying what to do when the port is taken.
fn listen(bind: SocketAddr) -> anyhow::Result<TcpListener> {
    bind_listener(bind).map_err(|e| {
        anyhow::anyhow!("cannot listen on {bind}: {e}; is another process using the port? choose one with --port")
    })
}

/// Logs the file's mistakes that a variable or flag hid by setting the
/// same setting (`serve --port 8001` over a bad `port`): the node runs,
/// but `herald config check` would fail on that file.
fn warn_of_overridden_mistakes(sources: &Sources) {
    let Some(file) = &sources.file else { return };
    let file_only = Sources { file: Some(file.clone()), env: Vec::new(), overrides: Vec::new() };
    let Err(errors) = config::load(&file_only) else { return };
    let overridden = sources.overridden_settings();
    for problem in errors.0 {
        let setting = problem.split_once(": ").map_or(problem.as_str(), |(setting, _)| setting);
        if overridden.iter().any(|o| o == setting) {
            tracing::warn!(file = %file.display(), %problem, "a mistake in the config file, hidden by a variable or flag that sets the same setting; fix the file");
        }
    }
}

/// The least length of an HMAC token secret that one token does not give
/// away to a guess made offline: 32 bytes, SHA-256's own length.
const SHORT_TOKEN_SECRET: usize = 32;

/// Warns of a `client.token_hmac_secret` shorter than
/// [`SHORT_TOKEN_SECRET`]: whoever holds one token can try secrets against
/// it at leisure, and with the secret mint tokens for any user. (A warning,
/// not a refusal: existing deployments keep running while they rotate.)
fn warn_of_a_short_token_secret(config: &Config) {
    let Some(secret) = &config.client.token_hmac_secret else { return };
    let bytes = secret.expose().len();
    if bytes < SHORT_TOKEN_SECRET {
        tracing::warn!(
            bytes,
            "client.token_hmac_secret is short: one token is enough to guess it offline; rotate to {SHORT_TOKEN_SECRET} \
             random bytes or more (`herald config init` writes 64 hex digits; SIGHUP rotates without a gap)"
        );
    }
}

/// Fills in what a config-less development node needs: secrets (returns
/// what it made), and, unless namespaces were given otherwise, the starter
/// config's (so `chat:lobby` works as the README's quickstart shows).
fn fill_development_defaults(config: &mut Config) -> Vec<(&'static str, String)> {
    if config.channel.namespaces.is_empty() {
        if let Some((starter, _)) = config::type_toml(&config::template::starter_config()) {
            config.channel.namespaces = starter.channel.namespaces;
        }
    }
    let mut generated = Vec::new();
    let client = &mut config.client;
    if !client.has_token_key() && !client.allow_anonymous {
        let secret = config::template::random_secret();
        client.token_hmac_secret = Some(Secret::new(secret.clone()));
        generated.push(("client.token_hmac_secret", secret));
    }
    if config.api.key.is_none() && !config.api.insecure {
        let key = config::template::random_secret();
        config.api.key = Some(Secret::new(key.clone()));
        generated.push(("api.key", key));
    }
    generated
}

/// Installs the log; the returned handle changes its filter (SIGHUP).
fn init_logging(config: &Config) -> reload::LogHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Text => registry.with(text).init(),
        LogFormat::Json => registry.with(text.json()).init(),
    }
    handle
}

async fn serve_async(
    config: Config,
    sources: Sources,
    generated: Vec<(&'static str, String)>,
    log: reload::LogHandle,
) -> anyhow::Result<()> {
    let file = sources.file.clone();
    let running = config.clone();
    let bind = SocketAddr::new(config.http.address, config.http.port);
    let listener = listen(bind)?;
    let local = listener.local_addr()?;
    let internal = match config.http.internal_port {
        Some(port) => {
            let bind = SocketAddr::new(config.http.address, port);
            let listener = bind_listener(bind).map_err(|e| {
                anyhow::anyhow!("cannot listen on {bind} (http.internal_port): {e}; is another process using the port?")
            })?;
            tracing::info!(address = %bind, "operators' port: metrics http://{bind}/metrics, health http://{bind}/health");
            Some(listener)
        }
        None => None,
    };
    let engine = match &config.engine {
        config::EngineConfig::Memory(_) => "memory",
        config::EngineConfig::Redis(_) => "redis",
        config::EngineConfig::RedisCluster(_) => "redis_cluster",
        config::EngineConfig::Nats(nats) if nats.redis_address.is_some() => "nats+redis",
        config::EngineConfig::Nats(_) => "nats",
    };
    let (ws, web) = if config.http.tls_cert.is_some() { ("wss", "https") } else { ("ws", "http") };
    let pusher_apps: Vec<(String, String)> = config.pusher.apps.iter().map(|a| (a.id.clone(), a.key.clone())).collect();
    let node = Node::build(config).await?;
    tokio::spawn(reload::on_hangup(sources, running, reload::Live { log, node: node.reloadable() }));
    tracing::info!(
        address = %local,
        engine,
        version = env!("CARGO_PKG_VERSION"),
        "herald listening: WebSocket {ws}://{local}{CENTRIFUGE_PATH}, server API {web}://{local}/api/<method>"
    );
    for app in &pusher_apps {
        tracing::info!(app = %app.0, "pusher app: clients {ws}://{local}/app/{}, HTTP API {web}://{local}/apps/{}", app.1, app.0);
    }
    match file {
        Some(file) => {
            tracing::info!(config = %file.display(), "mint a token: herald token --user 42 --config {}", file.display())
        }
        None if generated.is_empty() => {}
        None => tell_generated(&generated, std::io::IsTerminal::is_terminal(&std::io::stderr())),
    }
    node.run_with_internal(listener, internal, shutdown_signal()).await
}

/// Tells the person who started a config-less node the secrets it made up:
/// on their terminal, never in the log (a log is kept and shipped, and a
/// secret in it is a leak). Off a terminal (a service manager, a pipe)
/// they are not shown at all: such a node needs a config.
fn tell_generated(generated: &[(&'static str, String)], on_terminal: bool) {
    let settings: Vec<&str> = generated.iter().map(|(setting, _)| *setting).collect();
    if !on_terminal {
        tracing::warn!(
            ?settings,
            "no config file: generated for this run only and not shown, as the output is not a terminal; \
             `herald config init` writes a config, or set them (HERALD_CLIENT__TOKEN_HMAC_SECRET, HERALD_API__KEY)"
        );
        return;
    }
    tracing::warn!(
        ?settings,
        "no config file: generated for this run only, shown below on the terminal and not logged; \
         `herald config init` writes a permanent config"
    );
    let _ = std::io::stderr().write_all(generated_for_terminal(generated).as_bytes());
}

/// What a config-less node shows on its terminal: each generated setting,
/// and how to mint a token with the secret.
fn generated_for_terminal(generated: &[(&'static str, String)]) -> String {
    let mut shown = String::new();
    for (setting, value) in generated {
        shown.push_str(&format!("  {setting} = {value}\n"));
    }
    if let Some((_, secret)) = generated.iter().find(|(setting, _)| *setting == "client.token_hmac_secret") {
        shown.push_str(&format!("  mint a token: herald token --user 42 --secret {secret}\n"));
    }
    shown
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

fn config_init(path: &Path, force: bool) -> ExitCode {
    if path.exists() && !force {
        return fail(format!("{} exists; pass --force to overwrite it", path.display()), 2);
    }
    if let Err(e) = std::fs::write(path, config::starter_config()) {
        return fail(format!("cannot write {}: {e}", path.display()), 1);
    }
    let _ = writeln!(
        std::io::stdout(),
        "wrote {} with fresh secrets; run `herald serve` next to it, or `herald serve --config {}`",
        path.display(),
        path.display()
    );
    ExitCode::SUCCESS
}

fn config_check(path: &Path, set: &[String]) -> ExitCode {
    let overrides = match parse_settings(set) {
        Ok(overrides) => overrides,
        Err(e) => return fail(e, 2),
    };
    let sources = Sources { file: Some(path.to_owned()), env: Sources::process_env(), overrides };
    let problems = match config::load_for_serving(&sources) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0,
    };
    if problems.is_empty() {
        let _ = writeln!(std::io::stdout(), "{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        fail(config::ConfigErrors(problems), 2)
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let secret = match args.secret.clone() {
        Some(secret) => secret,
        None => {
            let loaded = sources(&args.config, Vec::new())
                .map_err(|e| e.to_string())
                .and_then(|s| config::load(&s).map_err(|e| e.to_string()));
            match loaded {
                Ok(config) => match config.client.token_hmac_secret {
                    Some(secret) => secret.expose().to_owned(),
                    None => {
                        return fail(
                            "no client.token_hmac_secret configured: pass --secret, or --config with a file from `herald config init`",
                            2,
                        )
                    }
                },
                Err(e) => return fail(e, 2),
            }
        }
    };
    let info = match args.info.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose() {
        Ok(info) => info,
        Err(e) => return fail(format!("--info is not JSON: {e}"), 2),
    };
    let meta = match args.meta.as_deref().map(serde_json::from_str::<serde_json::Value>).transpose() {
        Ok(meta) => meta,
        Err(e) => return fail(format!("--meta is not JSON: {e}"), 2),
    };
    if meta.is_some() && args.channel.is_some() {
        return fail("--meta is a connection token's claim; leave it out with --channel".to_owned(), 2);
    }
    let ttl = args.ttl.as_secs();
    let exp = (ttl > 0).then(|| auth::unix_now().saturating_add(ttl));
    let minter = TokenMinter::hmac(&secret);
    let token = match args.channel {
        Some(channel) => minter.sign(&SubscribeClaims { sub: args.user, channel, exp, info, ..Default::default() }),
        None => {
            let claims =
                ConnectClaims { sub: args.user, exp, info, channels: args.subscribe, meta, ..Default::default() };
            minter.sign(&claims)
        }
    };
    let _ = writeln!(std::io::stdout(), "{token}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_config_less_node_verifying_tokens_by_jwks_gets_no_made_up_secret() {
        let mut config = Config::default();
        config.client.token_jwks_url = Some("https://auth.example/.well-known/jwks.json".into());
        let generated: Vec<_> = fill_development_defaults(&mut config).into_iter().map(|(name, _)| name).collect();
        assert_eq!(generated, ["api.key"], "tokens are verified by the JWKS's keys alone");
        assert!(config.client.token_hmac_secret.is_none());
    }

    /// A reconnect storm reaches the listener faster than the node accepts:
    /// the kernel must hold the connections, not drop them and leave their
    /// clients to retry seconds later. Tokio's own bind holds 1,024.
    #[tokio::test]
    async fn the_listener_holds_a_storm_of_connections_it_has_not_accepted_yet() {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let address = listener.local_addr().unwrap();
        let storm = 1_500;

        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..storm {
            connecting.spawn(tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address)));
        }
        let mut held = Vec::new();
        while let Some(connected) = connecting.join_next().await {
            if let Ok(Ok(stream)) = connected.unwrap() {
                held.push(stream);
            }
        }

        assert_eq!(held.len(), storm, "connections the kernel held before the node accepted any");
        drop(listener);
    }

    #[test]
    fn a_config_less_nodes_terminal_shows_each_secret_and_how_to_mint_a_token() {
        let generated = [("client.token_hmac_secret", "s3cret".to_owned()), ("api.key", "k3y".to_owned())];
        let shown = generated_for_terminal(&generated);
        assert_eq!(
            shown,
            "  client.token_hmac_secret = s3cret\n  api.key = k3y\n  mint a token: herald token --user 42 --secret s3cret\n"
        );
        let key_only = generated_for_terminal(&[("api.key", "k3y".to_owned())]);
        assert!(!key_only.contains("mint"), "no token secret was generated: {key_only}");
    }
}
