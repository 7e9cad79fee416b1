//! Loading: file, then environment, then flags; then every problem at once.
//!
//! Layers are merged as TOML tables before anything is typed, so an
//! environment variable or flag can set any setting the file can:
//! `HERALD_CLIENT__PING_INTERVAL=10s` and `--set client.ping_interval=10s`
//! both set `[client] ping_interval`. Values are read as TOML (`9000`,
//! `true`, `["a"]`) and fall back to plain strings (`10s`).
//!
//! Each top-level section is typed separately, and a bad key is reported and
//! set aside before the section is typed again, so one run lists every
//! problem instead of stopping at the first.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use super::{Config, EngineConfig};
use paths::{line_of, remove_path, shown, Dropped, Step};

/// The prefix of environment variables that configure Herald.
pub(super) const ENV_PREFIX: &str = "HERALD_";
/// Names the config file; not a setting itself.
pub(super) const ENV_CONFIG_FILE: &str = "HERALD_CONFIG";

/// Where configuration comes from, lowest precedence first.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// Environment variables, as `(name, value)`; only `HERALD_*` are used.
    pub env: Vec<(String, String)>,
    /// Flags, as `(dotted.path, value)`.
    pub overrides: Vec<(String, String)>,
}

impl Sources {
    /// The process environment's `HERALD_*` variables.
    pub fn process_env() -> Vec<(String, String)> {
        std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect()
    }

    /// The settings (`http.port`) a variable or a flag sets, over the file.
    pub fn overridden_settings(&self) -> Vec<String> {
        self.env
            .iter()
            .filter_map(|(name, _)| name.strip_prefix(ENV_PREFIX))
            .map(|key| key.to_lowercase().replace("__", "."))
            .chain(self.overrides.iter().map(|(dotted, _)| dotted.clone()))
            .collect()
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and validates a configuration from its sources.
pub fn load(sources: &Sources) -> Result<Config, ConfigErrors> {
    let (config, errors) = load_collecting(sources)?;
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads a configuration for a node that will serve: every problem,
/// including secrets it lacks, in one list.
pub fn load_for_serving(sources: &Sources) -> Result<Config, ConfigErrors> {
    let (config, mut errors) = load_collecting(sources)?;
    errors.extend(config.missing_secrets());
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The configuration as far as it could be read (bad settings replaced by
/// their defaults), and every problem found. Fails outright only when the
/// file cannot be read or parsed at all.
fn load_collecting(sources: &Sources) -> Result<(Config, Vec<String>), ConfigErrors> {
    let (mut table, text) = match &sources.file {
        Some(path) => read_file(path)?,
        None => (Table::new(), String::new()),
    };
    let mut errors = Vec::new();
    for (name, value) in &sources.env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if name == ENV_CONFIG_FILE || key.is_empty() {
            continue;
        }
        let path: Vec<String> = key.to_lowercase().split("__").map(str::to_owned).collect();
        if let Err(e) = set_path(&mut table, &path, parse_value(value)) {
            errors.push(format!("environment variable {name}: {e}"));
        }
    }
    for (dotted, value) in &sources.overrides {
        let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
        if let Err(e) = set_path(&mut table, &path, parse_value(value)) {
            errors.push(format!("flag setting {dotted}: {e}"));
        }
    }

    let mut typing = Typing::default();
    let config = type_table(table, &mut typing);
    let Typing { errors: mut problems, dropped } = typing;
    problems.extend(config.validate().into_iter().map(|problem| dropped.renumbered(problem)));
    // Where in the file each problem stands, unless a variable or a flag
    // set that setting, or a list or table holding it.
    if let Some(path) = &sources.file {
        let overridden = sources.overridden_settings();
        for problem in &mut problems {
            let Some((setting, _)) = problem.split_once(": ") else { continue };
            let dotted = setting.replace('[', ".").replace(']', "");
            let holds =
                |o: &String| dotted == *o || dotted.strip_prefix(o.as_str()).is_some_and(|r| r.starts_with('.'));
            if overridden.iter().any(holds) {
                continue;
            }
            if let Some(line) = line_of(&text, setting) {
                problem.push_str(&format!(" ({} line {line})", path.display()));
            }
        }
    }
    errors.extend(problems);
    Ok((config, errors))
}

/// What typing found wrong, and the list elements it dropped whole.
#[derive(Debug, Default)]
struct Typing {
    errors: Vec<String>,
    dropped: Dropped,
}

/// A serde message in the words of a config file: `expected u16` means
/// nothing to someone writing `port = -1`.
fn plain_types(message: &str) -> String {
    message
        .replace("expected u16", "expected a whole number from 0 to 65535")
        .replace("expected u32", "expected a whole number from 0 to 4294967295")
        .replace("expected u64", "expected a whole number, 0 or more")
        .replace("expected usize", "expected a whole number, 0 or more")
        .replace("expected i64", "expected a whole number")
        .replace("expected f64", "expected a number")
}

/// Types each section of a merged table, setting aside (and reporting) what
/// does not type, and reports unknown sections.
fn type_table(mut table: Table, typing: &mut Typing) -> Config {
    let config = Config {
        http: section(&mut table, "http", typing),
        engine: engine_section(&mut table, typing),
        client: section(&mut table, "client", typing),
        api: section(&mut table, "api", typing),
        channel: section(&mut table, "channel", typing),
        pusher: section(&mut table, "pusher", typing),
        log: section(&mut table, "log", typing),
        node: section(&mut table, "node", typing),
        admin: section(&mut table, "admin", typing),
        proxies: section(&mut table, "proxies", typing),
        webhooks: section(&mut table, "webhooks", typing),
    };
    for unknown in table.keys() {
        typing.errors.push(format!(
            "{unknown}: unknown section; expected one of http, engine, client, api, channel, pusher, log, node, admin, proxies, webhooks"
        ));
    }
    config
}

/// Parses and types TOML text as a config file is, without validating it
/// (validation reads key files): the config fuzz target's entry, and how a
/// config-less node reads the starter config's namespaces.
pub(crate) fn type_toml(text: &str) -> Option<(Config, Vec<String>)> {
    let mut typing = Typing::default();
    let table = text.parse::<Table>().ok()?;
    Some((type_table(table, &mut typing), typing.errors))
}

/// The file's table, and its text (to say where a problem stands).
fn read_file(path: &Path) -> Result<(Table, String), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![format!(
            "cannot read {}: {e}; write a starter file with `herald config init`",
            path.display()
        )])
    })?;
    let table = text.parse::<Table>().map_err(|e| ConfigErrors(syntax_errors(path, &text, &e)))?;
    Ok((table, text))
}

/// Every syntax mistake of a file that is not valid TOML, not just the
/// first (where the parser stops): the text is cut at its table headers
/// and each piece parsed alone, so a mistake under `[http]` does not hide
/// one under `[client]`. When every piece parses alone (a table defined
/// twice), the whole file's error is the one.
fn syntax_errors(path: &Path, text: &str, whole: &toml::de::Error) -> Vec<String> {
    let mut pieces = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if offset > start && table_header(line).is_some() {
            pieces.push((start_line, text.get(start..offset).unwrap_or_default()));
            (start, start_line) = (offset, number.saturating_add(1));
        }
        offset = offset.saturating_add(line.len());
    }
    pieces.push((start_line, text.get(start..).unwrap_or_default()));
    let errors: Vec<String> = pieces
        .into_iter()
        .filter_map(|(first_line, piece)| {
            let error = piece.parse::<Table>().err()?;
            Some(syntax_error(path, piece, first_line, &error))
        })
        .collect();
    if errors.is_empty() {
        vec![syntax_error(path, text, 1, whole)]
    } else {
        errors
    }
}

/// `herald.toml is not valid TOML at line 3, column 8: <what>`, for an
/// error in `piece`, whose first line is the file's `first_line`.
fn syntax_error(path: &Path, piece: &str, first_line: usize, error: &toml::de::Error) -> String {
    let what = error.message().trim().replace('\n', "; ");
    let Some(before) = error.span().and_then(|span| piece.get(..span.start)) else {
        return format!("{} is not valid TOML: {what}", path.display());
    };
    let line = first_line.saturating_add(before.matches('\n').count());
    let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()).saturating_add(1);
    format!("{} is not valid TOML at line {line}, column {column}: {what}", path.display())
}

/// The name a line opens a table with (`http` of `[http]`, `pusher.apps`
/// of `[[pusher.apps]]`), or `None` for any other line, such as an array
/// value that happens to start with a bracket.
fn table_header(line: &str) -> Option<&str> {
    let line = line.split('#').next().unwrap_or_default().trim();
    let name = line.trim_start_matches('[').trim_end_matches(']');
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    (line.starts_with('[') && line.ends_with(']') && !name.is_empty() && plain).then_some(name)
}

/// Reads a flag or environment value as TOML, falling back to the text
/// itself. A number, boolean or date is taken only as written in full and
/// plainly: `0x1f`, `1_000`, `+42` or `123#rest` (a TOML comment) stay
/// text, so that a secret is never quietly another (`0x1f` is not `31`);
/// a number setting given one is told it is not a number.
fn parse_value(raw: &str) -> Value {
    let text = || Value::String(raw.to_owned());
    let Ok(mut table) = format!("v = {raw}").parse::<Table>() else { return text() };
    match table.remove("v") {
        Some(value @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_))) => {
            if value.to_string() == raw.trim() {
                value
            } else {
                text()
            }
        }
        Some(Value::Datetime(_)) | None => text(),
        Some(value) => value,
    }
}

/// The most elements a list may be given from variables or flags.
const MAX_LISTED: usize = 1000;

/// Whether the setting at `path` is a list of tables: `pusher.apps`,
/// `webhooks`, or an app's `webhooks` (`pusher.apps.0.webhooks`).
fn is_list_of_tables(path: &[&str]) -> bool {
    matches!(path, ["pusher", "apps"] | ["webhooks"] | ["pusher", "apps", _, "webhooks"])
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty setting name")?;
    let mut current = table;
    let mut keys = parents.iter();
    let mut walked: Vec<&str> = Vec::new();
    while let Some(key) = keys.next() {
        walked.push(key);
        // A list of tables followed by a number starts one: `pusher.apps.0.id`
        // makes `pusher.apps` a list even with no file to hold it (a table's
        // key that is a number, a namespace's name, stays a key).
        let starts_list = is_list_of_tables(&walked) && keys.clone().next().is_some_and(|n| n.parse::<usize>().is_ok());
        let entry = current.entry(key.clone()).or_insert_with(|| match starts_list {
            true => Value::Array(Vec::new()),
            false => Value::Table(Table::new()),
        });
        // An array of tables is entered by index: `pusher.apps.0.secret`;
        // an index past its end adds the tables up to it.
        let entry = match entry {
            Value::Array(elements) => {
                let index = keys.next().ok_or_else(|| format!("`{key}` is a list: name an element, as `{key}.0`"))?;
                walked.push(index);
                let position =
                    index.parse::<usize>().ok().filter(|position| *position < MAX_LISTED).ok_or_else(|| {
                        format!(
                            "`{key}` is a list: `{index}` is no element number (0 to {})",
                            MAX_LISTED.saturating_sub(1)
                        )
                    })?;
                if elements.len() <= position {
                    elements.resize_with(position.saturating_add(1), || Value::Table(Table::new()));
                }
                elements.get_mut(position).ok_or_else(|| format!("`{key}` has no element `{index}`"))?
            }
            entry => entry,
        };
        current = entry.as_table_mut().ok_or_else(|| format!("`{key}` is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Types one section; on failure records the problem, sets the bad key
/// (or list element) aside and tries again, so every bad key of the
/// section is reported.
fn section<T: DeserializeOwned + Default>(table: &mut Table, name: &str, typing: &mut Typing) -> T {
    let Some(mut value) = table.remove(name) else {
        return T::default();
    };
    // Each retry removes one key, so this ends; the bound is a backstop.
    for _ in 0..256 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(typed) => return typed,
            Err(e) => {
                let text = e.inner().to_string();
                let message = plain_types(text.lines().next().unwrap_or_default());
                let mut steps: Vec<Step> = e.path().iter().filter_map(Step::of).collect();
                // An unknown field's error stands at the table holding it.
                if let Some(field) = unknown_field(&message) {
                    if !matches!(steps.last(), Some(Step::Key(last)) if *last == field) {
                        steps.push(Step::Key(field));
                    }
                }
                let path: Vec<Step> =
                    std::iter::once(Step::Key(name.to_owned())).chain(steps.iter().cloned()).collect();
                let in_file = typing.dropped.as_in_file(&path);
                typing.errors.push(format!("{}: {message}", shown(&in_file)));
                if steps.is_empty() || !remove_path(&mut value, &steps) {
                    return T::default();
                }
                if matches!(steps.last(), Some(Step::Index(_))) {
                    typing.dropped.note(&in_file);
                }
            }
        }
    }
    T::default()
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// `[engine]`, typed by its `type` first and then as that engine's table,
/// so each of its bad settings is named with its key (an engine typed as
/// a whole reports one problem, without the key, and hides the others).
fn engine_section(table: &mut Table, typing: &mut Typing) -> EngineConfig {
    let Some(value) = table.remove("engine") else { return EngineConfig::default() };
    let Value::Table(mut engine) = value else {
        typing
            .errors
            .push("engine: must be a table, as `[engine]` with `type = \"redis\"` and its settings".to_owned());
        return EngineConfig::default();
    };
    let kind = match engine.remove("type") {
        // Settings of another engine, without saying which: named as such,
        // not as settings the memory engine does not know.
        None if engine.keys().any(|key| key != "max_streams") => {
            typing.errors.push(
                "engine.type: missing; the section has settings of another engine than memory, so say which: \
                 type = \"redis\", \"redis_cluster\" or \"nats\""
                    .to_owned(),
            );
            return EngineConfig::default();
        }
        None => "memory".to_owned(),
        Some(Value::String(kind)) => kind,
        Some(other) => {
            typing.errors.push(format!("engine.type: expected a string, found {}", other.type_str()));
            return EngineConfig::default();
        }
    };
    let mut settings = Table::from_iter([("engine".to_owned(), Value::Table(engine))]);
    match kind.as_str() {
        "memory" => EngineConfig::Memory(section(&mut settings, "engine", typing)),
        "redis" => EngineConfig::Redis(section(&mut settings, "engine", typing)),
        "redis_cluster" => EngineConfig::RedisCluster(section(&mut settings, "engine", typing)),
        "nats" => EngineConfig::Nats(section(&mut settings, "engine", typing)),
        other => {
            typing.errors.push(format!(
                "engine.type: `{other}` is not an engine; expected memory, redis, redis_cluster or nats"
            ));
            EngineConfig::default()
        }
    }
}

mod paths;
#[cfg(test)]
mod tests;
