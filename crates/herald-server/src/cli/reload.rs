//! SIGHUP: the node reads its configuration again (the file, the
//! environment and the flags it started with).
//!
//! - A configuration with problems is refused: every problem is logged,
//!   and the running configuration is kept.
//! - `log.level` and the channel namespaces (`[channel]`) change at once:
//!   what a connection was already granted stays, every later command,
//!   publication and subscription is judged by the new rules.
//! - Every other changed setting is named in the log as needing a restart
//!   (the running node keeps its value).

use std::sync::Arc;

use herald_core::Hub;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{self, Config, Sources};

/// What a reload can change in the running node.
pub(super) struct Live {
    pub(super) log: LogHandle,
    pub(super) hub: Arc<Hub>,
}

/// Changes the running log filter.
pub(super) type LogHandle = reload::Handle<EnvFilter, Registry>;

/// Reads the configuration again on every SIGHUP, for as long as the node runs.
#[cfg(unix)]
pub(super) async fn on_hangup(sources: Sources, mut running: Config, live: Live) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP; the configuration cannot be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        reload(&sources, &mut running, &live);
    }
}

/// Without SIGHUP, nothing to listen for.
#[cfg(not(unix))]
pub(super) async fn on_hangup(_: Sources, _: Config, _: Live) {}

/// One reload: refuses a configuration with problems, else applies what
/// can change live and names what cannot.
pub(super) fn reload(sources: &Sources, running: &mut Config, live: &Live) {
    let Some(file) = &sources.file else {
        tracing::warn!("SIGHUP: no config file to read again (the node runs on generated secrets)");
        return;
    };
    let fresh = match config::load(sources).map(|config| (config.missing_secrets(), config)) {
        Err(errors) => return refused(&errors.0),
        Ok((missing, _)) if !missing.is_empty() => return refused(&missing),
        Ok((_, fresh)) => fresh,
    };
    let mut applied = Vec::new();
    if fresh.log.level != running.log.level {
        match EnvFilter::try_new(&fresh.log.level)
            .map_err(|e| e.to_string())
            .and_then(|filter| live.log.modify(|current| *current = filter).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                applied.push(format!("log.level = {:?}", fresh.log.level));
                running.log.level.clone_from(&fresh.log.level);
            }
            Err(error) => tracing::error!(%error, "SIGHUP: log.level could not be changed"),
        }
    }
    if format!("{:?}", fresh.channel) != format!("{:?}", running.channel) {
        let serves_pusher = !running.pusher.apps.is_empty();
        live.hub.set_rules(crate::server::channel_rules(&fresh, serves_pusher));
        applied.push("channel namespaces".to_owned());
        running.channel = fresh.channel.clone();
    }
    let restart = needs_restart(running, &fresh);
    tracing::info!(config = %file.display(), ?applied, "SIGHUP: configuration read again");
    if !restart.is_empty() {
        tracing::warn!(
            settings = restart.join(", "),
            "SIGHUP: these changed settings take effect only after a restart; the node keeps the running values"
        );
    }
}

fn refused(problems: &[String]) {
    for problem in problems {
        tracing::error!(%problem, "SIGHUP: configuration refused");
    }
    tracing::error!(
        count = problems.len(),
        "SIGHUP: the running configuration is kept; fix the problems and send SIGHUP again"
    );
}

/// The sections (and secrets, which print as `***`) that differ.
fn needs_restart(running: &Config, fresh: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut differ = |name: &'static str, a: String, b: String| {
        if a != b {
            changed.push(name);
        }
    };
    differ("http", format!("{:?}", running.http), format!("{:?}", fresh.http));
    differ("engine", format!("{:?}", running.engine), format!("{:?}", fresh.engine));
    differ("client", format!("{:?}", running.client), format!("{:?}", fresh.client));
    differ("api", format!("{:?}", running.api), format!("{:?}", fresh.api));
    differ("channel (namespaces)", format!("{:?}", running.channel), format!("{:?}", fresh.channel));
    differ("pusher", format!("{:?}", running.pusher), format!("{:?}", fresh.pusher));
    differ("log.format", format!("{:?}", running.log.format), format!("{:?}", fresh.log.format));
    differ("node", format!("{:?}", running.node), format!("{:?}", fresh.node));
    let secret = |s: &Option<config::Secret>| s.as_ref().map(|s| s.expose().to_owned());
    differ("api.key", secret(&running.api.key).unwrap_or_default(), secret(&fresh.api.key).unwrap_or_default());
    differ(
        "client.token_hmac_secret",
        secret(&running.client.token_hmac_secret).unwrap_or_default(),
        secret(&fresh.client.token_hmac_secret).unwrap_or_default(),
    );
    differ(
        "http.tls_key",
        secret(&running.http.tls_key).unwrap_or_default(),
        secret(&fresh.http.tls_key).unwrap_or_default(),
    );
    let app_secrets =
        |c: &Config| c.pusher.apps.iter().map(|a| a.secret.expose().to_owned()).collect::<Vec<_>>().join(",");
    differ("pusher app secrets", app_secrets(running), app_secrets(fresh));
    changed.dedup();
    changed
}
