//! Where the node sends HTTP requests (webhooks, proxies, the JWKS): an
//! `http://` or `https://host[:port]/path` URL. The configuration's check
//! and every sender read it with this one parser, so a URL the check
//! accepts is one the sender can use. IPv6 hosts are written in brackets
//! (`http://[::1]:3000/hooks`).

use axum::http::Uri;

/// An `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// Over TLS (`https://`).
    tls: bool,
    /// Without brackets, as connecting and TLS need it.
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

/// `url` as logs may show it: without its query or fragment, or user
/// name and password, any of which may hold a credential.
pub(crate) fn for_logs(url: &str) -> String {
    let base = url.split(['?', '#']).next().unwrap_or_default();
    let Some((scheme, rest)) = base.split_once("://") else { return "(not a URL)".to_owned() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}{path}")
}

impl HttpEndpoint {
    /// Parses `http(s)://host[:port][/path]`; `None` for anything else,
    /// user names and passwords included.
    pub fn parse(url: &str) -> Option<Self> {
        let uri: Uri = url.parse().ok()?;
        let tls = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        // What follows the host (`]` closes an IPv6 one) must be a port, if anything.
        let after_host = match authority.as_str().rfind(']') {
            Some(end) => authority.as_str().get(end..).unwrap_or_default(),
            None => authority.as_str(),
        };
        let port = match (authority.port_u16(), after_host.contains(':')) {
            (Some(port), true) => port,
            (None, false) => match tls {
                true => 443,
                false => 80,
            },
            _ => return None,
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let path = if path.is_empty() { "/" } else { path };
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

    /// `host:port` (`[v6]:port`), as a request's `Host`.
    pub fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
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
    fn urls_parse_into_host_port_and_path() {
        let endpoint = HttpEndpoint::parse("http://127.0.0.1:9000/pusher/hooks?x=1").unwrap();
        assert_eq!(
            (endpoint.host.as_str(), endpoint.port, endpoint.path.as_str()),
            ("127.0.0.1", 9000, "/pusher/hooks?x=1")
        );
        assert_eq!(HttpEndpoint::parse("http://hooks.local").unwrap().authority(), "hooks.local:80");
        let secure = HttpEndpoint::parse("https://secure.example/hook").unwrap();
        assert_eq!((secure.is_tls(), secure.authority()), (true, "secure.example:443".to_owned()));
        let v6 = HttpEndpoint::parse("http://[::1]:3000/centrifugo/connect").unwrap();
        assert_eq!((v6.host(), v6.port(), v6.authority()), ("::1", 3000, "[::1]:3000".to_owned()));
        for bad in [
            "ftp://x/",
            "http://",
            "https://",
            "http://:80/",
            "http://u:p@host/",
            "http://h:port/",
            "http://h:/",
            "id.example.com/jwks.json",
            "not a url",
        ] {
            assert_eq!(HttpEndpoint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn logs_show_a_url_without_its_query_fragment_or_credentials() {
        for (url, shown) in [
            ("https://hooks.example/in?token=s3cret", "https://hooks.example/in"),
            ("http://[::1]:3000/hook#t=s3cret", "http://[::1]:3000/hook"),
            ("http://user:s3cret@hooks.example:81/in", "http://hooks.example:81/in"),
            ("http://user:s3cret@hooks.example?k=s3cret", "http://hooks.example"),
            ("http://hooks.example", "http://hooks.example"),
            ("s3cret", "(not a URL)"),
        ] {
            assert_eq!(for_logs(url), shown, "{url}");
        }
    }
}
