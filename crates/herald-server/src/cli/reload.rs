//! SIGHUP: the node reads its configuration again (the file, the
//! environment and the flags it started with).
//!
//! - A configuration with problems is refused: every problem is logged,
//!   and the running configuration is kept.
//! - `log.level` and the channel namespaces (`[channel]`) change at once:
//!   what a connection was already granted stays, every later command,
//!   publication and subscription is judged by the new rules.
//! - A new `api.key`, or new client token keys (secret, public keys, JWKS,
//!   audience, issuer), become current at once, and the previous ones are
//!   still accepted for `node.key_overlap` (10 minutes by default), so that
//!   API clients and tokens move over without a gap.
//! - Pusher apps (`[[pusher.apps]]`) are replaced: open connections keep
//!   the app they opened with, new ones and API calls use the new apps,
//!   and an API call signed with a replaced secret is accepted during the
//!   same overlap; webhook targets left as they were keep their workers
//!   and queues, workers start for new or changed ones, and those of
//!   removed or changed ones stop, their queued events discarded.
//! - Every other changed setting is named in the log as needing a restart
//!   (the running node keeps its value).

use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{self, Config, Sources};

/// What a reload can change in the running node.
pub(super) struct Live {
    pub(super) log: LogHandle,
    pub(super) node: crate::server::Reloadable,
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
    let mut held = Held::of(&running);
    while hangups.recv().await.is_some() {
        reload(&sources, &mut running, &mut held, &live);
    }
}

/// Without SIGHUP, nothing to listen for.
#[cfg(not(unix))]
pub(super) async fn on_hangup(_: Sources, _: Config, _: Live) {}

/// One reload: refuses a configuration with problems, else applies what
/// can change live and names what cannot.
pub(super) fn reload(sources: &Sources, running: &mut Config, held: &mut Held, live: &Live) {
    let Some(file) = &sources.file else {
        tracing::warn!("SIGHUP: no config file to read again (the node runs on generated secrets)");
        return;
    };
    // Every problem at once, missing secrets with the rest, as at start.
    let fresh = match config::load_for_serving(sources) {
        Err(errors) => return refused(&errors.0),
        Ok(fresh) => fresh,
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
        live.node.set_namespaces(&fresh);
        applied.push("channel namespaces".to_owned());
        running.channel = fresh.channel.clone();
    }
    let overlap = fresh.node.key_overlap;
    if exposed(&fresh.api.key) != exposed(&running.api.key) || fresh.api.insecure != running.api.insecure {
        live.node.rotate_api_key(&fresh, overlap);
        applied.push(format!("api.key (the previous one is accepted for {})", humantime::format_duration(overlap)));
        running.api.key.clone_from(&fresh.api.key);
        running.api.insecure = fresh.api.insecure;
    }
    let fresh_held = Held::of(&fresh);
    if token_keys(&fresh) != token_keys(running) || fresh_held.token_files != held.token_files {
        match live.node.rotate_token_keys(&fresh, overlap) {
            Ok(()) => {
                let kept = humantime::format_duration(overlap);
                applied.push(format!("client token keys (the previous ones are accepted for {kept})"));
                copy_token_keys(&fresh, running);
                held.token_files = fresh_held.token_files;
            }
            Err(problem) => {
                tracing::error!(%problem, "SIGHUP: the new token keys cannot be used; the running ones are kept")
            }
        }
    }
    let apps = |c: &Config| {
        let secrets: Vec<&str> = c.pusher.apps.iter().map(|a| a.secret.expose()).collect();
        format!("{:?} {secrets:?}", c.pusher.apps)
    };
    if apps(&fresh) != apps(running) {
        match live.node.reload_pusher_apps(&fresh, overlap) {
            Ok(()) => {
                let kept = humantime::format_duration(overlap);
                applied.push(format!("pusher apps (replaced secrets still sign API calls for {kept})"));
                running.pusher.apps.clone_from(&fresh.pusher.apps);
            }
            Err(problem) => tracing::warn!(%problem, "SIGHUP: pusher apps not reloaded"),
        }
    }
    let mut restart = needs_restart(running, &fresh);
    if fresh_held.tls_files != held.tls_files {
        restart.push("http.tls_cert / http.tls_key (the files)");
    }
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

/// A secret setting's value, for comparing (never for showing).
fn exposed(secret: &Option<config::Secret>) -> Option<&str> {
    secret.as_ref().map(config::Secret::expose)
}

/// What the files the configuration names held when it was read (a key
/// or certificate rewritten in place, under the same path, is a change
/// only against what was read before).
/// Held as digests: a TLS key's text is not kept around for a compare.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// The token keys' files.
    token_files: [u8; 32],
    /// The TLS certificate's and key's.
    tls_files: [u8; 32],
}

impl Held {
    pub(super) fn of(config: &Config) -> Self {
        let c = &config.client;
        let token_files = held(
            &[&c.token_rsa_public_key, &c.token_ecdsa_public_key, &c.token_ed25519_public_key, &c.token_jwks_ca]
                .map(Option::as_deref),
        );
        let tls_key = config.http.tls_key.as_ref().map(config::Secret::expose);
        let tls_files = held(&[config.http.tls_cert.as_deref(), tls_key]);
        Self { token_files, tls_files }
    }
}

/// A digest of what the settings that hold PEM text or name a file hold
/// now, in order.
fn held(settings: &[Option<&str>]) -> [u8; 32] {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for setting in settings {
        let text = setting.map(|value| config::pem_text("", value).unwrap_or_else(|_| value.as_bytes().to_vec()));
        // Each setting's length first, so no two lists of texts run together.
        let text = text.unwrap_or_default();
        digest.update(u64::try_from(text.len()).unwrap_or(u64::MAX).to_le_bytes());
        digest.update(&text);
    }
    digest.finalize().into()
}

/// The client settings tokens are verified with, secrets included (the
/// files they name: [`Held`]).
fn token_keys(config: &Config) -> String {
    let c = &config.client;
    let secret = exposed(&c.token_hmac_secret);
    format!(
        "{secret:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        c.token_rsa_public_key,
        c.token_ecdsa_public_key,
        c.token_ed25519_public_key,
        c.token_jwks_url,
        c.token_jwks_ca,
        c.token_jwks_refresh,
        c.token_audience,
        c.token_issuer
    )
}

fn copy_token_keys(from: &Config, to: &mut Config) {
    let (from, to) = (&from.client, &mut to.client);
    to.token_hmac_secret.clone_from(&from.token_hmac_secret);
    to.token_rsa_public_key.clone_from(&from.token_rsa_public_key);
    to.token_ecdsa_public_key.clone_from(&from.token_ecdsa_public_key);
    to.token_ed25519_public_key.clone_from(&from.token_ed25519_public_key);
    to.token_jwks_url.clone_from(&from.token_jwks_url);
    to.token_jwks_ca.clone_from(&from.token_jwks_ca);
    to.token_jwks_refresh = from.token_jwks_refresh;
    to.token_audience.clone_from(&from.token_audience);
    to.token_issuer.clone_from(&from.token_issuer);
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
    differ("node.name", format!("{:?}", running.node.name), format!("{:?}", fresh.node.name));
    let secret = |s: &Option<config::Secret>| exposed(s).unwrap_or_default().to_owned();
    differ("api.key", secret(&running.api.key), secret(&fresh.api.key));
    differ(
        "client.token_hmac_secret",
        secret(&running.client.token_hmac_secret),
        secret(&fresh.client.token_hmac_secret),
    );
    differ("http.tls_key", secret(&running.http.tls_key), secret(&fresh.http.tls_key));
    differ("admin", format!("{:?}", running.admin), format!("{:?}", fresh.admin));
    differ("proxies", format!("{:?}", running.proxies), format!("{:?}", fresh.proxies));
    differ("webhooks", format!("{:?}", running.webhooks), format!("{:?}", fresh.webhooks));
    differ("admin.password", secret(&running.admin.password), secret(&fresh.admin.password));
    let app_secrets =
        |c: &Config| c.pusher.apps.iter().map(|a| a.secret.expose().to_owned()).collect::<Vec<_>>().join(",");
    differ("pusher app secrets", app_secrets(running), app_secrets(fresh));
    let webhook_secrets = |c: &Config| c.webhooks.iter().map(|w| w.secret.expose().to_owned()).collect::<Vec<_>>();
    differ("webhooks (secret)", webhook_secrets(running).join(","), webhook_secrets(fresh).join(","));
    let proxy_headers = |c: &Config| {
        let headers = c.proxies.iter().flat_map(|(name, proxy)| {
            proxy.static_headers.iter().map(move |(header, value)| format!("{name}.{header}={}", value.expose()))
        });
        headers.collect::<Vec<_>>().join(",")
    };
    differ("proxies (static_headers)", proxy_headers(running), proxy_headers(fresh));
    changed.dedup();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Config {
        let (config, errors) = config::type_toml(text).expect("TOML");
        assert!(errors.is_empty(), "{errors:?}");
        config
    }

    #[test]
    fn changed_secrets_that_print_alike_are_named_for_a_restart() {
        let with = |secret: &str, header: &str| {
            typed(&format!(
                "[[webhooks]]\nurl = \"http://hooks.example/in\"\nsecret = \"{secret}\"\n\
                 [proxies.app]\nendpoint = \"http://app.example/proxy\"\nstatic_headers = {{ X-Token = \"{header}\" }}\n"
            ))
        };
        let running = with("first-webhook-secret", "first-header");
        assert!(needs_restart(&running, &with("first-webhook-secret", "first-header")).is_empty());
        assert_eq!(needs_restart(&running, &with("second-webhook-secret", "first-header")), ["webhooks (secret)"]);
        assert_eq!(
            needs_restart(&running, &with("first-webhook-secret", "second-header")),
            ["proxies (static_headers)"]
        );
    }

    /// The running configuration's files as they were read at start, and
    /// the fresh one's as read at the reload: the same path, another key.
    #[test]
    fn a_key_file_rotated_in_place_is_told_from_what_was_read_before() {
        let path = std::env::temp_dir().join(format!("herald-reload-key-{}.pem", std::process::id()));
        std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nfirst\n-----END PUBLIC KEY-----\n").unwrap();
        let running = typed(&format!("[client]\ntoken_rsa_public_key = {:?}\n", path.display().to_string()));
        let held = Held::of(&running);
        std::fs::write(&path, "-----BEGIN PUBLIC KEY-----\nsecond\n-----END PUBLIC KEY-----\n").unwrap();
        let fresh = typed(&format!("[client]\ntoken_rsa_public_key = {:?}\n", path.display().to_string()));
        let fresh_held = Held::of(&fresh);
        let _ = std::fs::remove_file(&path);
        assert_eq!(token_keys(&running), token_keys(&fresh), "the settings are alike");
        assert_ne!(held.token_files, fresh_held.token_files, "what the file holds is not");
        assert_eq!(held.tls_files, fresh_held.tls_files);
    }
}
