//! The deploy stream itself: its name, how much it keeps, and declaring it
//! (or finding out how a stream that already exists was declared).

use lapin::types::{AMQPValue, FieldTable};

/// The stream that carries deploys for the hosts of `queue`.
pub fn deploy_stream(queue: &str) -> String {
    format!("{queue}{}", crate::values::DEPLOYS_SUFFIX)
}

/// How much of its history the deploy stream keeps: the newest
/// `max_bytes`, dropped from the oldest end a whole segment of
/// `segment_bytes` at a time (RabbitMQ's stream retention), so it holds
/// between `max_bytes - segment_bytes` and `max_bytes` once full. Hosts
/// re-publish the newest deploy of each procedure before the stream would
/// drop it ([`StreamRetention::republish_after`]), so the stream never
/// grows past this and still holds everything a host started later needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRetention {
    /// `x-max-length-bytes`.
    pub max_bytes: u64,
    /// `x-stream-max-segment-size-bytes`.
    pub segment_bytes: u64,
}

impl StreamRetention {
    /// What Warren declares: 1 GiB, in 16 MiB segments.
    pub const DEFAULT: StreamRetention = StreamRetention {
        max_bytes: 1 << 30,
        segment_bytes: 16 << 20,
    };

    /// What a stream declared by an earlier Warren has: 1 GiB, in
    /// RabbitMQ's default segments of 500 MB.
    pub const EARLIER: StreamRetention = StreamRetention {
        max_bytes: 1 << 30,
        segment_bytes: 500_000_000,
    };

    /// Once this many bytes follow the newest copy of a deploy in the
    /// stream, hosts publish it again. A message survives while fewer than
    /// `max_bytes - segment_bytes` follow it; half of that leaves room for
    /// the copies of every other procedure published meanwhile (as long as
    /// the newest deploys of all procedures together take less than this).
    pub fn republish_after(&self) -> u64 {
        self.max_bytes.saturating_sub(self.segment_bytes) / 2
    }
}

impl Default for StreamRetention {
    fn default() -> Self {
        StreamRetention::DEFAULT
    }
}

/// RabbitMQ's segment size for a stream declared without one.
const BROKER_DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// The deploy stream of a queue, declared and open on a channel.
pub struct DeclaredStream {
    /// The channel it was declared on, to read or publish it with.
    pub channel: lapin::Channel,
    /// The stream's name ([`deploy_stream`]).
    pub name: String,
    /// Its retention: as declared or, for a stream that already existed
    /// with other settings, as the broker says it has (`max_bytes` is
    /// `u64::MAX` when it has no byte limit).
    pub retention: StreamRetention,
    /// Its time limit (`x-max-age`, as RabbitMQ writes it: `7D`, `1h`…),
    /// if it has one: a stream that drops messages by age drops deploys
    /// however few bytes follow them.
    pub max_age: Option<String>,
    /// Set when the stream already existed with other settings than
    /// asked for: those settings, `name=value` joined with `, `.
    pub existing: Option<String>,
}

/// The arguments that decide what a stream keeps, which RabbitMQ compares
/// when a stream is declared again.
const RETENTION_ARGUMENTS: [&str; 3] = [
    "x-max-length-bytes",
    "x-stream-max-segment-size-bytes",
    "x-max-age",
];

/// Declares the deploy stream of `queue` on a new channel of `connection`
/// (durable, with `retention`) and returns it. RabbitMQ refuses a
/// redeclaration whose retention differs, naming one argument the stream
/// has and its value; so a stream that already exists with other settings
/// (declared by an earlier Warren, or by hand) is declared again with what
/// the broker said until it matches, which tells the caller exactly what
/// the stream keeps. Needs RabbitMQ 3.9 or later.
pub async fn declare_deploy_stream(
    connection: &lapin::Connection,
    queue: &str,
    retention: StreamRetention,
) -> lapin::Result<DeclaredStream> {
    let name = deploy_stream(queue);
    let mut arguments: Vec<(&'static str, AMQPValue)> = vec![
        (
            "x-max-length-bytes",
            AMQPValue::LongLongInt(i64::try_from(retention.max_bytes).unwrap_or(i64::MAX)),
        ),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(i64::try_from(retention.segment_bytes).unwrap_or(i64::MAX)),
        ),
    ];
    let mut differed = false;
    let mut last_refusal = None;
    // One round per argument that can differ, and one to succeed.
    for _ in 0..=RETENTION_ARGUMENTS.len() {
        let channel = connection.create_channel().await?;
        match declare(&channel, &name, &arguments).await {
            Ok(()) => {
                let declared = if differed {
                    existing(channel, name, &arguments)
                } else {
                    DeclaredStream {
                        channel,
                        name,
                        retention,
                        max_age: None,
                        existing: None,
                    }
                };
                return Ok(declared);
            }
            Err(error)
                if crate::broker_said(
                    &error,
                    lapin::protocol::AMQPSoftError::PRECONDITIONFAILED,
                ) =>
            {
                // That channel is closed now; the next round opens another.
                let said = error.to_string();
                let Some((argument, current)) = current_argument(&said) else {
                    return Err(error);
                };
                let Some(argument) = RETENTION_ARGUMENTS.iter().find(|known| **known == argument)
                else {
                    return Err(error);
                };
                arguments.retain(|(name, _)| name != argument);
                if let Some(value) = current {
                    arguments.push((argument, value));
                }
                differed = true;
                last_refusal = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Err(last_refusal.expect("every round that did not return was refused"))
}

/// Opens the deploy stream of `queue` to publish to: on a new channel of
/// `connection`, passively (so a deployer needs no `configure` permission
/// on a stream the hosts made, a permission that would also let it delete
/// the stream), declaring it with [`StreamRetention::DEFAULT`] only when it
/// does not exist yet. Returns the channel and the stream's name.
pub async fn open_deploy_stream(
    connection: &lapin::Connection,
    queue: &str,
) -> lapin::Result<(lapin::Channel, String)> {
    use lapin::options::QueueDeclareOptions;
    let name = deploy_stream(queue);
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match channel
        .queue_declare(name.as_str().into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => Ok((channel, name)),
        Err(error) if crate::broker_said(&error, lapin::protocol::AMQPSoftError::NOTFOUND) => {
            let declared =
                declare_deploy_stream(connection, queue, StreamRetention::DEFAULT).await?;
            Ok((declared.channel, declared.name))
        }
        Err(error) => Err(error),
    }
}

async fn declare(
    channel: &lapin::Channel,
    name: &str,
    retention: &[(&'static str, AMQPValue)],
) -> lapin::Result<()> {
    use lapin::options::QueueDeclareOptions;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    for (name, value) in retention {
        arguments.insert((*name).into(), value.clone());
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), durable, arguments)
        .await
        .map(|_| ())
}

/// A stream that existed with other settings, now that `arguments` are
/// what it has.
fn existing(
    channel: lapin::Channel,
    name: String,
    arguments: &[(&'static str, AMQPValue)],
) -> DeclaredStream {
    let get = |wanted: &str| {
        arguments
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| value)
    };
    let number = |wanted: &str| {
        get(wanted).and_then(|value| match value {
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongString(text) => {
                String::from_utf8_lossy(text.as_bytes()).trim().parse().ok()
            }
            _ => None,
        })
    };
    let text = |value: &AMQPValue| match value {
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    let shown = RETENTION_ARGUMENTS
        .iter()
        .map(|name| match get(name) {
            Some(value) => format!("{name}={}", text(value)),
            None => format!("{name} unset"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    DeclaredStream {
        channel,
        name,
        retention: StreamRetention {
            max_bytes: number("x-max-length-bytes").unwrap_or(u64::MAX),
            segment_bytes: number("x-stream-max-segment-size-bytes")
                .unwrap_or(BROKER_DEFAULT_SEGMENT_BYTES),
        },
        max_age: get("x-max-age").map(text),
        existing: Some(shown),
    }
}

/// From RabbitMQ's refusal of a redeclaration, the argument it named and
/// the value the existing queue has for it (`None`: unset). RabbitMQ says
/// `inequivalent arg 'K' for queue 'Q' in vhost 'V': received … but current
/// is C`, where C is `none`, `'V'`, or `the value 'V' of type 'T'`.
fn current_argument(said: &str) -> Option<(String, Option<AMQPValue>)> {
    let after = said.split_once("inequivalent arg '")?.1;
    let (argument, rest) = after.split_once('\'')?;
    let current = rest.rsplit_once("but current is ")?.1.trim();
    if current.starts_with("none") {
        return Some((argument.to_owned(), None));
    }
    let current = current.strip_prefix("the value ").unwrap_or(current);
    let value = current.strip_prefix('\'')?.split('\'').next()?;
    let value = match value.parse::<i64>() {
        Ok(number) => AMQPValue::LongLongInt(number),
        Err(_) => AMQPValue::LongString(value.into()),
    };
    Some((argument.to_owned(), Some(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_value_is_read_from_each_form_rabbitmq_gives() {
        let q = "PRECONDITION_FAILED - inequivalent arg";
        let cases = [
            (
                format!(
                    "{q} 'x-max-length-bytes' for queue 'q.deploys' in vhost '/': received '1073741824' but current is '1000'"
                ),
                "x-max-length-bytes",
                Some(AMQPValue::LongLongInt(1000)),
            ),
            (
                format!(
                    "{q} 'x-max-age' for queue 'q' in vhost '/': received none but current is the value '1h' of type 'longstr'"
                ),
                "x-max-age",
                Some(AMQPValue::LongString("1h".into())),
            ),
            (
                format!(
                    "{q} 'x-stream-max-segment-size-bytes' for queue 'q' in vhost '/': received the value '16777216' of type 'signedint' but current is none"
                ),
                "x-stream-max-segment-size-bytes",
                None,
            ),
            (
                format!(
                    "{q} 'x-max-length-bytes' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'signedint'"
                ),
                "x-max-length-bytes",
                Some(AMQPValue::LongLongInt(1000)),
            ),
        ];
        for (said, argument, value) in cases {
            assert_eq!(
                current_argument(&said),
                Some((argument.to_owned(), value)),
                "{said}"
            );
        }
        assert_eq!(current_argument("NOT_FOUND - no queue"), None);
    }
}
