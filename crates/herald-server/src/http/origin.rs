//! Which web pages may open a WebSocket to the node (`http.allowed_origins`):
//! a browser sends the page's origin with every WebSocket handshake, along
//! with the user's cookies, so without a check any site could open a
//! connection from a visitor's browser (cross-site WebSocket hijacking).
//!
//! - A handshake without an `Origin` is not from a browser: allowed.
//! - A page served by the node itself (its origin's host is the request's
//!   `Host`): allowed.
//! - With `allowed_origins` empty, any origin is allowed (tokens still
//!   decide who a connection is); otherwise the origin must match one of
//!   the patterns, where `*` stands for any run of characters
//!   (`https://*.example.com`), case aside.

/// The configured patterns, lower-cased once.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    patterns: Vec<String>,
}

impl OriginPolicy {
    pub(crate) fn new(patterns: &[String]) -> Self {
        Self { patterns: patterns.iter().map(|p| p.trim().to_ascii_lowercase()).collect() }
    }

    /// Whether a handshake with this `Origin` (and `Host`) may proceed.
    pub(crate) fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin.map(|o| o.trim().to_ascii_lowercase()) else { return true };
        if self.patterns.is_empty() {
            return true;
        }
        let same_host = host.is_some_and(|host| {
            origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host.trim()))
        });
        same_host || self.patterns.iter().any(|pattern| herald_core::hub::glob_match(pattern, &origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_allowed_by_pattern_by_being_the_nodes_own_or_by_being_absent() {
        let open = OriginPolicy::new(&[]);
        assert!(open.allows(Some("https://evil.example"), Some("herald:8000")), "no list: any origin");
        let policy = OriginPolicy::new(&["https://app.example.com".into(), "https://*.Example.org".into()]);
        let cases = [
            (None, true, "not a browser"),
            (Some("https://app.example.com"), true, "listed"),
            (Some("HTTPS://APP.EXAMPLE.COM"), true, "case aside"),
            (Some("https://eu.example.org"), true, "a wildcard"),
            (Some("https://example.org.evil.com"), false, "a suffix is not a subdomain"),
            (Some("http://app.example.com"), false, "another scheme"),
            (Some("https://evil.example"), false, "not listed"),
            (Some("null"), false, "an opaque origin"),
            (Some("http://herald:8000"), true, "the node's own pages"),
        ];
        for (origin, allowed, why) in cases {
            assert_eq!(policy.allows(origin, Some("herald:8000")), allowed, "{origin:?}: {why}");
        }
    }
}
