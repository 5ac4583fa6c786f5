//! `[quota]`: how much one caller may use of a procedure, on one host;
//! also the shape of a host's per-caller defaults.

use serde::{Deserialize, Deserializer, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

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
}
