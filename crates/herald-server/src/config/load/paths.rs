//! Settings named by their path (`pusher.apps[1].secret`), as a problem
//! names them: typing's paths, taking a bad setting out of its section,
//! keeping list elements numbered as the file numbers them after one was
//! dropped, and finding the line of the file that sets a setting.

use std::collections::HashMap;

use toml::Value;

/// One step of a setting's path: a key of a table, or an element of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

impl Step {
    pub(super) fn of(segment: &serde_path_to_error::Segment) -> Option<Self> {
        match segment {
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
        }
    }
}

/// The setting's name as the problem list shows it: `pusher.apps[0].secret`.
pub(super) fn shown(steps: &[Step]) -> String {
    let mut shown = String::new();
    for step in steps {
        match step {
            Step::Key(key) => {
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(key);
            }
            Step::Index(index) => shown.push_str(&format!("[{index}]")),
        }
    }
    shown
}

/// The path of a setting's name as [`shown`] writes it; `None` for text
/// that is not one (`channel namespace feed`, `TLS setup`).
fn parsed(name: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in name.split('.') {
        let (key, mut indexes) = part.split_once('[').map_or((part, ""), |(key, rest)| (key, rest));
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        if key.is_empty() || !key.chars().all(plain) {
            return None;
        }
        steps.push(Step::Key(key.to_owned()));
        while !indexes.is_empty() {
            let (index, rest) = indexes.split_once(']')?;
            steps.push(Step::Index(index.parse().ok()?));
            indexes = rest.strip_prefix('[').unwrap_or(rest);
            if !rest.is_empty() && !rest.starts_with('[') {
                return None;
            }
        }
    }
    Some(steps)
}

/// Takes the setting at `steps` (below its section) out of `value`, so the
/// section can be typed again without it; false when there is no such
/// setting.
pub(super) fn remove_path(value: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else { return false };
    let mut current = value;
    for step in parents {
        let next = match step {
            Step::Key(key) => current.as_table_mut().and_then(|t| t.get_mut(key)),
            Step::Index(index) => current.as_array_mut().and_then(|a| a.get_mut(*index)),
        };
        match next {
            Some(next) => current = next,
            None => return false,
        }
    }
    match last {
        Step::Key(key) => current.as_table_mut().and_then(|t| t.remove(key)).is_some(),
        // A list element that is not a table, or lacks a setting it
        // needs: nothing to keep of it.
        Step::Index(index) => match current.as_array_mut() {
            Some(elements) if *index < elements.len() => {
                elements.remove(*index);
                true
            }
            _ => false,
        },
    }
}

/// The list elements typing dropped whole, each as its list's path and its
/// own index, both as the file numbers them. The elements after a dropped
/// one move down in the list typed again and in the config validated; a
/// problem found there is renumbered by these, so that it names the element
/// the file has (`pusher.apps[2]`, not the `[1]` it became).
#[derive(Debug, Default)]
pub(super) struct Dropped(Vec<(Vec<Step>, usize)>);

impl Dropped {
    /// Notes the element at `path` (a path [`Dropped::as_in_file`] gave).
    pub(super) fn note(&mut self, path: &[Step]) {
        if let Some((Step::Index(index), list)) = path.split_last() {
            self.0.push((list.to_vec(), *index));
        }
    }

    /// `steps`, found after the drops noted so far, as the file numbers
    /// its lists.
    pub(super) fn as_in_file(&self, steps: &[Step]) -> Vec<Step> {
        let mut file = Vec::with_capacity(steps.len());
        for step in steps {
            let step = match step {
                Step::Key(key) => Step::Key(key.clone()),
                Step::Index(index) => {
                    let mut gone: Vec<usize> =
                        self.0.iter().filter(|(list, _)| *list == file).map(|(_, at)| *at).collect();
                    gone.sort_unstable();
                    // Each dropped element at or before it moved it down one.
                    let at = gone
                        .into_iter()
                        .fold(*index, |at, dropped| if dropped <= at { at.saturating_add(1) } else { at });
                    Step::Index(at)
                }
            };
            file.push(step);
        }
        file
    }

    /// A validation problem (`pusher.apps[1].secret: ...`), its setting
    /// renumbered as the file numbers its lists.
    pub(super) fn renumbered(&self, problem: String) -> String {
        if self.0.is_empty() {
            return problem;
        }
        let Some((name, rest)) = problem.split_once(": ") else { return problem };
        match parsed(name) {
            Some(steps) if steps.iter().any(|step| matches!(step, Step::Index(_))) => {
                format!("{}: {rest}", shown(&self.as_in_file(&steps)))
            }
            _ => problem,
        }
    }
}

/// The line of `text` (a TOML file) that sets `setting` (`http.port`,
/// `pusher.apps[1].secret`), if it is a plain `key = value` line under a
/// `[table]` or `[[list]]` header, or the header that opens it (`webhooks[0]`).
pub(super) fn line_of(text: &str, setting: &str) -> Option<usize> {
    let unquote = |part: &str| part.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
    let mut headers = Headers::default();
    let mut table = String::new();
    for (number, line) in text.lines().enumerate() {
        if let Some(header) = super::table_header(line) {
            let plain = header.split('.').map(unquote).collect::<Vec<_>>().join(".");
            table = headers.open(&plain, line.trim_start().starts_with("[["));
            // A problem with a whole table (a list element missing a
            // setting it needs) stands at its header.
            if table == setting {
                return number.checked_add(1);
            }
            continue;
        }
        let line = line.trim();
        let Some((key, _)) = line.split_once('=') else { continue };
        if key.trim_start().starts_with('#') {
            continue;
        }
        let key = key.split('.').map(unquote).collect::<Vec<_>>().join(".");
        let full = if table.is_empty() { key } else { format!("{table}.{key}") };
        if full == setting {
            return number.checked_add(1);
        }
    }
    None
}

/// The `[[list]]` elements a file has opened so far, to name the table
/// each header opens as a problem names it (`pusher.apps[1].webhooks[0]`).
#[derive(Debug, Default)]
struct Headers {
    /// The list elements open, outermost first: each `[[header]]`'s name
    /// (unquoted), and the table it opened.
    open: Vec<(String, String)>,
    /// How many elements each list has had so far.
    counts: HashMap<String, usize>,
}

impl Headers {
    /// The table a header opens: `plain` (the header's name, unquoted),
    /// under the innermost open list element it is inside; a `[[list]]`
    /// header's next element.
    fn open(&mut self, plain: &str, list: bool) -> String {
        let inside = self
            .open
            .iter()
            .rev()
            .find(|(header, _)| plain.strip_prefix(header.as_str()).is_some_and(|rest| rest.starts_with('.')));
        let named = match inside {
            Some((header, table)) => format!("{table}{}", plain.get(header.len()..).unwrap_or_default()),
            None => plain.to_owned(),
        };
        if !list {
            return named;
        }
        let count = self.counts.entry(named.clone()).or_default();
        let table = format!("{named}[{count}]");
        *count = count.saturating_add(1);
        // This element closes any element of the same list or one inside it.
        self.open.retain(|(header, _)| header != plain && !header.starts_with(&format!("{plain}.")));
        self.open.push((plain.to_owned(), table.clone()));
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str) -> Step {
        Step::Key(key.to_owned())
    }

    #[test]
    fn a_setting_name_reads_back_as_its_path_and_anything_else_is_left_alone() {
        let path = vec![key("pusher"), key("apps"), Step::Index(1), key("webhooks"), Step::Index(0), key("url")];
        assert_eq!(shown(&path), "pusher.apps[1].webhooks[0].url");
        assert_eq!(parsed("pusher.apps[1].webhooks[0].url"), Some(path));
        for not_a_name in ["a b", "apps[x]", "apps[1]x", "", "apps[1"] {
            assert_eq!(parsed(not_a_name), None, "{not_a_name:?}");
        }
    }

    #[test]
    fn elements_after_dropped_ones_are_numbered_as_in_the_file() {
        let apps = |index| vec![key("pusher"), key("apps"), Step::Index(index)];
        let mut dropped = Dropped::default();
        // Of elements 0 to 4, 1 is dropped, then 2 (then at 1).
        dropped.note(&dropped.as_in_file(&apps(1)));
        assert_eq!(dropped.as_in_file(&apps(1)), apps(2));
        dropped.note(&dropped.as_in_file(&apps(1)));
        let file: Vec<_> = (0..3).map(|index| dropped.as_in_file(&apps(index))).collect();
        assert_eq!(file, [apps(0), apps(3), apps(4)]);
        assert_eq!(dropped.renumbered("pusher.apps[1].secret: short".into()), "pusher.apps[3].secret: short");
        assert_eq!(dropped.renumbered("webhooks[1].url: bad".into()), "webhooks[1].url: bad", "another list");
        assert_eq!(dropped.renumbered("feed: bad".into()), "feed: bad");
    }

    #[test]
    fn a_setting_inside_a_list_element_is_found_on_its_line() {
        let text = r#"[pusher]
activity_timeout = "60s"
[[pusher.apps]]
id = "a"
[[pusher.apps.webhooks]]
url = "x"
[[pusher.'apps']]  # the same list, spelled otherwise
id = "b"
[[pusher.apps.webhooks]]
url = "y"
[[pusher.apps.webhooks]]
url = "z"
[[webhooks]]
url = "w"
"#;
        for (setting, line) in [
            ("pusher.activity_timeout", Some(2)),
            ("pusher.apps[0].id", Some(4)),
            ("pusher.apps[0].webhooks[0].url", Some(6)),
            ("pusher.apps[1].id", Some(8)),
            ("pusher.apps[1].webhooks[0].url", Some(10)),
            ("pusher.apps[1].webhooks[1].url", Some(12)),
            ("webhooks[0].url", Some(14)),
            ("pusher.apps[2].id", None),
        ] {
            assert_eq!(line_of(text, setting), line, "{setting}");
        }
    }
}
