//! Where a webhook goes: an `http://host[:port]/path` URL. The
//! configuration's check and the webhook sender read it with this one
//! parser, so a URL the check accepts is one the sender can use.

/// An `http://host[:port]/path` webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl WebhookEndpoint {
    /// Parses `http://host[:port][/path]`; `None` for anything else.
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, 80),
        };
        if host.is_empty() || authority.contains('@') {
            return None;
        }
        Some(Self { host: host.to_owned(), port, path: path.to_owned() })
    }

    /// `host:port`, as a request's `Host` and the address to connect to.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The path and query to request, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_parse_into_host_port_and_path() {
        let endpoint = WebhookEndpoint::parse("http://127.0.0.1:9000/pusher/hooks?x=1").unwrap();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port, endpoint.path.as_str()),
            ("127.0.0.1", 9000, "/pusher/hooks?x=1")
        );
        assert_eq!(WebhookEndpoint::parse("http://hooks.local").unwrap().authority(), "hooks.local:80");
        for bad in
            ["https://secure.example/hook", "ftp://x/", "http://", "http://:80/", "http://u:p@host/", "http://h:port/"]
        {
            assert_eq!(WebhookEndpoint::parse(bad), None, "{bad}");
        }
    }
}
