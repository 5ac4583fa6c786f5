//! What one request may use: one [`Limits`] type for the host's flags
//! (`--timeout`, `--max-memory`, …), a manifest's `[limits]` table and the
//! sandbox that enforces them.
//!
//! Each limit is optional: unset means "not said here". The host's
//! defaults are [`Limits::DEFAULT`], written once; the host's flags show
//! them in `--help`, and the accessors ([`Limits::timeout`], …) give a
//! limit's value or its default where a concrete number is needed. A
//! manifest can only lower the host's limits, never raise them: the
//! operator's flags are the ceiling for code they did not write. That rule
//! is [`Limits::lowered_by`], and nothing else spells it out.
//!
//! Adding a limit touches this type: its field (with its serde attributes:
//! `#[serde(skip)]` when a manifest may not set it, which keeps the key
//! refused as unknown), its value in [`Limits::DEFAULT`], its accessor and
//! its line in [`Limits::with_defaults`] and [`Limits::lowered_by`], and
//! this file's tests. Besides: its flag in `warren-host`'s `LimitOptions`
//! (`host/src/config.rs`), which takes its shown default from
//! [`Limits::DEFAULT`]; the sandbox code that enforces it; a field in
//! [`crate::manifest::EffectiveGrants`] (set in its `new`) if `warren
//! status` is to show it; and `docs/manifests.md` and `docs/operating.md`
//! where a manifest or an operator can set it.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The limits a request runs under, each optional. As a manifest's
/// `[limits]` table only `timeout`, `memory`, `reply` and `concurrency`
/// may be written (any other key is refused, naming the line); each, when
/// given, lowers the host's own for that procedure.
///
/// `Limits::default()` sets nothing (what a manifest without `[limits]`
/// says); [`Limits::DEFAULT`] is the host's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
// What a message says a manifest's `[limits]` should have been ("limits =
// 3": "expected struct ManifestLimits"): the name the table's type had
// before it was the host's too, kept so that messages read as they did.
#[serde(deny_unknown_fields, expecting = "struct ManifestLimits")]
pub struct Limits {
    /// Wall-clock budget of one request, wasm code and host calls alike
    /// (`"2s"`).
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "write_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Most linear memory one request's instance may grow to, in bytes
    /// (`"32MiB"`).
    #[serde(
        default,
        deserialize_with = "size",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
    /// Largest request body the guest will be given, in bytes. The host's
    /// only: not a manifest key.
    #[serde(skip)]
    pub request: Option<u64>,
    /// Largest reply body the host will send, in bytes (`"1MiB"`).
    #[serde(
        default,
        deserialize_with = "size",
        skip_serializing_if = "Option::is_none"
    )]
    pub reply: Option<u64>,
    /// Most guest stdout (and, separately, stderr) kept per request, in
    /// bytes. The host's only: not a manifest key.
    #[serde(skip)]
    pub output: Option<u64>,
    /// How many requests run at once: on the host, all of them; in a
    /// manifest, this procedure's on one host.
    #[serde(
        default,
        deserialize_with = "concurrency",
        skip_serializing_if = "Option::is_none"
    )]
    pub concurrency: Option<usize>,
}

impl Limits {
    /// The host's defaults, what `warren-host --help` shows. Concurrency
    /// has none here: its default is the number of cores, known only at
    /// run time ([`Limits::concurrency`]).
    pub const DEFAULT: Limits = Limits {
        timeout: Some(Duration::from_secs(10)),
        memory: Some(64 << 20),
        request: Some(4 << 20),
        reply: Some(4 << 20),
        output: Some(64 << 10),
        concurrency: None,
    };

    /// Whether it sets no limit at all.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The wall-clock budget of one request, or the default.
    pub fn timeout(&self) -> Duration {
        const DEFAULT: Duration = Limits::DEFAULT.timeout.unwrap();
        self.timeout.unwrap_or(DEFAULT)
    }

    /// The most linear memory one request may use, in bytes, or the
    /// default.
    pub fn memory(&self) -> u64 {
        const DEFAULT: u64 = Limits::DEFAULT.memory.unwrap();
        self.memory.unwrap_or(DEFAULT)
    }

    /// The largest request body, in bytes, or the default; a body is held
    /// in memory, so this is a `usize` (the most one can be, where a
    /// `usize` is narrower).
    pub fn request(&self) -> usize {
        const DEFAULT: u64 = Limits::DEFAULT.request.unwrap();
        saturating_usize(self.request.unwrap_or(DEFAULT))
    }

    /// The largest reply body, in bytes, or the default (a `usize`, as
    /// [`Limits::request`]).
    pub fn reply(&self) -> usize {
        const DEFAULT: u64 = Limits::DEFAULT.reply.unwrap();
        saturating_usize(self.reply.unwrap_or(DEFAULT))
    }

    /// The guest output kept per request and stream, in bytes, or the
    /// default (a `usize`, as [`Limits::request`]).
    pub fn output(&self) -> usize {
        const DEFAULT: u64 = Limits::DEFAULT.output.unwrap();
        saturating_usize(self.output.unwrap_or(DEFAULT))
    }

    /// How many requests run at once, or the default: the number of cores
    /// (asked each time: fill it in once with [`Limits::with_defaults`]).
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Every limit set: this one's, or the default (concurrency: the
    /// number of cores, now). What the host runs under, so that a limit
    /// it did not set is still a ceiling in [`Limits::lowered_by`].
    pub fn with_defaults(&self) -> Limits {
        Limits {
            timeout: self.timeout.or(Limits::DEFAULT.timeout),
            memory: self.memory.or(Limits::DEFAULT.memory),
            request: self.request.or(Limits::DEFAULT.request),
            reply: self.reply.or(Limits::DEFAULT.reply),
            output: self.output.or(Limits::DEFAULT.output),
            concurrency: Some(self.concurrency()),
        }
    }

    /// These limits lowered by `other`'s: each limit the lower of the two,
    /// and one that only one side sets that side's. How a manifest's
    /// `[limits]` applies to the host's (`host.lowered_by(&manifest.limits)`):
    /// a manifest can lower a limit, never raise it. The host's side should
    /// have every limit set ([`Limits::with_defaults`]), or a limit the host
    /// left to its default is no ceiling.
    pub fn lowered_by(&self, other: &Limits) -> Limits {
        fn lower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Limits {
            timeout: lower(self.timeout, other.timeout),
            memory: lower(self.memory, other.memory),
            request: lower(self.request, other.request),
            reply: lower(self.reply, other.reply),
            output: lower(self.output, other.output),
            concurrency: lower(self.concurrency, other.concurrency),
        }
    }
}

fn saturating_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
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

fn concurrency<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let count = i64::deserialize(deserializer)?;
    match usize::try_from(count) {
        Ok(count) if count >= 1 => Ok(Some(count)),
        _ => Err(serde::de::Error::custom(
            "concurrency must be a whole number of at least 1",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let unset = Limits::default();
        assert!(unset.is_empty());
        assert_eq!(unset.timeout(), Duration::from_secs(10));
        assert_eq!(unset.memory(), 64 << 20);
        assert_eq!(unset.request(), 4 << 20);
        assert_eq!(unset.reply(), 4 << 20);
        assert_eq!(unset.output(), 64 << 10);
        assert!(unset.concurrency() >= 1);
        let filled = unset.with_defaults();
        assert_eq!(
            filled,
            Limits {
                concurrency: Some(unset.concurrency()),
                ..Limits::DEFAULT
            }
        );
        let set = Limits {
            timeout: Some(Duration::from_secs(1)),
            concurrency: Some(3),
            ..Limits::default()
        };
        assert_eq!(set.with_defaults().timeout, Some(Duration::from_secs(1)));
        assert_eq!(set.with_defaults().concurrency, Some(3));
    }

    #[test]
    fn limits_are_only_lowered() {
        let host = Limits {
            concurrency: Some(4),
            ..Limits::DEFAULT
        };
        let lower = Limits {
            timeout: Some(Duration::from_secs(2)),
            memory: Some(1 << 20),
            concurrency: Some(2),
            ..Limits::default()
        };
        let lowered = host.lowered_by(&lower);
        assert_eq!(lowered.timeout, Some(Duration::from_secs(2)));
        assert_eq!(lowered.memory, Some(1 << 20));
        assert_eq!(lowered.concurrency, Some(2));
        assert_eq!(lowered.reply, host.reply, "unset: the host's");
        assert_eq!(lowered.request, host.request);
        let higher = Limits {
            timeout: Some(Duration::from_secs(3600)),
            memory: Some(4 << 30),
            reply: Some(1 << 40),
            concurrency: Some(64),
            ..Limits::default()
        };
        assert_eq!(host.lowered_by(&higher), host);
        assert_eq!(
            Limits::default().lowered_by(&lower),
            lower,
            "one side only: that side's"
        );
    }

    #[test]
    fn a_manifest_sets_only_its_four_limits() {
        let manifest = Manifest::parse("[limits]\nreply = \"1MiB\"\n").unwrap();
        assert_eq!(manifest.limits.reply, Some(1 << 20));
        for key in ["request = \"1MiB\"", "output = \"1KiB\""] {
            let refused = Manifest::parse(&format!("[limits]\n{key}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains("line 2")
                    && refused.contains("unknown field")
                    && refused.contains("`timeout`, `memory`, `reply`, `concurrency`"),
                "{refused}"
            );
        }
        let json = serde_json::to_value(Limits::DEFAULT).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"timeout": "10s", "memory": 64 << 20, "reply": 4 << 20})
        );
    }
}
