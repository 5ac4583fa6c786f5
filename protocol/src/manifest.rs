//! A procedure's manifest: what it may touch and how much it may use.
//!
//! A manifest is a small TOML file, `NAME.toml` beside `NAME.wasm` in a
//! host's modules folder, or sent with a remote deploy (`warren deploy
//! --manifest`), where the deploy's signature covers it with the module
//! ([`crate::deploy::signed_bytes`]). No manifest means no
//! grants at all, which is what every procedure had before manifests: no
//! configuration, no secrets, no network, the host's own limits.
//!
//! ```toml
//! callers = ["alice", "billing-*"]   # who may call it (broker users)
//! callers-anonymous = false          # and requests without user_id too
//! [quota]                            # per caller, on each host
//! rate = 50                          # requests per second
//! burst = 100                        # at once above the rate
//! share = "25%"                      # of the procedure's running slots
//! [limits]                           # each at most the host's own
//! timeout = "2s"
//! memory = "32MiB"
//! reply = "1MiB"
//! concurrency = 4
//! [config]                           # wasi:config/store values
//! greeting = "hello"
//! [secrets]                          # values come from the host's side
//! names = ["api-key"]
//! [http]                             # outbound wasi:http
//! allow = ["http://127.0.0.1:8081", "https://api.example.com"]
//! ```
//!
//! Parsing is strict on purpose: an unknown key or a bad value is refused
//! with the line it is on, because a misspelt limit silently ignored is a
//! limit not applied. What a manifest *means* on a given host (limits
//! capped by the host's, secret values looked up) is the host's business.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The file extension of a manifest in the modules folder.
pub const MANIFEST_EXTENSION: &str = "toml";

/// Largest manifest accepted, in bytes: it travels in a message header.
pub const MAX_MANIFEST_BYTES: usize = 64 << 10;

/// A parsed manifest. [`Manifest::default`] grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Who may call the procedure: broker users, by name or pattern (`*`
    /// matches any run of characters); `None`: everyone, requests without
    /// `user_id` included. No pattern matches a request without `user_id`:
    /// having no identity is not a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<Vec<String>>,
    /// `callers-anonymous`: whether, besides `callers`, requests without
    /// `user_id` (no identity the broker vouched for) may call it. Only
    /// beside `callers` (without it everyone may call); written `false`,
    /// it says what leaving it out does.
    #[serde(
        default,
        rename = "callers-anonymous",
        skip_serializing_if = "Option::is_none"
    )]
    pub callers_anonymous: Option<bool>,
    /// How much each caller may use of it, on each host.
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub quota: Quota,
    /// Limits below the host's own.
    #[serde(default, skip_serializing_if = "ManifestLimits::is_empty")]
    pub limits: ManifestLimits,
    /// Configuration values the procedure reads through `wasi:config/store`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Secrets the procedure reads through `wasi:config/store`; their values
    /// come from the host.
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// Outbound HTTP the procedure may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
}

/// `[limits]`: each, when given, lowers the host's own for this procedure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    /// Wall-clock budget of one request (`"2s"`).
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Most linear memory one request may use (`"32MiB"`).
    #[serde(
        default,
        deserialize_with = "size",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
    /// Largest reply (`"1MiB"`).
    #[serde(
        default,
        deserialize_with = "size",
        skip_serializing_if = "Option::is_none"
    )]
    pub reply: Option<u64>,
    /// How many of this procedure's requests run at once on one host.
    #[serde(
        default,
        deserialize_with = "concurrency",
        skip_serializing_if = "Option::is_none"
    )]
    pub concurrency: Option<usize>,
}

impl ManifestLimits {
    fn is_empty(&self) -> bool {
        *self == ManifestLimits::default()
    }
}

/// `[quota]`, and a host's per-caller defaults (`--caller-rate`,
/// `--caller-burst`, `--caller-share`): how much one caller may use, on
/// one host. Over it, a request is answered at once with `rate-limited`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Requests per second one caller may make (a token bucket refilled at
    /// this rate).
    #[serde(
        default,
        deserialize_with = "positive",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate: Option<u32>,
    /// How many requests above the rate one caller may make at once (the
    /// bucket's size); the rate when not given.
    #[serde(
        default,
        deserialize_with = "positive",
        skip_serializing_if = "Option::is_none"
    )]
    pub burst: Option<u32>,
    /// The part of the running slots (the procedure's concurrency in a
    /// manifest, the host's `--concurrency` for the host's default) one
    /// caller's requests may hold, waiting or running: `"25%"`.
    #[serde(
        default,
        deserialize_with = "percent",
        serialize_with = "write_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub share: Option<u8>,
}

impl Quota {
    /// Whether it limits nothing.
    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }

    /// The bucket size: `burst`, else the rate.
    pub fn burst_or_rate(&self) -> Option<u32> {
        self.burst.or(self.rate)
    }

    /// How many of `slots` one caller may hold under `share` (at least
    /// one); `None` when there is no share.
    pub fn share_of(&self, slots: usize) -> Option<usize> {
        self.share
            .filter(|share| *share < 100)
            .map(|share| (slots * usize::from(share)).div_ceil(100).max(1))
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(rate) = self.rate {
            parts.push(format!("{rate}/s"));
        }
        if let Some(burst) = self.burst {
            parts.push(format!("burst {burst}"));
        }
        if let Some(share) = self.share {
            parts.push(format!("{share}% of the slots"));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Parses a share, `"25%"` (1 to 100 per cent).
pub fn parse_percent(text: &str) -> Result<u8, String> {
    text.trim()
        .strip_suffix('%')
        .and_then(|number| number.trim().parse::<u8>().ok())
        .filter(|percent| (1..=100).contains(percent))
        .ok_or_else(|| format!("{text:?} is not a share: write a percentage from 1% to 100%"))
}

/// `[secrets]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// The secrets' names; a host holds their values (`--secrets-dir`).
    #[serde(default)]
    pub names: Vec<String>,
}

impl Secrets {
    fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

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

/// Why a manifest was refused: the TOML error, which names the line and
/// column and shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(String);

impl Manifest {
    /// Parses and checks a manifest's text.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError(format!(
                "the manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are allowed",
                text.len()
            )));
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|error| ManifestError(error.to_string()))?;
        manifest.check(text)?;
        Ok(manifest)
    }

    /// Whether it grants anything beyond what no manifest grants.
    pub fn grants_nothing(&self) -> bool {
        *self == Manifest::default()
    }

    /// The rules serde cannot say: names that must not collide, patterns
    /// that must parse. Errors name the line the offending value is on.
    fn check(&self, text: &str) -> Result<(), ManifestError> {
        let at = |needle: &str, message: String| {
            let line = text
                .lines()
                .position(|line| line.contains(needle))
                .map_or(String::new(), |index| format!("line {}: ", index + 1));
            Err(ManifestError(format!("{line}{message}")))
        };
        for key in self.config.keys() {
            if let Err(rule) = check_key(key) {
                return at(key, format!("[config] key {key:?}: {rule}"));
            }
        }
        for name in &self.secrets.names {
            if let Err(rule) = check_key(name) {
                return at(name, format!("[secrets] name {name:?}: {rule}"));
            }
            if self.config.contains_key(name) {
                return at(
                    name,
                    format!(
                        "{name:?} is both a [config] key and a secret; the procedure reads \
                         both through wasi:config/store, so a name can be only one of them"
                    ),
                );
            }
        }
        if let Some(http) = &self.http {
            for pattern in &http.allow {
                if let Err(rule) = HttpPattern::parse(pattern) {
                    return at(pattern, format!("[http] allow {pattern:?}: {rule}"));
                }
            }
        }
        if let Some(callers) = &self.callers {
            for caller in callers {
                if caller.is_empty() {
                    return at(
                        "callers",
                        "callers: an empty name matches nobody".to_owned(),
                    );
                }
            }
        } else if self.callers_anonymous.is_some() {
            return at(
                "callers-anonymous",
                "callers-anonymous only goes with callers: without callers everyone may call, \
                 requests without user_id included; to let in every broker user but not \
                 requests without user_id, write callers = [\"*\"]"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// A configuration key or secret name: what a file name and an environment
/// variable can both hold.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 {
        return Err("it must be 1 to 128 characters".to_owned());
    }
    if key.starts_with('.')
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(
            "use letters, digits, '-', '_' and '.' (not first), so it can name a file".to_owned(),
        );
    }
    Ok(())
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

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::values::duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn write_duration<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(duration) => {
            serializer.serialize_str(&humantime::format_duration(*duration).to_string())
        }
        None => serializer.serialize_none(),
    }
}

fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::values::nonzero_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
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

fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let count = i64::deserialize(deserializer)?;
    match u32::try_from(count) {
        Ok(count) if count >= 1 => Ok(Some(count)),
        _ => Err(serde::de::Error::custom(
            "it must be a whole number from 1 to 4294967295",
        )),
    }
}

fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_percent(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn write_percent<S: serde::Serializer>(
    value: &Option<u8>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(percent) => serializer.serialize_str(&format!("{percent}%")),
        None => serializer.serialize_none(),
    }
}

fn concurrency<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let count = i64::deserialize(deserializer)?;
    match usize::try_from(count) {
        Ok(count) if count >= 1 => Ok(Some(count)),
        _ => Err(serde::de::Error::custom(
            "concurrency must be a whole number of at least 1",
        )),
    }
}

/// What a procedure is granted on one host: its manifest applied to the
/// host's own limits. What a host logs when it loads a procedure and what
/// `warren status --json` shows; it names secrets, never their values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveGrants {
    /// `sha256:<hex>` of the manifest's text; absent without a manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Who may call it (broker users); absent: everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<Vec<String>>,
    /// With `callers`: whether requests without `user_id` may call it too
    /// (`callers-anonymous = true`). Without `callers` they may, and this
    /// is false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub callers_anonymous: bool,
    /// How much each caller may use of it on this host (its `[quota]`; the
    /// host's own per-caller quota applies besides).
    #[serde(default, skip_serializing_if = "Quota::is_empty")]
    pub quota: Quota,
    /// Wall-clock budget of one request, in milliseconds.
    pub timeout_ms: u64,
    /// Most linear memory one request may use, in bytes.
    pub memory_bytes: u64,
    /// Largest reply, in bytes.
    pub reply_bytes: u64,
    /// How many of its requests run at once on this host.
    pub concurrency: u64,
    /// The configuration keys it can read (values are in the manifest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    /// The names of the secrets it can read (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Where it may send HTTP requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// Most outbound HTTP requests per request (0 without `[http]`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub http_calls: u64,
    /// Most response bytes received per request (0 without `[http]`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub http_bytes: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl std::fmt::Display for EffectiveGrants {
    /// One line: `timeout 2s, memory 32 MiB, reply 1 MiB, concurrency 4,
    /// config [greeting], secrets [api-key], http none, callers everyone`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                format!("[{}]", items.join(", "))
            }
        };
        let size = crate::values::format_bytes;
        let http = if self.http.is_empty() {
            "none".to_owned()
        } else {
            format!(
                "{} (at most {} calls and {} per request)",
                list(&self.http),
                self.http_calls,
                size(self.http_bytes)
            )
        };
        write!(
            f,
            "timeout {}, memory {}, reply {}, concurrency {}, config {}, secrets {}, http {}, \
             callers {}, quota per caller {}",
            humantime::format_duration(Duration::from_millis(self.timeout_ms)),
            size(self.memory_bytes),
            size(self.reply_bytes),
            self.concurrency,
            list(&self.config),
            list(&self.secrets),
            http,
            match (self.callers.as_deref(), self.callers_anonymous) {
                (None, _) => "everyone".to_owned(),
                (Some(callers), false) => list(callers),
                (Some(callers), true) => format!("{} and requests without user_id", list(callers)),
            },
            self.quota,
        )
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (`billing-*`).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| name_matches(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
callers = ["alice", "billing-*"]
[quota]
rate = 50
burst = 100
share = "25%"
[limits]
timeout = "2s"
memory = "32MiB"
reply = "1MiB"
concurrency = 4
[config]
greeting = "hello"
[secrets]
names = ["api-key"]
[http]
allow = ["http://127.0.0.1:8081", "https://api.example.com"]
"#;

    #[test]
    fn the_documented_shape_parses() {
        let manifest = Manifest::parse(FULL).unwrap();
        assert_eq!(manifest.limits.timeout, Some(Duration::from_secs(2)));
        assert_eq!(manifest.limits.memory, Some(32 << 20));
        assert_eq!(manifest.limits.reply, Some(1 << 20));
        assert_eq!(manifest.limits.concurrency, Some(4));
        assert_eq!(manifest.config["greeting"], "hello");
        assert_eq!(manifest.secrets.names, ["api-key"]);
        assert_eq!(manifest.http.unwrap().allow.len(), 2);
        assert_eq!(
            manifest.quota,
            Quota {
                rate: Some(50),
                burst: Some(100),
                share: Some(25)
            }
        );
        assert!(Manifest::parse("").unwrap().grants_nothing());
    }

    #[test]
    fn quotas_are_whole_rates_and_percent_shares() {
        let share = Manifest::parse("[quota]\nshare = \"0.25\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            share.contains("line 2") && share.contains("percentage"),
            "{share}"
        );
        let rate = Manifest::parse("[quota]\nrate = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            rate.contains("line 2") && rate.contains("whole number"),
            "{rate}"
        );
        let quota = Quota {
            share: Some(25),
            ..Quota::default()
        };
        assert_eq!(quota.share_of(16), Some(4));
        assert_eq!(quota.share_of(2), Some(1), "at least one slot");
        assert_eq!(
            Quota {
                share: Some(100),
                ..quota
            }
            .share_of(16),
            None
        );
        assert_eq!(
            Quota {
                rate: Some(10),
                ..Quota::default()
            }
            .burst_or_rate(),
            Some(10)
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_line() {
        let unknown = Manifest::parse("[limits]\ntimeout = \"2s\"\nmemroy = \"1MiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("line 3"), "{unknown}");
        assert!(unknown.contains("memroy"), "{unknown}");
        let bad = Manifest::parse("[limits]\n\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("line 3") && bad.contains("like 500ms"),
            "{bad}"
        );
        let zero = Manifest::parse("[limits]\nconcurrency = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            zero.contains("line 2") && zero.contains("at least 1"),
            "{zero}"
        );
        let clash = Manifest::parse("[config]\nkey = \"v\"\n[secrets]\nnames = [\"key\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            clash.contains("line 2") && clash.contains("both"),
            "{clash}"
        );
        let pattern = Manifest::parse("[http]\nallow = [\"ftp://x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            pattern.contains("line 2") && pattern.contains("http or https"),
            "{pattern}"
        );
        let path = Manifest::parse("[secrets]\nnames = [\"../etc/passwd\"]\n").unwrap_err();
        assert!(path.to_string().contains("name a file"), "{path}");
    }

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

    #[test]
    fn callers_anonymous_is_explicit_and_only_beside_callers() {
        let manifest = Manifest::parse("callers = [\"a*\"]\n").unwrap();
        assert_eq!(manifest.callers_anonymous, None);
        let manifest = Manifest::parse("callers = [\"a*\"]\ncallers-anonymous = true\n").unwrap();
        assert_eq!(manifest.callers_anonymous, Some(true));
        assert!(!manifest.grants_nothing());
        let json = serde_json::to_value(&manifest).unwrap();
        assert_eq!(json["callers-anonymous"], true, "{json}");
        let manifest = Manifest::parse("callers = [\"a*\"]\ncallers-anonymous = false\n").unwrap();
        assert_eq!(manifest.callers_anonymous, Some(false));
        // Without callers, everyone may call: the setting would say nothing,
        // or (false) promise what is not done.
        for value in ["true", "false"] {
            let alone = Manifest::parse(&format!("\ncallers-anonymous = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                alone.contains("line 2") && alone.contains("callers = [\"*\"]"),
                "{alone}"
            );
        }
        let typo = Manifest::parse("callers = [\"a\"]\ncallers_anonymous = true\n");
        assert!(typo.is_err(), "the key is spelt with a hyphen");
    }

    #[test]
    fn grants_say_when_requests_without_user_id_are_let_in() {
        let grants = EffectiveGrants {
            manifest: None,
            callers: Some(vec!["a*".to_owned()]),
            callers_anonymous: true,
            quota: Quota::default(),
            timeout_ms: 1000,
            memory_bytes: 1 << 20,
            reply_bytes: 1 << 20,
            concurrency: 1,
            config: Vec::new(),
            secrets: Vec::new(),
            http: Vec::new(),
            http_calls: 0,
            http_bytes: 0,
        };
        assert!(
            grants
                .to_string()
                .contains("callers [a*] and requests without user_id"),
            "{grants}"
        );
        let json = serde_json::to_value(&grants).unwrap();
        assert_eq!(json["callers_anonymous"], true);
        let listed_only = EffectiveGrants {
            callers_anonymous: false,
            ..grants
        };
        assert!(listed_only.to_string().contains("callers [a*], "));
        let json = serde_json::to_value(&listed_only).unwrap();
        assert!(json.get("callers_anonymous").is_none(), "{json}");
        let read: EffectiveGrants = serde_json::from_value(json).unwrap();
        assert!(
            !read.callers_anonymous,
            "older hosts' status reads as false"
        );
    }

    #[test]
    fn caller_patterns_match_a_run_of_characters() {
        assert!(name_matches("billing-*", "billing-eu"));
        assert!(name_matches("billing-*", "billing-"));
        assert!(!name_matches("billing-*", "bill"));
        assert!(name_matches("alice", "alice"));
        assert!(!name_matches("alice", "alice2"));
        assert!(name_matches("*", "anyone"));
        assert!(name_matches("a*z", "abcz"));
    }
}
