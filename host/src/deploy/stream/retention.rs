//! Whether a deploy stream that already exists keeps enough for Warren: a
//! stream that drops deploys by age, or keeps too few bytes for hosts to
//! publish deploys again before it drops them, is refused at start.

use warren_protocol::deploy::{DeclaredStream, StreamRetention};

/// A deploy stream that exists with a retention too short for Warren: a
/// setup a person must change (the message says how).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RetentionRefused(String);

/// How many of the largest modules a host accepts must fit in what may
/// follow a deploy before it is published again
/// ([`StreamRetention::republish_after`]).
const MODULES_THE_STREAM_MUST_KEEP: u64 = 4;

/// Checks a deploy stream that already existed with other `settings`
/// than this host declares, and says how it is used.
pub fn check_existing(
    declared: &DeclaredStream,
    settings: &str,
    max_module_bytes: usize,
) -> Result<(), RetentionRefused> {
    check_retention(
        &declared.name,
        declared.retention,
        declared.max_age.as_deref(),
        settings,
        max_module_bytes,
    )?;
    if declared.retention.max_bytes == u64::MAX {
        tracing::warn!(
            stream = %declared.name,
            "the deploy stream exists without a byte limit ({settings}): it is used, but \
             anyone who may publish a request can grow it until the broker's disk alarm \
             stops every publisher. Delete it (rabbitmqctl delete_queue {}) when no \
             deploy is under way; hosts declare it anew with a limit",
            declared.name
        );
    } else {
        tracing::info!(
            stream = %declared.name,
            "the deploy stream exists with other settings than this host declares \
             ({settings}): it is used as it is"
        );
    }
    Ok(())
}

/// Refuses a stream that drops messages by age, or keeps too few bytes for
/// hosts to publish deploys again before it drops them.
fn check_retention(
    name: &str,
    retention: StreamRetention,
    max_age: Option<&str>,
    settings: &str,
    max_module_bytes: usize,
) -> Result<(), RetentionRefused> {
    let needed = MODULES_THE_STREAM_MUST_KEEP.saturating_mul(max_module_bytes as u64);
    let why = if let Some(age) = max_age {
        format!(
            "it drops messages older than {age} (x-max-age), so a procedure not deployed for \
             that long disappears for hosts that start later"
        )
    } else if retention.republish_after() < needed {
        format!(
            "it keeps too few bytes: hosts publish a deploy again once half of what the stream \
             keeps beyond a segment follows it, {} bytes here, which must hold at least \
             {MODULES_THE_STREAM_MUST_KEEP} of the largest modules this host accepts \
             ({needed} bytes; --max-module-bytes)",
            retention.republish_after()
        )
    } else {
        return Ok(());
    };
    Err(RetentionRefused(format!(
        "the deploy stream {name} exists with settings that keep less than Warren needs \
         ({settings}): {why}. To fix it, delete it (rabbitmqctl delete_queue {name}): hosts \
         declare it anew at their next try (1 GiB in 16 MiB segments, no age limit), keep \
         serving their modules folders and still refuse deploys older than their records; then \
         deploy each procedure again, so that hosts started later find it"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETENTION: StreamRetention = StreamRetention {
        max_bytes: 1000,
        segment_bytes: 200,
    };

    fn refusal(
        retention: StreamRetention,
        max_age: Option<&str>,
        max_module_bytes: usize,
    ) -> Option<String> {
        check_retention("s", retention, max_age, "x=1", max_module_bytes)
            .err()
            .map(|refused| refused.to_string())
    }

    #[test]
    fn a_stream_keeping_four_of_the_largest_modules_is_used() {
        assert_eq!(RETENTION.republish_after(), 400);
        assert_eq!(refusal(RETENTION, None, 100), None);
        let unlimited = StreamRetention {
            max_bytes: u64::MAX,
            ..RETENTION
        };
        assert_eq!(refusal(unlimited, None, 1 << 30), None);
    }

    #[test]
    fn a_stream_keeping_fewer_bytes_is_refused_with_what_to_do() {
        let why = refusal(RETENTION, None, 101).expect("404 bytes needed, 400 kept");
        assert!(why.contains("keeps too few bytes"), "{why}");
        assert!(why.contains("400 bytes here"), "{why}");
        assert!(why.contains("(404 bytes; --max-module-bytes)"), "{why}");
        assert!(why.contains("(x=1)"), "{why}");
        assert!(why.contains("rabbitmqctl delete_queue s"), "{why}");
    }

    #[test]
    fn a_stream_dropping_messages_by_age_is_refused_however_much_it_keeps() {
        let unlimited = StreamRetention {
            max_bytes: u64::MAX,
            ..RETENTION
        };
        let why = refusal(unlimited, Some("7D"), 1).expect("an age limit");
        assert!(why.contains("older than 7D (x-max-age)"), "{why}");
    }
}
