//! Checks that a typed configuration makes sense as a whole. Every check
//! adds to one list, and each message says what to change.

use std::time::Duration;

use super::keys::pem_text;
use super::{Config, HttpEndpoint, TokenKeys};

/// The longest `write_delay` a namespace may ask for: it is added latency.
const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

/// The shortest admin password accepted.
const ADMIN_PASSWORD_MIN: usize = 12;

impl Config {
    /// Problems with values that typed correctly but cannot work together.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(password) = &self.admin.password {
            if password.expose().chars().count() < ADMIN_PASSWORD_MIN {
                problems.push(format!(
                    "admin.password: at least {ADMIN_PASSWORD_MIN} characters (try `openssl rand -base64 18`)"
                ));
            }
        }
        if self.admin.session_ttl < Duration::from_secs(60) {
            problems.push("admin.session_ttl: at least 1m".to_owned());
        }
        self.check_proxies(&mut problems);
        for (n, hook) in self.webhooks.iter().enumerate() {
            if HttpEndpoint::parse(&hook.url).is_none() {
                problems.push(format!(
                    "webhooks[{n}].url: `{}` is not an http(s)://host[:port]/path URL",
                    super::redacted(&hook.url)
                ));
            }
            if hook.secret.expose().len() < 16 {
                problems.push(format!("webhooks[{n}].secret: at least 16 characters, to sign the requests"));
            }
            for event in &hook.events {
                if !crate::events::EVENT_NAMES.contains(&event.as_str()) {
                    problems.push(format!(
                        "webhooks[{n}].events: {event:?} is not one of {}",
                        crate::events::EVENT_NAMES.join(", ")
                    ));
                }
            }
        }
        if self.api.max_batch == 0 {
            problems.push("api.max_batch: must be at least 1".to_owned());
        }
        let http = &self.http;
        if http.handshake_timeout.is_zero() || http.body_timeout.is_zero() {
            problems.push("http.handshake_timeout and http.body_timeout: must be above zero".to_owned());
        }
        if http.max_body_size < 1024 {
            problems.push("http.max_body_size: must be at least 1024 bytes".to_owned());
        }
        if let Some(name) = &self.node.name {
            if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
                problems.push("node.name: 1 to 64 characters, none of them control characters".to_owned());
            }
        }
        if let Err(problem) = self.tls_acceptor() {
            problems.push(problem);
        }
        for pattern in http.allowed_origins.iter().filter(|pattern| !is_origin_pattern(pattern)) {
            problems.push(format!(
                "http.allowed_origins: {pattern:?} can match no browser's Origin, which is scheme://host[:port] \
                 with no path: write it as \"https://app.example.com\" (or \"https://*.example.com\")"
            ));
        }
        if self.api.insecure && self.api.key.is_some() {
            problems.push(
                "api.insecure: with it the server API takes calls without a key, and api.key would be ignored; \
                 drop one of them"
                    .to_owned(),
            );
        }
        if http.internal_port.is_some_and(|internal| internal == http.port && internal != 0) {
            problems.push(format!(
                "http.internal_port: {} is http.port too; give the operators' port a port of its own",
                http.port
            ));
        }
        let client = &self.client;
        if client.ping_interval < Duration::from_secs(1) {
            problems.push("client.ping_interval: must be at least 1s".to_owned());
        }
        if client.pong_timeout.is_zero() || client.pong_timeout >= client.ping_interval {
            problems.push(format!(
                "client.pong_timeout: must be above zero and below client.ping_interval ({})",
                humantime::format_duration(client.ping_interval)
            ));
        }
        if client.connect_timeout.is_zero() {
            problems.push("client.connect_timeout: must be above zero".to_owned());
        }
        if client.max_message_size < 256 {
            problems.push("client.max_message_size: must be at least 256 bytes".to_owned());
        }
        if client.queue_max_bytes < 1024 {
            problems.push("client.queue_max_bytes: must be at least 1024 bytes".to_owned());
        }
        if client.presence_update_interval.is_zero() || client.presence_ttl <= client.presence_update_interval {
            problems.push(
                "client.presence_ttl: must be longer than client.presence_update_interval (which must be above zero)"
                    .to_owned(),
            );
        }
        for (name, options) in std::iter::once(("without_namespace", &self.channel.without_namespace))
            .chain(self.channel.namespaces.iter().map(|(n, o)| (n.as_str(), o)))
        {
            let wants_history =
                options.force_recovery || options.force_positioning || options.allow_history_for_subscriber;
            if wants_history && options.history_size == 0 {
                problems.push(format!(
                    "channel namespace {name}: recovery, positioning and history need history_size above 0"
                ));
            }
            if options.write_delay > MAX_WRITE_DELAY {
                problems.push(format!(
                    "channel namespace {name}: write_delay must be at most {} (it adds that much latency)",
                    humantime::format_duration(MAX_WRITE_DELAY)
                ));
            }
            if options.command_rate > 0 && options.command_burst == 0 {
                problems.push(format!(
                    "channel namespace {name}: command_burst must be at least 1 when command_rate is set"
                ));
            }
            if options.history_size > 0 && options.history_ttl.is_zero() {
                problems.push(format!("channel namespace {name}: history_ttl must be above zero"));
            }
            if (options.allow_presence_for_subscriber || options.force_push_join_leave)
                && !(options.presence || options.join_leave)
            {
                problems.push(format!(
                    "channel namespace {name}: presence reads need presence = true, join/leave pushes need join_leave = true"
                ));
            }
        }
        let is_url = |a: &str| a.starts_with("redis://") || a.starts_with("rediss://");
        let (addresses, prefix, timeout): (Vec<(&str, &str)>, &str, Duration) = match &self.engine {
            super::EngineConfig::Memory(memory) => {
                if memory.max_streams == 0 {
                    problems.push("engine.max_streams: must be at least 1".to_owned());
                }
                (Vec::new(), "herald", Duration::from_secs(1))
            }
            super::EngineConfig::Redis(redis) => {
                if redis.subscriber_connections == 0 {
                    problems.push("engine.subscriber_connections: must be at least 1".to_owned());
                }
                if !redis.sentinels.is_empty() && !redis.shards.is_empty() {
                    problems.push("engine.sentinels: Sentinel watches one master; drop engine.shards".to_owned());
                }
                if !redis.sentinels.is_empty() && redis.master_name.as_deref().unwrap_or("").is_empty() {
                    problems.push(
                        "engine.master_name: name the master the sentinels monitor (their `sentinel monitor <name>`)"
                            .to_owned(),
                    );
                }
                let mut named = vec![("engine.address", redis.address.as_str())];
                named.extend(redis.shards.iter().map(|a| ("engine.shards", a.as_str())));
                named.extend(redis.sentinels.iter().map(|a| ("engine.sentinels", a.as_str())));
                (named, &redis.prefix, redis.command_timeout)
            }
            super::EngineConfig::Nats(nats) => {
                let named = nats.redis_address.iter().map(|a| ("engine.redis_address", a.as_str())).collect();
                (named, "herald", nats.command_timeout)
            }
            super::EngineConfig::RedisCluster(cluster) => {
                if cluster.addresses.is_empty() {
                    problems.push("engine.addresses: name at least one node of the Redis Cluster".to_owned());
                }
                let named = cluster.addresses.iter().map(|a| ("engine.addresses", a.as_str())).collect();
                (named, &cluster.prefix, cluster.command_timeout)
            }
        };
        if let super::EngineConfig::Nats(nats) = &self.engine {
            problems.extend(nats_problems(nats));
        }
        for (setting, address) in addresses {
            if !is_url(address) {
                problems.push(format!(
                    "{setting}: `{}` is not a Redis URL; write redis://host:port (or rediss:// for TLS)",
                    super::redacted(address)
                ));
            }
        }
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            problems.push("engine.prefix: must be non-empty and without braces".to_owned());
        }
        if timeout.is_zero() {
            problems.push("engine.command_timeout: must be above zero".to_owned());
        }
        let rates = [
            ("client.command_rate", client.command_rate, "client.command_burst", client.command_burst),
            (
                "client.user_command_rate",
                client.user_command_rate,
                "client.user_command_burst",
                client.user_command_burst,
            ),
            ("client.subscribe_rate", client.subscribe_rate, "client.subscribe_burst", client.subscribe_burst),
        ];
        for (rate_name, rate, burst_name, burst) in rates {
            if rate > 0 && burst == 0 {
                problems.push(format!("{burst_name}: must be at least 1 when {rate_name} is set"));
            }
        }
        if client.write_timeout.is_zero() {
            problems.push("client.write_timeout: must be above zero".to_owned());
        }
        if let Err(key_problems) = TokenKeys::load(client) {
            problems.extend(key_problems);
        }
        if client.token_jwks_url.is_some() && client.token_jwks_refresh.is_zero() {
            problems.push("client.token_jwks_refresh: must be above zero".to_owned());
        }
        for name in self.channel.namespaces.keys() {
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !valid {
                problems.push(format!(
                    "channel.namespaces.{name}: a namespace name uses only letters, digits, `_`, `-` and `.`"
                ));
            }
        }
        problems.extend(self.validate_pusher());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level: `{}` is not a valid filter: {e}", self.log.level));
        }
        problems
    }

    fn validate_pusher(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = self.pusher.check_webhook_ca() {
            problems.push(problem);
        }
        let pusher = &self.pusher;
        if pusher.activity_timeout < Duration::from_secs(1) || pusher.pong_timeout.is_zero() {
            problems.push("pusher.activity_timeout and pusher.pong_timeout: must be at least 1s".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (n, app) in pusher.apps.iter().enumerate() {
            let at = format!("pusher.apps[{n}]");
            for (field, value) in [("id", &app.id), ("key", &app.key)] {
                let valid = !value.is_empty()
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !valid {
                    problems.push(format!("{at}.{field}: must be non-empty letters, digits, `_`, `-` or `.`"));
                }
                if !seen.insert((field, value.clone())) {
                    problems.push(format!("{at}.{field}: `{value}` is used by another app"));
                }
            }
            if app.secret.expose().len() < 8 {
                problems.push(format!("{at}.secret: must be at least 8 characters (`herald config init` makes one)"));
            }
            if !seen.insert(("namespace", app.namespace.clone())) {
                problems.push(format!(
                    "{at}.namespace: another app already uses namespace `{}`; give each app its own",
                    app.namespace
                ));
            }
            if !app.namespace.is_empty() && !self.channel.namespaces.contains_key(&app.namespace) {
                problems.push(format!(
                    "{at}.namespace: add a [channel.namespaces.{}] table for this app's channels",
                    app.namespace
                ));
            }
            if app.client_event_rate == 0 || app.max_event_size == 0 || app.max_presence_members == 0 {
                problems.push(format!(
                    "{at}: client_event_rate, max_event_size and max_presence_members must be above zero"
                ));
            }
            for (w, hook) in app.webhooks.iter().enumerate() {
                if HttpEndpoint::parse(&hook.url).is_none() {
                    problems.push(format!(
                        "{at}.webhooks[{w}].url: `{}` is not an http(s)://host[:port]/path URL",
                        super::redacted(&hook.url)
                    ));
                }
                for event in hook.events.iter().filter(|e| !super::WEBHOOK_EVENTS.contains(&e.as_str())) {
                    problems.push(format!(
                        "{at}.webhooks[{w}].events: unknown event `{event}`; expected some of {}",
                        super::WEBHOOK_EVENTS.join(", ")
                    ));
                }
            }
        }
        problems
    }

    /// Secrets a serving node needs and this configuration lacks.
    pub fn missing_secrets(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let client = &self.client;
        if !client.has_token_key() && !client.allow_anonymous {
            problems.push(
                "client: no way to verify connection tokens; set client.token_hmac_secret \
                 (or token_rsa_public_key / token_ecdsa_public_key / token_ed25519_public_key / token_jwks_url), \
                 or allow_anonymous = true"
                    .to_owned(),
            );
        }
        if self.api.key.is_none() && !self.api.insecure {
            problems.push(
                "api.key: the server API needs a key; set api.key (or api.insecure = true \
                 behind a trusted network boundary)"
                    .to_owned(),
            );
        }
        problems
    }
}

impl Config {
    /// The TLS acceptor `http.tls_cert` and `http.tls_key` make, if set;
    /// or what is wrong with them.
    pub(crate) fn tls_acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        match (&self.http.tls_cert, &self.http.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let (cert, key) = (pem_text("http.tls_cert", cert)?, pem_text("http.tls_key", key.expose())?);
                crate::http::tls::acceptor(&cert, &key).map(Some)
            }
            _ => {
                Err("http.tls_cert and http.tls_key: set both (the certificate chain and its key), or neither"
                    .to_owned())
            }
        }
    }
}

/// Headers that frame an HTTP request: the proxy's own request sets them,
/// a client's are never passed on.
const FRAMING_HEADERS: [&str; 11] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// The longest a proxy may be given to answer: a proxied command holds the
/// connection's next commands until it is answered.
const MAX_PROXY_TIMEOUT: Duration = Duration::from_secs(30);

impl Config {
    /// Each `[proxies.<name>]` is usable, and every proxy named elsewhere
    /// is defined.
    fn check_proxies(&self, problems: &mut Vec<String>) {
        for (name, proxy) in &self.proxies {
            let valid_name =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_name {
                problems.push(format!("proxies.{name}: a name of letters, digits, '-', '_' and '.'"));
            }
            if HttpEndpoint::parse(&proxy.endpoint).is_none() {
                problems.push(format!(
                    "proxies.{name}.endpoint: `{}` is not an http(s)://host[:port]/path URL",
                    super::redacted(&proxy.endpoint)
                ));
            }
            if proxy.timeout.is_zero() || proxy.timeout > MAX_PROXY_TIMEOUT {
                problems.push(format!("proxies.{name}.timeout: above zero and at most 30s"));
            }
            for header in &proxy.http_headers {
                if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    problems.push(format!("proxies.{name}.http_headers: {header:?} is not a header name"));
                }
                if FRAMING_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
                    problems.push(format!(
                        "proxies.{name}.http_headers: {header:?} belongs to the request Herald makes and cannot be passed on"
                    ));
                }
            }
            for (header, value) in &proxy.static_headers {
                if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    problems.push(format!("proxies.{name}.static_headers: {header:?} is not a header name"));
                }
                if axum::http::HeaderValue::from_str(value.expose()).is_err() {
                    problems.push(format!("proxies.{name}.static_headers.{header}: not a valid header value"));
                }
            }
        }
        let mut named = vec![
            ("client.connect_proxy".to_owned(), &self.client.connect_proxy),
            ("client.refresh_proxy".to_owned(), &self.client.refresh_proxy),
            ("client.rpc_proxy".to_owned(), &self.client.rpc_proxy),
            ("client.send_proxy".to_owned(), &self.client.send_proxy),
        ];
        let namespaces = std::iter::once(("channel.without_namespace".to_owned(), &self.channel.without_namespace))
            .chain(self.channel.namespaces.iter().map(|(name, o)| (format!("channel.namespaces.{name}"), o)));
        for (path, options) in namespaces {
            named.push((format!("{path}.subscribe_proxy"), &options.subscribe_proxy));
            named.push((format!("{path}.publish_proxy"), &options.publish_proxy));
            named.push((format!("{path}.sub_refresh_proxy"), &options.sub_refresh_proxy));
        }
        for (setting, name) in named {
            if let Some(name) = name {
                if !self.proxies.contains_key(name) {
                    problems.push(format!("{setting}: no [proxies.{name}] is defined"));
                }
            }
        }
        if self.client.refresh_proxy.is_some() && self.client.connect_proxy.is_none() {
            problems.push("client.refresh_proxy: only connections the connect proxy made are refreshed by it; set client.connect_proxy".to_owned());
        }
    }
}

/// What is wrong with a `nats` engine's settings.
fn nats_problems(nats: &super::NatsEngineConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if nats.addresses.is_empty() {
        problems.push("engine.addresses: name at least one NATS server (nats://host:port)".to_owned());
    }
    for address in &nats.addresses {
        if !herald_nats::valid_address(address) {
            problems.push(format!(
                "engine.addresses: `{}` is not a NATS URL; write nats://host:port (or tls:// for TLS)",
                super::redacted(address)
            ));
        }
    }
    let token_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !nats.prefix.split('.').all(token_ok) {
        problems.push(format!(
            "engine.prefix: `{}` is not a subject prefix; use letters, digits, - and _ in dot-separated tokens",
            nats.prefix
        ));
    }
    if nats.replicas == 0 || nats.replicas > 5 {
        problems.push("engine.replicas: must be 1 to 5 (JetStream's limit); 3 on a three-server cluster".to_owned());
    }
    problems
}

/// Whether an `http.allowed_origins` entry can match an Origin: `null`
/// (pages without an origin of their own), `scheme://host[:port]` with no
/// path, or a pattern starting with `*` (`*`, `*.example.com`: any
/// scheme), `*` standing for any run of characters.
fn is_origin_pattern(pattern: &str) -> bool {
    let pattern = pattern.trim();
    if pattern.eq_ignore_ascii_case("null") {
        return true;
    }
    let authority = match pattern.split_once("://") {
        Some((scheme, authority)) => {
            let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-*".contains(c));
            if !scheme_ok {
                return false;
            }
            authority
        }
        // `*` alone, or `*.example.com`: any scheme.
        None if pattern.starts_with('*') => pattern,
        None => return false,
    };
    !authority.is_empty() && !authority.contains(['/', '?', '#', ' '])
}
