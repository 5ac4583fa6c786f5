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
//!
//! Here: the manifest, its parsing and checks, and `[secrets]`; `[limits]`
//! is the one [`Limits`] ([`crate::limits`]); `quota` is `[quota]`, `http`
//! is `[http]` and its allow rules, `names` the `callers` patterns, and
//! `grants` what a manifest grants on one host ([`EffectiveGrants`]).

mod grants;
mod http;
mod names;
mod quota;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::limits::Limits;
pub use grants::EffectiveGrants;
pub use http::{DEFAULT_HTTP_BYTES, DEFAULT_HTTP_CALLS, Http, HttpPattern};
pub use names::name_matches;
pub use quota::{Quota, parse_percent};

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
    /// `[limits]`: limits below the host's own ([`Limits::lowered_by`]).
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
