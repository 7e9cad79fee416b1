use std::io::Write;

use super::*;
use crate::config::LogFormat;

fn file(text: &str) -> tempfile_like::TempFile {
    tempfile_like::TempFile::with(text)
}

/// A file in the target's temp dir, removed on drop.
mod tempfile_like {
    use super::Write;
    use std::path::PathBuf;

    pub(super) struct TempFile(pub PathBuf);

    impl TempFile {
        pub(super) fn with(text: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "herald-config-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn sources(file: Option<&tempfile_like::TempFile>, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Sources {
    Sources {
        file: file.map(|f| f.0.clone()),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        overrides: flags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Each of `expected` begins one of `errors`.
fn assert_named(errors: &[String], expected: &[&str]) {
    for problem in expected {
        assert!(errors.iter().any(|e| e.starts_with(problem)), "missing {problem:?} in {errors:#?}");
    }
}

#[test]
fn no_sources_give_the_defaults() {
    let config = load(&Sources::default()).unwrap();
    assert_eq!(config.http.port, 8000);
    assert_eq!(config.client.ping_interval, std::time::Duration::from_secs(25));
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let f = file("[http]\nport = 1000\n[client]\nping_interval = \"30s\"\n[log]\nformat = \"json\"\n");
    let env = [("HERALD_HTTP__PORT", "2000"), ("HERALD_CLIENT__PING_INTERVAL", "20s"), ("HERALD_CONFIG", "x")];
    let config = load(&sources(Some(&f), &env, &[("http.port", "3000")])).unwrap();
    assert_eq!(config.http.port, 3000);
    assert_eq!(config.client.ping_interval, std::time::Duration::from_secs(20));
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn an_element_of_a_list_of_tables_is_set_by_its_index() {
    let f =
        file("[[pusher.apps]]\nid = \"app-1\"\nkey = \"key-1\"\n[[pusher.apps]]\nid = \"app-2\"\nkey = \"key-2\"\nnamespace = \"two\"\n[channel.namespaces.two]\n");
    let env = [("HERALD_PUSHER__APPS__1__SECRET", "from-the-environment")];
    let config = load(&sources(Some(&f), &env, &[("pusher.apps.0.secret", "from-a-flag")])).unwrap();
    let secrets: Vec<&str> = config.pusher.apps.iter().map(|app| app.secret.expose()).collect();
    assert_eq!(secrets, ["from-a-flag", "from-the-environment"]);

    // An index past the list's end adds an element: one without an id or
    // key is named as such (a mistyped index shows where it went).
    let errors = load(&sources(Some(&f), &[], &[("pusher.apps.2.secret", "long-enough-secret")])).unwrap_err();
    for named in ["pusher.apps[2].id", "pusher.apps[2].key"] {
        assert!(errors.0.iter().any(|e| e.starts_with(named)), "{named} in {errors}");
    }
    let errors = load(&sources(Some(&f), &[], &[("pusher.apps.x.secret", "s")])).unwrap_err();
    assert!(errors.0.iter().any(|e| e.contains("`x` is no element number")), "{errors}");
}

#[test]
fn a_list_of_tables_is_built_from_the_environment_alone() {
    let env = [
        ("HERALD_PUSHER__APPS__1__ID", "app-2"),
        ("HERALD_PUSHER__APPS__1__KEY", "key-2"),
        ("HERALD_PUSHER__APPS__1__SECRET", "second-secret"),
        ("HERALD_PUSHER__APPS__1__NAMESPACE", "two"),
        ("HERALD_CHANNEL__NAMESPACES__TWO__PRESENCE", "true"),
        ("HERALD_PUSHER__APPS__0__ID", "app-1"),
        ("HERALD_PUSHER__APPS__0__KEY", "key-1"),
        ("HERALD_PUSHER__APPS__0__SECRET", "first-secret"),
    ];
    let config = load(&sources(None, &env, &[])).expect("two apps from variables, in any order");
    let numbered = [
        ("HERALD_CHANNEL__NAMESPACES__2024__PRESENCE", "true"),
        ("HERALD_CHANNEL__NAMESPACES__CHAT__PRESENCE", "true"),
    ];
    let namespaces = load(&sources(None, &numbered, &[]))
        .expect("a namespace named by a number is a table's key")
        .channel
        .namespaces;
    assert!(namespaces["2024"].presence && namespaces["chat"].presence);
    let apps: Vec<_> =
        config.pusher.apps.iter().map(|app| (app.id.as_str(), app.key.as_str(), app.secret.expose())).collect();
    assert_eq!(apps, [("app-1", "key-1", "first-secret"), ("app-2", "key-2", "second-secret")]);
}

#[test]
fn numeric_secrets_from_the_environment_stay_secrets() {
    let config = load(&sources(None, &[("HERALD_API__KEY", "1234")], &[])).unwrap();
    assert_eq!(config.api.key.unwrap().expose(), "1234");
}

#[test]
fn a_secret_that_toml_would_read_as_another_value_is_kept_as_written() {
    for secret in ["0x1f2e3d", "1_000_000", "+42", "123#rest", "1e9", "1979-05-27", "true#x", "12.50"] {
        let config = load(&sources(None, &[("HERALD_API__KEY", secret)], &[("client.token_hmac_secret", secret)]))
            .unwrap_or_else(|e| panic!("{secret}: {e:?}"));
        assert_eq!(config.api.key.unwrap().expose(), secret);
        assert_eq!(config.client.token_hmac_secret.unwrap().expose(), secret);
    }
    let plain = load(&sources(None, &[("HERALD_HTTP__PORT", "2000"), ("HERALD_CLIENT__ALLOW_ANONYMOUS", "true")], &[]));
    let plain = plain.unwrap();
    assert_eq!((plain.http.port, plain.client.allow_anonymous), (2000, true), "plain numbers and booleans still are");
    let errors = load(&sources(None, &[("HERALD_HTTP__PORT", "0x50")], &[])).unwrap_err();
    assert!(errors.0.iter().any(|e| e.contains("http.port")), "a number written otherwise is named: {errors:?}");
}

#[test]
fn the_starter_config_is_valid_and_complete() {
    let f = file(&crate::config::starter_config());
    let config = load(&sources(Some(&f), &[], &[])).unwrap();
    assert!(config.missing_secrets().is_empty());
    assert!(config.channel.namespaces.contains_key("chat"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = file(
        r#"
[http]
port = "eighty"
colour = "blue"

[client]
ping_interval = "soon"
pong_timeout = "1h"
token_rsa_public_key = "/nonexistent.pem"

[channel.namespaces."bad:name"]
subscribe = "everyone"

[mystery]
x = 1
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    let expect = [
        "http.port",
        "http.colour",
        "client.ping_interval",
        "channel.namespaces.bad:name.subscribe",
        "mystery",
        "client.token_rsa_public_key",
    ];
    for key in expect {
        assert!(errors.iter().any(|e| e.starts_with(key)), "no problem reported for {key}: {errors:#?}");
    }
}

#[test]
fn value_problems_say_what_is_expected_in_plain_words_and_where_in_the_file() {
    let f = file("[http]\nport = -1\n\n[client]\nmax_channels = \"many\"\n");
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    let port = errors.iter().find(|e| e.starts_with("http.port")).expect("the port is named");
    assert!(port.contains("a whole number from 0 to 65535"), "{port}");
    assert!(port.ends_with("line 2)"), "{port}");
    let channels = errors.iter().find(|e| e.starts_with("client.max_channels")).expect("max_channels is named");
    assert!(channels.contains("a whole number, 0 or more") && channels.ends_with("line 5)"), "{channels}");

    // Set by a flag, a bad value has no line in the file to point at.
    let flagged = load(&sources(Some(&f), &[], &[("http.port", "-2")])).unwrap_err().0;
    let port = flagged.iter().find(|e| e.starts_with("http.port")).expect("the port is named");
    assert!(!port.contains("line"), "{port}");
}

#[test]
fn a_jwks_url_that_cannot_work_is_named_with_its_refresh_and_ca() {
    let f = file(
        r#"
[client]
token_jwks_url = "ftp://auth.example.com/jwks.json"
token_jwks_refresh = "0s"
token_jwks_ca = "/nonexistent-ca.pem"
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    for key in ["client.token_jwks_url", "client.token_jwks_refresh", "client.token_jwks_ca"] {
        assert!(errors.iter().any(|e| e.starts_with(key)), "no problem reported for {key}: {errors:#?}");
    }
}

#[test]
fn a_webhook_ca_that_holds_no_usable_certificate_is_named_and_a_good_one_passes() {
    for (value, why) in [
        ("/nonexistent-ca.pem", "cannot read the file it names"),
        ("-----BEGIN CERTIFICATE-----\\nno*pe!\\n-----END CERTIFICATE-----", "not a PEM certificate"),
        ("-----BEGIN CERTIFICATE-----\\nnope\\n-----END CERTIFICATE-----", "not a usable CA certificate"),
        ("-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----", "no certificate in it"),
    ] {
        let f = file(&format!("[pusher]\nwebhook_ca = \"{value}\"\n"));
        let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
        let named = errors.iter().find(|e| e.starts_with("pusher.webhook_ca")).expect("the setting is named");
        assert!(named.contains(why), "{value}: {named}");
    }
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls-ca.pem");
    let f = file(&format!("[pusher]\nwebhook_ca = \"{ca}\"\n"));
    if let Err(errors) = load(&sources(Some(&f), &[], &[])) {
        assert!(!errors.0.iter().any(|e| e.starts_with("pusher.webhook_ca")), "{:#?}", errors.0);
    }
}

#[test]
fn a_certificate_without_its_key_or_that_is_not_pem_is_named() {
    let lone = file("[http]\ntls_cert = \"/nonexistent-cert.pem\"\n");
    let errors = load(&sources(Some(&lone), &[], &[])).unwrap_err().0;
    assert!(errors.iter().any(|e| e.starts_with("http.tls_cert and http.tls_key: set both")), "{errors:#?}");

    let garbage = file("[http]\ntls_cert = \"-----BEGIN CERTIFICATE-----\\nnope\\n-----END CERTIFICATE-----\"\ntls_key = \"/nonexistent-key.pem\"\n");
    let errors = load(&sources(Some(&garbage), &[], &[])).unwrap_err().0;
    assert!(errors.iter().any(|e| e.starts_with("http.tls_")), "{errors:#?}");
}

#[test]
fn every_table_s_syntax_mistake_is_reported_with_its_line() {
    let f = file(
        "[http]\nport = 80 80\n\n[client]\nping_interval = \"25s\n[api]\nkey = \"fine\"\nevents = [\n  [1, 2],\n]\n",
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    assert_eq!(errors.len(), 2, "one per broken table, none for the nested array: {errors:?}");
    assert!(errors[0].contains("is not valid TOML at line 2, column "), "{errors:?}");
    assert!(errors[1].contains("is not valid TOML at line 5, column "), "{errors:?}");

    let twice = file("[http]\nport = 80\n[http]\nport = 81\n");
    let errors = load(&sources(Some(&twice), &[], &[])).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("is not valid TOML at line 3"),
        "a table defined twice is the whole file's error: {errors:?}"
    );
}

#[test]
fn a_missing_file_says_how_to_make_one() {
    let missing = Sources { file: Some("/nonexistent/herald.toml".into()), ..Default::default() };
    let errors = load(&missing).unwrap_err().0;
    assert!(errors[0].contains("herald config init"), "{errors:?}");
}

#[test]
fn missing_secrets_are_named() {
    let config = load(&Sources::default()).unwrap();
    let missing = config.missing_secrets();
    assert_eq!(missing.len(), 2, "{missing:#?}");
    assert!(missing[0].contains("token_hmac_secret"));
    assert!(missing[1].contains("api.key"));
}

#[test]
fn pusher_apps_load_from_tables_and_every_problem_is_listed() {
    let good = file(
        r#"
[pusher]
activity_timeout = "60s"
[[pusher.apps]]
id = "app-1"
key = "key-1"
secret = "a-long-secret"
client_events = true
[[pusher.apps.webhooks]]
url = "http://127.0.0.1:9000/hooks"
events = ["channel_occupied"]
batch = true
"#,
    );
    let config = load(&sources(Some(&good), &[], &[])).expect("a valid Pusher config");
    let app = &config.pusher.apps[0];
    assert_eq!((app.id.as_str(), app.key.as_str(), app.client_events), ("app-1", "key-1", true));
    assert_eq!(app.webhooks[0].events, ["channel_occupied"]);
    assert_eq!(config.pusher.activity_timeout, std::time::Duration::from_secs(60));

    let bad = file(
        r#"
[[pusher.apps]]
id = "app-1"
key = "key 1"
secret = "short"
namespace = "shop"
[[pusher.apps.webhooks]]
url = "ftp://hooks.example/x"
events = ["channel_ocupied"]
[[pusher.apps]]
id = "app-1"
key = "key-2"
secret = "a-long-secret"
namespace = "shop"
"#,
    );
    let errors = load(&sources(Some(&bad), &[], &[])).unwrap_err().0;
    let expected = [
        "pusher.apps[0].key",
        "pusher.apps[0].secret",
        "pusher.apps[0].namespace: add a [channel.namespaces.shop]",
        "pusher.apps[0].webhooks[0].url",
        "pusher.apps[0].webhooks[0].events: unknown event `channel_ocupied`",
        "pusher.apps[1].id: `app-1` is used by another app",
        "pusher.apps[1].namespace: another app already uses namespace `shop`",
    ];
    assert_named(&errors, &expected);
}

#[test]
fn namespace_settings_that_cannot_work_together_are_each_named() {
    let f = file(
        r#"
[channel.namespaces.feed]
write_delay = "5s"
force_recovery = true
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    for expected in
        ["feed: write_delay must be at most 1s", "feed: recovery, positioning and history need history_size"]
    {
        assert!(errors.iter().any(|e| e.contains(expected)), "no {expected:?} in {errors:#?}");
    }
}

#[test]
fn a_namespace_write_delay_is_read_as_a_duration() {
    let f = file("[channel.namespaces.ticks]\nwrite_delay = \"10ms\"\n");
    let config = load(&sources(Some(&f), &[], &[])).unwrap();
    assert_eq!(config.channel.namespaces["ticks"].write_delay, std::time::Duration::from_millis(10));
    assert!(config.channel.without_namespace.write_delay.is_zero(), "off unless asked for");
}

#[test]
fn a_nats_engine_is_read_with_its_defaults_and_its_mistakes_listed_together() {
    let f = file("[engine]\ntype = \"nats\"\naddresses = [\"nats://10.0.0.1:4222\"]\nreplicas = 3\n");
    let config = load(&sources(Some(&f), &[], &[])).unwrap();
    let crate::config::EngineConfig::Nats(nats) = &config.engine else { panic!("{:?}", config.engine) };
    assert_eq!((nats.prefix.as_str(), nats.replicas, nats.storage), ("herald", 3, crate::config::NatsStorage::File));
    assert!(config.validate().is_empty(), "{:?}", config.validate());

    let f = file(
        "[engine]\ntype = \"nats\"\naddresses = [\"http://x:1\"]\nprefix = \"a..b\"\nreplicas = 0\nredis_address = \"nats://y:2\"\n",
    );
    let problems = format!("{:?}", load(&sources(Some(&f), &[], &[])).unwrap_err());
    for expected in ["engine.addresses", "engine.prefix", "engine.replicas", "engine.redis_address"] {
        assert!(problems.contains(expected), "{expected} in:\n{problems}");
    }
}

#[test]
fn sentinel_settings_need_a_master_name_and_no_shards() {
    let f = file("[engine]\ntype = \"redis\"\nsentinels = [\"redis://10.0.0.1:26379\"]\nmaster_name = \"main\"\n");
    let config = load(&sources(Some(&f), &[], &[])).unwrap();
    let crate::config::EngineConfig::Redis(redis) = &config.engine else { panic!("{:?}", config.engine) };
    assert_eq!(redis.master_name.as_deref(), Some("main"));

    let f = file(
        "[engine]\ntype = \"redis\"\nsentinels = [\"sentinel:26379\"]\nshards = [\"redis://a:1\", \"redis://b:1\"]\n",
    );
    let problems = format!("{:?}", load(&sources(Some(&f), &[], &[])).unwrap_err());
    for expected in ["engine.master_name", "drop engine.shards", "`sentinel:26379` is not a Redis URL"] {
        assert!(problems.contains(expected), "{expected} in:\n{problems}");
    }
}

#[test]
fn a_bad_setting_inside_a_list_or_the_engine_hides_none_of_the_others() {
    let f = file(
        r#"
[engine]
type = "redis"
prefix = 5
command_timeout = "0s"

[[pusher.apps]]
id = "app-1"
key = "key-1"
secret = "s"
bogus = 1
[[pusher.apps]]
id = "app-2"
key = "key-2"
secret = "a-long-secret"
namespace = "two"
max_event_size = "big"
[channel.namespaces.two]

[[webhooks]]
url = "http://hooks.example/in"
secret = "sixteen-chars-long"
evnts = ["connected"]
[[webhooks]]
url = "nope"
secret = "short"
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    let expected = [
        "engine.prefix",
        "engine.command_timeout",
        "pusher.apps[0].bogus",
        "pusher.apps[0].secret",
        "pusher.apps[1].max_event_size",
        "webhooks[0].evnts",
        "webhooks[1].url",
        "webhooks[1].secret",
    ];
    assert_named(&errors, &expected);
    let unknown = load(&sources(Some(&file("[engine]\ntype = \"redys\"\n")), &[], &[])).unwrap_err().0;
    assert!(unknown.iter().any(|e| e.starts_with("engine.type: `redys` is not an engine")), "{unknown:#?}");
    let untyped =
        load(&sources(Some(&file("[engine]\naddress = \"redis://127.0.0.1:6379\"\n")), &[], &[])).unwrap_err().0;
    assert_eq!(untyped.len(), 1, "{untyped:#?}");
    assert!(untyped[0].starts_with("engine.type: missing"), "not as settings memory does not know: {untyped:#?}");
}

/// The problem that begins with `setting`, from `errors`.
fn problem<'a>(errors: &'a [String], setting: &str) -> &'a str {
    errors.iter().find(|e| e.starts_with(setting)).unwrap_or_else(|| panic!("no {setting} in {errors:#?}"))
}

#[test]
fn a_list_element_dropped_whole_leaves_the_others_named_as_in_the_file() {
    let f = file(
        r#"[pusher]
apps = [
  "app-0",
  { id = "app-1", key = "key-1", secret = "short", namespace = "one" },
  { id = "app-2", key = "key 2", secret = "a-long-secret", namespace = "two", max_event_size = "big" },
]
[channel.namespaces.one]
[channel.namespaces.two]
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    problem(&errors, "pusher.apps[0]: invalid type: string");
    // Found once the first was dropped, by typing and by validation.
    problem(&errors, "pusher.apps[1].secret");
    problem(&errors, "pusher.apps[2].max_event_size");
    problem(&errors, "pusher.apps[2].key");
    assert_eq!(errors.len(), 4, "{errors:#?}");
}

#[test]
fn an_element_dropped_from_a_list_inside_a_list_element_leaves_the_next_named_as_in_the_file() {
    let f = file(
        r#"[[pusher.apps]]
id = "app-0"
key = "key-0"
secret = "a-long-secret"
namespace = "zero"
webhooks = ["http://hooks.example/in", { url = "ftp://hooks.example/in" }]
[channel.namespaces.zero]
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    problem(&errors, "pusher.apps[0].webhooks[0]: invalid type: string");
    problem(&errors, "pusher.apps[0].webhooks[1].url: `ftp://hooks.example/in` is not");
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn a_problem_inside_a_list_of_tables_names_its_line() {
    let f = file(
        r#"[[pusher.apps]]
id = "app-0"
key = "key-0"
secret = "a-long-secret"
namespace = "zero"
[[pusher.apps.webhooks]]
url = "http://127.0.0.1:9000/hooks"
events = ["channel_ocupied"]
[[pusher.apps]]
id = "app-1"
key = "key 1"
secret = "a-long-secret"
namespace = "one"
max_event_size = "big"
[channel.namespaces.zero]
[channel.namespaces.one]
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    for (setting, line) in
        [("pusher.apps[0].webhooks[0].events", 8), ("pusher.apps[1].key", 11), ("pusher.apps[1].max_event_size", 14)]
    {
        let problem = problem(&errors, setting);
        assert!(problem.ends_with(&format!("line {line})")), "{problem}");
    }
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn a_webhook_dropped_for_a_missing_setting_leaves_the_next_named_and_placed_as_in_the_file() {
    let f = file(
        r#"[[webhooks]]
url = "http://hooks.example/in"
[[webhooks]]
url = "nope"
secret = "sixteen-chars-long"
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    assert!(problem(&errors, "webhooks[0]: missing field `secret`").ends_with("line 1)"), "{errors:#?}");
    assert!(problem(&errors, "webhooks[1].url").ends_with("line 4)"), "{errors:#?}");
    assert_eq!(errors.len(), 2, "{errors:#?}");

    // A list a variable replaces whole is not the file's: no line of it.
    let env = [("HERALD_WEBHOOKS", r#"[{url = "nope", secret = "sixteen-chars-long"}]"#)];
    let errors = load(&sources(Some(&f), &env, &[])).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(problem(&errors, "webhooks[0].url").ends_with("an http(s)://host[:port]/path URL"), "{errors:#?}");
}

#[test]
fn origins_no_browser_sends_and_an_open_api_beside_its_key_are_named() {
    let f = file(
        r#"
[http]
allowed_origins = ["https://app.example.com", "https://*.example.org", "*.example.net", "*", "app.example.com", "https://app.example.com/", "null"]
[api]
key = "a-key-long-enough-for-the-api"
insecure = true
"#,
    );
    let errors = load(&sources(Some(&f), &[], &[])).unwrap_err().0;
    let origins: Vec<_> = errors.iter().filter(|e| e.starts_with("http.allowed_origins")).collect();
    assert_eq!(origins.len(), 2, "the bare host and the one with a path: {errors:#?}");
    assert!(
        origins.iter().any(|e| e.contains("\"app.example.com\"")) && origins.iter().any(|e| e.contains("example.com/"))
    );
    assert!(errors.iter().any(|e| e.starts_with("api.insecure")), "{errors:#?}");
}
