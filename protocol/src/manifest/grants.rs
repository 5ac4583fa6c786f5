//! What a procedure is granted on one host, as a host logs it and
//! `warren status --json` shows it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Manifest, Quota};
use crate::limits::Limits;

/// What a procedure is granted on one host: its manifest applied to the
/// host's own limits. What a host logs when it loads a procedure and what
/// `warren status --json` shows; it names secrets, never their values.
///
/// Its limits are plain fields (`timeout_ms`, `memory_bytes`,
/// `reply_bytes`, `concurrency`), not a [`Limits`], and are set from the
/// one [`Limits`] in one place, [`EffectiveGrants::new`]. This is what
/// `warren status --json` prints and what clients read, of hosts old and
/// new: concrete numbers in stated units, always present, where a
/// [`Limits`] holds optional values, a `Duration` and host-only limits. A
/// serde adapter around a [`Limits`] would have to rename, convert and
/// require each field to keep this shape, and would hide the shape the
/// wire has; plain fields show it, and old status JSON reads as it did.
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

impl EffectiveGrants {
    /// What `manifest` grants on a host where its requests run under
    /// `limits` (the host's, lowered by the manifest's: see
    /// [`Limits::lowered_by`]); `digest` is the manifest text's, `None`
    /// without a manifest.
    pub fn new(manifest: &Manifest, digest: Option<&str>, limits: &Limits) -> EffectiveGrants {
        let http = manifest.http.as_ref().filter(|http| !http.allow.is_empty());
        EffectiveGrants {
            manifest: digest.map(str::to_owned),
            callers: manifest.callers.clone(),
            callers_anonymous: manifest.callers_anonymous == Some(true),
            quota: manifest.quota,
            timeout_ms: limits.timeout().as_millis() as u64,
            memory_bytes: limits.memory(),
            reply_bytes: limits.reply() as u64,
            concurrency: limits.concurrency() as u64,
            config: manifest.config.keys().cloned().collect(),
            secrets: manifest.secrets.names.clone(),
            http: http.map_or_else(Vec::new, |http| http.allow.clone()),
            http_calls: http.map_or(0, |http| u64::from(http.calls)),
            http_bytes: http.map_or(0, |http| http.bytes),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
