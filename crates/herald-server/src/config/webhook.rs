//! Where a webhook goes: an `http://` or `https://host[:port]/path` URL.
//! The configuration's check and the webhook sender read it with this one
//! parser, so a URL the check accepts is one the sender can use.

/// An `http(s)://host[:port]/path` webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    /// Over TLS (`https://`).
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl WebhookEndpoint {
    /// Parses `http(s)://host[:port][/path]`; `None` for anything else.
    pub fn parse(url: &str) -> Option<Self> {
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("http://")?),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() || authority.contains('@') {
            return None;
        }
        Some(Self { tls, host: host.to_owned(), port, path: path.to_owned() })
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host to connect to (and, over TLS, to check the certificate for).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
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
        let secure = WebhookEndpoint::parse("https://secure.example/hook").unwrap();
        assert_eq!((secure.is_tls(), secure.authority()), (true, "secure.example:443".to_owned()));
        for bad in ["ftp://x/", "http://", "https://", "http://:80/", "http://u:p@host/", "http://h:port/"] {
            assert_eq!(WebhookEndpoint::parse(bad), None, "{bad}");
        }
    }
}
