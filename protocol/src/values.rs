//! The rules for values the host and the client both take on their command
//! lines (and callers pass to the library): queue names, sizes, durations.
//! Each returns a message that says the rule, so a nonsense value is a usage
//! error (exit 2) before anything reaches the broker, instead of a panic or
//! a broker error later.

use std::time::Duration;

/// What Warren appends to a request queue's name to name its deploy stream
/// ([`crate::deploy::deploy_stream`]).
pub const DEPLOYS_SUFFIX: &str = ".deploys";
/// ... its dead-letter queue ([`crate::dead_letter_queue`]).
pub const DEAD_LETTERS_SUFFIX: &str = ".dead";
/// ... its control exchange ([`crate::status::control_exchange`]).
pub const CONTROL_SUFFIX: &str = ".control";

/// The longest of the suffixes above: what a queue name must leave room for.
const LONGEST_SUFFIX: usize = {
    let (a, b, c) = (
        DEPLOYS_SUFFIX.len(),
        DEAD_LETTERS_SUFFIX.len(),
        CONTROL_SUFFIX.len(),
    );
    let ab = if a > b { a } else { b };
    if ab > c { ab } else { c }
};

/// Longest request queue name, in bytes: AMQP's 255, less room for the
/// names Warren derives from it.
pub const MAX_QUEUE_NAME: usize = 255 - LONGEST_SUFFIX;

/// Checks a request queue name: not empty, at most [`MAX_QUEUE_NAME`]
/// bytes, and not one the broker reserves (`amq.`).
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("the queue name is empty; give one with --queue (the seed's is rpc_queue)".to_owned())
    } else if name.len() > MAX_QUEUE_NAME {
        Err(format!(
            "the queue name is {} bytes; at most {MAX_QUEUE_NAME} are allowed (AMQP's 255, less \
             room for the {DEPLOYS_SUFFIX:?} and other queues Warren names after it)",
            name.len(),
        ))
    } else if name.starts_with("amq.") {
        Err(format!(
            "{name:?} starts with \"amq.\", which RabbitMQ reserves for its own queues"
        ))
    } else {
        Ok(())
    }
}

/// [`check_queue_name`] as a command-line value parser.
pub fn queue_name(text: &str) -> Result<String, String> {
    check_queue_name(text).map(|()| text.to_owned())
}

/// [`crate::check_procedure_name`] as a command-line value parser.
pub fn procedure_name(text: &str) -> Result<String, String> {
    crate::check_procedure_name(text).map(|()| text.to_owned())
}

/// Parses a size: `64MiB`, `4MB`, `1048576` (bytes).
pub fn size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{e} (write a size like 64MiB, 4MB or 1048576)"))
}

/// A size as [`size`] reads it back, in the largest binary unit it is a
/// whole number of (`64MiB`, `64KiB`, `1000B`): how a default size is shown
/// in `--help`.
pub fn size_text(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes != 0 && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// A [`size`] of at least one byte.
pub fn nonzero_size(text: &str) -> Result<u64, String> {
    match size(text)? {
        0 => Err("it must be at least 1 byte (0 would refuse everything)".to_owned()),
        bytes => Ok(bytes),
    }
}

/// Parses a duration of at least a millisecond: `500ms`, `10s`, `2m`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write a duration like 500ms, 10s or 2m)"))?;
    if duration < Duration::from_millis(1) {
        return Err("it must be at least 1ms".to_owned());
    }
    Ok(duration)
}

/// A duration that may be zero (`0s`: the thing it bounds is off).
pub fn duration_or_zero(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (write a duration like 0s, 500ms or 2s)"))
}

/// The longest time a caller may wait for a reply: RabbitMQ's longest
/// message `expiration` (2^32 - 1 ms, about 49 days), which a request
/// carries.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_millis(u32::MAX as u64);

/// A caller's timeout: a [`duration`] of at most [`MAX_CALL_TIMEOUT`].
pub fn call_timeout(text: &str) -> Result<Duration, String> {
    let timeout = duration(text)?;
    check_call_timeout(timeout)?;
    Ok(timeout)
}

/// Checks a caller's timeout (see [`call_timeout`]).
pub fn check_call_timeout(timeout: Duration) -> Result<(), String> {
    if timeout < Duration::from_millis(1) {
        Err("the timeout must be at least 1ms".to_owned())
    } else if timeout > MAX_CALL_TIMEOUT {
        Err(
            "the timeout must be at most 49d (RabbitMQ's longest message expiration, \
             2^32-1 ms, which a request carries)"
                .to_owned(),
        )
    } else {
        Ok(())
    }
}

/// `67108864` → `64 MiB`; `1114112` → `1.06 MiB (1114112 bytes)`: exact
/// where it matters, short where it can be.
pub fn format_bytes(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.2} {unit} ({bytes} bytes)", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_leave_room_for_the_names_derived_from_them() {
        assert_eq!(check_queue_name("rpc_queue"), Ok(()));
        assert_eq!(check_queue_name(&"q".repeat(MAX_QUEUE_NAME)), Ok(()));
        let long = check_queue_name(&"q".repeat(250)).unwrap_err();
        assert!(long.contains("at most 247"), "{long}");
        assert!(check_queue_name("").unwrap_err().contains("empty"));
        assert!(
            check_queue_name("amq.gen-1")
                .unwrap_err()
                .contains("reserves")
        );
        let longest = crate::status::control_exchange(&"q".repeat(MAX_QUEUE_NAME));
        assert!(longest.len() <= 255);
    }

    #[test]
    fn nonsense_sizes_and_durations_are_refused_with_the_rule() {
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(nonzero_size("1"), Ok(1));
        assert!(nonzero_size("0").unwrap_err().contains("at least 1 byte"));
        assert!(size("lots").unwrap_err().contains("like 64MiB"));
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert!(duration("0s").unwrap_err().contains("at least 1ms"));
        assert_eq!(duration_or_zero("0s"), Ok(Duration::ZERO));
        assert!(duration_or_zero("soon").unwrap_err().contains("like 0s"));
        let huge = call_timeout("99999999999d").unwrap_err();
        assert!(huge.contains("at most 49d"), "{huge}");
        assert_eq!(call_timeout("49d"), Ok(Duration::from_secs(49 * 86_400)));
    }

    #[test]
    fn sizes_read_well_and_stay_exact() {
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(1114112), "1.06 MiB (1114112 bytes)");
        assert_eq!(format_bytes(512), "512 bytes");
        assert_eq!(format_bytes(4 << 30), "4 GiB");
    }

    #[test]
    fn sizes_are_written_as_they_are_read() {
        for (bytes, text) in [
            (64 << 20, "64MiB"),
            (64 << 10, "64KiB"),
            (4 << 30, "4GiB"),
            (1000, "1000B"),
            (0, "0B"),
            ((1 << 20) + 1, "1048577B"),
        ] {
            assert_eq!(size_text(bytes), text);
            assert_eq!(size(text), Ok(bytes), "{text}");
        }
    }
}
