//! `[http]`: where a procedure may send outbound HTTP requests, and how
//! many and how much.

use serde::{Deserialize, Deserializer, Serialize};

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// `scheme://host[:port]` the procedure may call.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Most outbound requests one request of the procedure may make.
    #[serde(default = "default_http_calls", deserialize_with = "calls")]
    pub calls: u32,
    /// Most response body bytes one request of the procedure may receive,
    /// all its outbound requests together (`"4MiB"`).
    #[serde(
        default = "default_http_bytes",
        deserialize_with = "bytes",
        serialize_with = "write_bytes"
    )]
    pub bytes: u64,
}

/// [`Http::calls`] when the manifest does not say.
pub const DEFAULT_HTTP_CALLS: u32 = 16;
/// [`Http::bytes`] when the manifest does not say.
pub const DEFAULT_HTTP_BYTES: u64 = 4 << 20;

fn default_http_calls() -> u32 {
    DEFAULT_HTTP_CALLS
}

fn default_http_bytes() -> u64 {
    DEFAULT_HTTP_BYTES
}

impl Default for Http {
    fn default() -> Self {
        Http {
            allow: Vec::new(),
            calls: DEFAULT_HTTP_CALLS,
            bytes: DEFAULT_HTTP_BYTES,
        }
    }
}

/// One `[http] allow` entry: a scheme, a host and a port (the scheme's
/// default when none is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPattern {
    /// `http` or `https`.
    pub scheme: String,
    /// A host name or an address, lower case.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl HttpPattern {
    /// Parses `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<HttpPattern, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("write it as scheme://host[:port], e.g. https://api.example.com")?;
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("the scheme must be http or https, not {scheme:?}")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err("give only scheme://host[:port]: no path, query or user".to_owned());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                if host.starts_with('[') || !host.contains(':') {
                    let port = port.parse::<u16>().map_err(|_| {
                        format!("the port {port:?} is not a number from 1 to 65535")
                    })?;
                    (host, port)
                } else {
                    (rest, default_port)
                }
            }
            _ => (rest, default_port),
        };
        if host.is_empty() || port == 0 {
            return Err("it needs a host and a port from 1 to 65535".to_owned());
        }
        Ok(HttpPattern {
            scheme: scheme.to_owned(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

fn calls<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let count = i64::deserialize(deserializer)?;
    u32::try_from(count)
        .map_err(|_| serde::de::Error::custom("calls must be a whole number from 0 to 4294967295"))
}

fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::values::size(&text).map_err(serde::de::Error::custom)
}

fn write_bytes<S: serde::Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{value}B"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_patterns_read_scheme_host_and_port() {
        let pattern = HttpPattern::parse("https://API.example.com").unwrap();
        assert_eq!(
            (pattern.host.as_str(), pattern.port),
            ("api.example.com", 443)
        );
        let pattern = HttpPattern::parse("http://127.0.0.1:8081/").unwrap();
        assert_eq!((pattern.host.as_str(), pattern.port), ("127.0.0.1", 8081));
        let pattern = HttpPattern::parse("http://[::1]:8081").unwrap();
        assert_eq!((pattern.host.as_str(), pattern.port), ("[::1]", 8081));
        assert!(HttpPattern::parse("http://host/path").is_err());
        assert!(HttpPattern::parse("http://host:0").is_err());
        assert!(HttpPattern::parse("host:80").is_err());
    }
}
