//! `herald demo`: a node with the demos' config (`<dir>/herald.toml`), the
//! demo pages at `/demos/`, and the simulated feeds two of them show.
//!
//! Secrets the demos' config leaves out (the token secret, the API key, the
//! Pusher app's secret) are generated for the run, unless a `--set` or a
//! `HERALD_*` variable gives them: nodes of a demo cluster must share them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{fail, init_logging, listen, parse_settings, run_to_end, shutdown_signal};
use crate::config::{self, Sources};
use crate::demo::{feeds, site};
use crate::server::Node;

/// The settings a demo node makes up when nobody gave them.
const GENERATED: [&str; 3] = ["client.token_hmac_secret", "api.key", "pusher.apps.0.secret"];

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// The demos' folder: the pages, their herald.toml, and node_modules
    /// (`npm ci --prefix examples/demos` installs it).
    #[arg(long, default_value = "examples/demos")]
    dir: PathBuf,
    /// Address to bind; the sign-in lets anyone be anyone, so keep it local.
    #[arg(long, default_value = "127.0.0.1")]
    address: IpAddr,
    /// Port to bind, 0 for any free port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Do not run the simulated feeds (metrics, vans): for the second node
    /// of a demo cluster, whose first node runs them.
    #[arg(long)]
    no_feeds: bool,
    /// Change any setting, e.g. `--set engine.type=redis`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

pub(super) fn demo(args: DemoArgs) -> ExitCode {
    let file = args.dir.join("herald.toml");
    if !file.exists() {
        return fail(format!("{} not found: run `herald demo` in Herald's checkout, or pass --dir", file.display()), 2);
    }
    if !args.dir.join("node_modules/centrifuge/dist/centrifuge.js").exists() {
        let dir = args.dir.display();
        return fail(format!("the demos' browser libraries are not installed: run `npm ci --prefix {dir}` first"), 2);
    }
    let mut overrides = match parse_settings(&args.set) {
        Ok(overrides) => overrides,
        Err(e) => return fail(e, 2),
    };
    let given = Sources { file: None, env: Sources::process_env(), overrides: overrides.clone() }.overridden_settings();
    let mut generated: Vec<(String, String)> = GENERATED
        .iter()
        .filter(|setting| !given.iter().any(|g| g == *setting))
        .map(|setting| ((*setting).to_owned(), format!("\"{}\"", config::template::random_secret())))
        .collect();
    generated.push(("http.address".to_owned(), format!("\"{}\"", args.address)));
    generated.push(("http.port".to_owned(), args.port.to_string()));
    generated.append(&mut overrides);
    let sources = Sources { file: Some(file), env: Sources::process_env(), overrides: generated };
    let config = match config::load_for_serving(&sources) {
        Ok(config) => config,
        Err(errors) => return fail(errors, 2),
    };
    let _log = init_logging(&config);
    run_to_end(run(config, args.dir, !args.no_feeds))
}

async fn run(config: config::Config, dir: PathBuf, with_feeds: bool) -> anyhow::Result<()> {
    let bind = SocketAddr::new(config.http.address, config.http.port);
    let listener = listen(bind)?;
    let port = listener.local_addr()?.port();
    let secret = config.client.token_hmac_secret.as_ref().map(|s| s.expose().to_owned()).unwrap_or_default();
    let api_key = config.api.key.as_ref().map(|k| k.expose().to_owned()).unwrap_or_default();
    let mut node = Node::build(config).await?;
    node.also_serve(site::router(site::Site::new(dir, &secret)));
    if with_feeds {
        feeds::start(port, api_key);
    }
    let host = if bind.ip().is_unspecified() { "localhost".to_owned() } else { bind.ip().to_string() };
    tracing::info!(
        port,
        "herald demo: open http://{host}:{port}/demos/ (anyone who can reach this port may sign in as anyone)"
    );
    node.run(listener, shutdown_signal()).await
}
