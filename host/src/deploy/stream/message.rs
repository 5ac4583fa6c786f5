//! One message read from the deploy stream: what it is (a deploy or a part
//! of one, a sync marker, a host's claim, or something no deploying user
//! published), where it is, and what it costs in the stream.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use warren_protocol::deploy::{
    DeployHeaders, HEADER_DEPLOY_CLAIM, HEADER_DEPLOY_SYNC, HEADER_STREAM_OFFSET, Part,
};
use warren_protocol::header_text;

use crate::deploy::keeper::MESSAGE_OVERHEAD;
use crate::deploy::parts::Joined;

/// One message read from the stream, before it is handled.
pub struct MessageRead {
    pub offset: Option<u64>,
    /// What it costs in the stream, for the [`crate::deploy::keeper::Keeper`].
    pub size: u64,
    /// What the whole deploy it completes costs (more than `size` when it
    /// came in parts).
    pub whole: u64,
    /// Set when it was a claim ([`HEADER_DEPLOY_CLAIM`]).
    pub claim: Option<Claim>,
}

/// A host's claim to publish the copy of a procedure's deploy.
pub struct Claim {
    pub name: String,
    pub digest: Option<String>,
    pub host: String,
}

impl MessageRead {
    pub fn of(offset: Option<u64>, size: u64) -> Self {
        MessageRead {
            offset,
            size,
            whole: size,
            claim: None,
        }
    }
}

/// What a stream message is, by its headers and its publisher.
pub enum MessageKind {
    /// Not published by a deploying user
    /// ([`crate::deploy::policy::DeployPolicy::publishers`]): skipped unread.
    Foreign,
    /// A sync marker ([`HEADER_DEPLOY_SYNC`]).
    Marker,
    /// A claim ([`HEADER_DEPLOY_CLAIM`]): counted only when it names a
    /// procedure and a host published it.
    Claim(Option<Claim>),
    /// A deploy, or a part of one.
    Deploy(DeployHeaders),
}

/// What a message with these `headers` is, given whether its publisher is
/// a deploying user (`publisher_admitted`) and whether it is a host
/// (`claim_admitted`).
pub fn classify(
    headers: Option<&FieldTable>,
    publisher_admitted: bool,
    claim_admitted: bool,
) -> MessageKind {
    if !publisher_admitted {
        return MessageKind::Foreign;
    }
    if header_text(headers, HEADER_DEPLOY_SYNC).is_some() {
        return MessageKind::Marker;
    }
    let deploy = DeployHeaders::read(headers);
    if let Some(host) = header_text(headers, HEADER_DEPLOY_CLAIM) {
        let claim = deploy.name.filter(|_| claim_admitted).map(|name| Claim {
            name,
            digest: deploy.digest,
            host,
        });
        return MessageKind::Claim(claim);
    }
    MessageKind::Deploy(deploy)
}

/// Whether a message with these `headers` is the sync marker `marker`.
pub fn is_marker(headers: Option<&FieldTable>, marker: &str) -> bool {
    header_text(headers, HEADER_DEPLOY_SYNC).is_some_and(|sync| sync == marker)
}

/// How many messages the deploy a message belongs to takes: its parts, or
/// one (a deploy in one message, or part headers that cannot be read).
pub fn part_count(part: &Option<Result<Part, String>>) -> u64 {
    part.as_ref()
        .map_or(1, |part| part.as_ref().map_or(1, |p| u64::from(p.count)))
}

/// What the whole deploy a message of `size` bytes completes costs in the
/// stream: its module and every one of its `parts` messages, when it
/// completes one; just `size` otherwise.
pub fn whole_size(joined: &Joined, parts: u64, size: u64) -> u64 {
    match joined {
        Joined::Whole(request) => request.module.len() as u64 + parts * MESSAGE_OVERHEAD,
        _ => size,
    }
}

/// The stream offset RabbitMQ put on a message read from a stream.
pub fn stream_offset(properties: &BasicProperties) -> Option<u64> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get(HEADER_STREAM_OFFSET)?
    {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongUInt(offset) => Some(u64::from(*offset)),
        AMQPValue::LongInt(offset) => u64::try_from(*offset).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use warren_protocol::deploy::{
        HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME, HEADER_DEPLOY_PART, HEADER_DEPLOY_PARTS_ID,
    };
    use warren_protocol::set_header_text;

    use super::*;
    use crate::deploy::checks::DeployRequest;

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in pairs {
            set_header_text(&mut table, name, value);
        }
        table
    }

    #[test]
    fn a_message_no_deploying_user_published_is_foreign_whatever_it_says() {
        let marker = table(&[(HEADER_DEPLOY_SYNC, "m")]);
        assert!(matches!(
            classify(Some(&marker), false, true),
            MessageKind::Foreign
        ));
        assert!(matches!(classify(None, false, true), MessageKind::Foreign));
    }

    #[test]
    fn markers_claims_and_deploys_are_told_apart() {
        let marker = table(&[(HEADER_DEPLOY_SYNC, "m"), (HEADER_DEPLOY_NAME, "a")]);
        assert!(matches!(
            classify(Some(&marker), true, true),
            MessageKind::Marker
        ));
        let claim = table(&[
            (HEADER_DEPLOY_CLAIM, "h1"),
            (HEADER_DEPLOY_NAME, "a"),
            (HEADER_DEPLOY_DIGEST, "sha256:a"),
        ]);
        let MessageKind::Claim(Some(read)) = classify(Some(&claim), true, true) else {
            panic!("a host's claim naming a procedure counts");
        };
        assert_eq!(
            (
                read.name.as_str(),
                read.digest.as_deref(),
                read.host.as_str()
            ),
            ("a", Some("sha256:a"), "h1")
        );
        let deploy = table(&[(HEADER_DEPLOY_NAME, "a")]);
        let MessageKind::Deploy(headers) = classify(Some(&deploy), true, false) else {
            panic!("a deploy");
        };
        assert_eq!(headers.name.as_deref(), Some("a"));
    }

    #[test]
    fn a_claim_counts_only_from_a_host_and_naming_a_procedure() {
        let claim = table(&[(HEADER_DEPLOY_CLAIM, "h1"), (HEADER_DEPLOY_NAME, "a")]);
        assert!(matches!(
            classify(Some(&claim), true, false),
            MessageKind::Claim(None)
        ));
        let nameless = table(&[(HEADER_DEPLOY_CLAIM, "h1")]);
        assert!(matches!(
            classify(Some(&nameless), true, true),
            MessageKind::Claim(None)
        ));
    }

    #[test]
    fn only_this_hosts_marker_ends_its_catching_up() {
        let marker = table(&[(HEADER_DEPLOY_SYNC, "mine")]);
        assert!(is_marker(Some(&marker), "mine"));
        assert!(!is_marker(Some(&marker), "another"));
        assert!(!is_marker(None, "mine"));
    }

    #[test]
    fn a_deploy_in_parts_costs_its_module_and_every_part() {
        let parts = table(&[(HEADER_DEPLOY_PART, "3/3"), (HEADER_DEPLOY_PARTS_ID, "p")]);
        let part = Part::read(Some(&parts));
        assert_eq!(part_count(&part), 3);
        assert_eq!(part_count(&None), 1);
        assert_eq!(part_count(&Some(Err("unreadable".into()))), 1);
        let whole = Joined::Whole(DeployRequest {
            module: vec![0; 5000],
            ..DeployRequest::default()
        });
        assert_eq!(whole_size(&whole, 3, 2000), 5000 + 3 * MESSAGE_OVERHEAD);
        assert_eq!(whole_size(&Joined::Partial, 3, 2000), 2000);
        assert_eq!(whole_size(&Joined::Skipped, 3, 2000), 2000);
    }

    #[test]
    fn the_offset_is_read_from_any_integer_the_broker_writes() {
        let with = |value: AMQPValue| {
            let mut table = FieldTable::default();
            table.insert(HEADER_STREAM_OFFSET.into(), value);
            stream_offset(&BasicProperties::default().with_headers(table))
        };
        assert_eq!(with(AMQPValue::LongLongInt(42)), Some(42));
        assert_eq!(with(AMQPValue::LongUInt(7)), Some(7));
        assert_eq!(with(AMQPValue::LongInt(3)), Some(3));
        assert_eq!(with(AMQPValue::LongLongInt(-1)), None);
        assert_eq!(with(AMQPValue::LongString("5".into())), None);
        assert_eq!(stream_offset(&BasicProperties::default()), None);
    }
}
