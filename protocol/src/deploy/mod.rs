//! The remote deploy contract: how a module reaches every host of a queue,
//! and how a host knows whom it came from.
//!
//! A deploy is a message (or, for a large module, several: [`Part`]) on the
//! durable RabbitMQ stream [`deploy_stream`]`(queue)`, published through the
//! default exchange. Its body is the module's bytes; its headers name the procedure, the module's
//! digest, a sequence (the deployer's clock in milliseconds since the Unix
//! epoch, [`new_sequence`]), and (when signed) the deployer's ed25519 public
//! key and a signature over [`signed_bytes`]`(name, digest, sequence, manifest)`;
//! a deploy may carry the procedure's manifest ([`HEADER_DEPLOY_MANIFEST`]).
//! Every host of the queue reads the whole stream from its start, so a host
//! that starts after a deploy still finds it; it verifies every entry on
//! replay and serves the newest accepted version of each name. Per name, a
//! host refuses a deploy whose sequence is not above the newest it accepted:
//! the sequence is signed, so replaying an old signed deploy onto the stream
//! cannot roll a procedure back. A host answers each deploy that has
//! a `reply_to` with a JSON [`DeployAnswer`], with the deploy's
//! `correlation_id`. Besides deploys the stream holds sync markers
//! ([`HEADER_DEPLOY_SYNC`]), which hosts use to know they have read it all.
//!
//! The stream keeps only its newest part ([`StreamRetention`]): hosts
//! re-publish the newest deploy of each procedure, unchanged
//! ([`HEADER_DEPLOY_COPY`]), before the stream would drop it, so its size
//! stays bounded and a host that starts later still finds every procedure.
//!
//! A module larger than [`DEPLOY_PART_BYTES`] is split across consecutive
//! messages (`parts`), under one signature.
//!
//! The keys that sign deploys, and their files, are in `keys`.

mod keys;
mod parts;

use serde::{Deserialize, Serialize};

pub use keys::{KeyError, PublicKey, SecretKey, public_key_path, read_trusted_keys};
pub use parts::{
    COMPRESS_FROM_BYTES, DEPLOY_ENCODING, DEPLOY_PART_BYTES, HEADER_DEPLOY_PART,
    HEADER_DEPLOY_PARTS_ID, Part, decode_module, encode_module, publish_deploy, publish_encoded,
};

/// Deploy header: the procedure name the module is for.
pub const HEADER_DEPLOY_NAME: &str = "x-deploy-name";
/// Deploy header: `sha256:<hex>` of the module bytes (the body).
pub const HEADER_DEPLOY_DIGEST: &str = "x-deploy-digest";
/// Deploy header: the signer's public key, `ed25519:<hex>`.
pub const HEADER_DEPLOY_KEY: &str = "x-deploy-key";
/// Deploy header: hex of the ed25519 signature over [`signed_bytes`].
pub const HEADER_DEPLOY_SIGNATURE: &str = "x-deploy-signature";
/// Deploy header: the procedure's manifest, TOML text
/// ([`crate::manifest`]); absent for a deploy without one (no grants). The
/// signature covers its digest.
pub const HEADER_DEPLOY_MANIFEST: &str = "x-deploy-manifest";
/// Deploy header: the deploy's sequence, decimal ([`new_sequence`]).
pub const HEADER_DEPLOY_SEQUENCE: &str = "x-deploy-sequence";
/// Header of a sync marker: a message on the deploy stream that is not a
/// deploy. A host appends one (empty body, a fresh id in this header) when
/// it connects and reads the stream up to it before it takes requests, so it
/// knows it has applied the whole history. Readers skip markers.
pub const HEADER_DEPLOY_SYNC: &str = "x-deploy-sync";
/// Header of a deploy a host re-published, unchanged otherwise, so that the
/// stream keeps it ([`StreamRetention`]): the id of the host that did.
/// Hosts that already serve it skip it quietly.
pub const HEADER_DEPLOY_COPY: &str = "x-deploy-copy";
/// Header RabbitMQ puts on every message read from a stream: its offset.
pub const HEADER_STREAM_OFFSET: &str = "x-stream-offset";

/// The stream that carries deploys for the hosts of `queue`.
pub fn deploy_stream(queue: &str) -> String {
    format!("{queue}.deploys")
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

/// The deploy stream of a queue, declared and open on a channel.
pub struct DeclaredStream {
    /// The channel it was declared on, to read or publish it with.
    pub channel: lapin::Channel,
    /// The stream's name ([`deploy_stream`]).
    pub name: String,
    /// Its retention: as declared, or, for a stream that exists with other
    /// settings (an earlier Warren's), [`StreamRetention::EARLIER`], the
    /// most cautious guess.
    pub retention: StreamRetention,
    /// Set when the stream exists with other settings than asked for: what
    /// the broker said.
    pub mismatch: Option<String>,
}

/// Declares the deploy stream of `queue` on a new channel of `connection`
/// (durable, with `retention`) and returns it. A stream that already exists
/// with other settings (declared by an earlier Warren, which set no segment
/// size) is used as it is: RabbitMQ refuses a redeclaration that differs,
/// so it is then opened passively. Needs RabbitMQ 3.9 or later.
pub async fn declare_deploy_stream(
    connection: &lapin::Connection,
    queue: &str,
    retention: StreamRetention,
) -> lapin::Result<DeclaredStream> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let name = deploy_stream(queue);
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(retention.max_bytes).unwrap_or(i64::MAX)),
    );
    arguments.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(retention.segment_bytes).unwrap_or(i64::MAX)),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(name.as_str().into(), durable, arguments)
        .await;
    match declared {
        Ok(_) => Ok(DeclaredStream {
            channel,
            name,
            retention,
            mismatch: None,
        }),
        Err(error)
            if crate::broker_said(&error, lapin::protocol::AMQPSoftError::PRECONDITIONFAILED) =>
        {
            // That channel is closed now; look at the stream on another.
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            channel
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await?;
            Ok(DeclaredStream {
                channel,
                name,
                retention: StreamRetention::EARLIER,
                mismatch: Some(error.to_string()),
            })
        }
        Err(error) => Err(error),
    }
}

/// What a deploy message's headers say: everything about a deploy but the
/// module itself. A host reads it, a deployer writes it, and a host that
/// re-publishes a deploy to keep it in the stream copies it unchanged (the
/// signature still holds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployHeaders {
    /// Procedure name ([`HEADER_DEPLOY_NAME`]).
    pub name: Option<String>,
    /// Claimed digest of the module ([`HEADER_DEPLOY_DIGEST`]).
    pub digest: Option<String>,
    /// Sequence, decimal ([`HEADER_DEPLOY_SEQUENCE`]).
    pub sequence: Option<String>,
    /// Signer's public key ([`HEADER_DEPLOY_KEY`]).
    pub key: Option<String>,
    /// Hex signature ([`HEADER_DEPLOY_SIGNATURE`]).
    pub signature: Option<String>,
    /// The manifest's text ([`HEADER_DEPLOY_MANIFEST`]).
    pub manifest: Option<String>,
}

impl DeployHeaders {
    /// The headers of a new deploy of `module` as `name`, with its
    /// `manifest` text if it has one, signed by `key` when given, with a
    /// fresh [`new_sequence`].
    pub fn new(name: &str, module: &[u8], manifest: Option<&str>, key: Option<&SecretKey>) -> Self {
        let digest = crate::module_digest(module);
        let manifest_digest = manifest.map(crate::manifest::digest);
        let sequence = new_sequence();
        DeployHeaders {
            name: Some(name.to_owned()),
            key: key.map(|key| key.public_key().to_string()),
            signature: key.map(|key| key.sign(name, &digest, sequence, manifest_digest.as_deref())),
            digest: Some(digest),
            sequence: Some(sequence.to_string()),
            manifest: manifest.map(str::to_owned),
        }
    }

    /// `sha256:<hex>` of the manifest's text, if the deploy has one: what
    /// the signature covers of it.
    pub fn manifest_digest(&self) -> Option<String> {
        self.manifest.as_deref().map(crate::manifest::digest)
    }

    /// Reads them off a message (absent or non-text headers are `None`).
    pub fn read(headers: Option<&lapin::types::FieldTable>) -> Self {
        let text = |name| crate::header_text(headers, name);
        DeployHeaders {
            name: text(HEADER_DEPLOY_NAME),
            digest: text(HEADER_DEPLOY_DIGEST),
            sequence: text(HEADER_DEPLOY_SEQUENCE),
            key: text(HEADER_DEPLOY_KEY),
            signature: text(HEADER_DEPLOY_SIGNATURE),
            manifest: text(HEADER_DEPLOY_MANIFEST),
        }
    }

    /// Writes those that are set into `headers`.
    pub fn write(&self, headers: &mut lapin::types::FieldTable) {
        let fields = [
            (HEADER_DEPLOY_NAME, &self.name),
            (HEADER_DEPLOY_DIGEST, &self.digest),
            (HEADER_DEPLOY_SEQUENCE, &self.sequence),
            (HEADER_DEPLOY_KEY, &self.key),
            (HEADER_DEPLOY_SIGNATURE, &self.signature),
            (HEADER_DEPLOY_MANIFEST, &self.manifest),
        ];
        for (header, value) in fields {
            if let Some(value) = value {
                crate::set_header_text(headers, header, value);
            }
        }
    }
}

/// What a deploy signature covers: a domain tag, the name, the digest, the
/// sequence and, for a deploy with a manifest, the manifest's digest. The
/// digest binds the module bytes; the sequence orders deploys of one name,
/// so an old one cannot be passed off as new; the manifest digest binds
/// what the procedure is granted, so grants cannot be added, changed or
/// stripped without the key; the tag keeps the signature from meaning
/// anything anywhere else (v1 signatures, without a sequence, are not
/// accepted any more; v2 is a deploy without a manifest, v3 one with).
pub fn signed_bytes(name: &str, digest: &str, sequence: u64, manifest: Option<&str>) -> Vec<u8> {
    match manifest {
        None => format!("warren-deploy-v2\n{name}\n{digest}\n{sequence}\n").into_bytes(),
        Some(manifest) => {
            format!("warren-deploy-v3\n{name}\n{digest}\n{sequence}\n{manifest}\n").into_bytes()
        }
    }
}

/// A sequence for a new deploy: the clock in milliseconds since the Unix
/// epoch. Deployers whose clocks disagree by more than the time between two
/// deploys of one name can see the later one refused as older.
pub fn new_sequence() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// A host's answer to one deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployAnswer {
    /// The answering host's id (`--host-id`).
    pub host: String,
    /// Whether the host now serves the deployed module.
    pub accepted: bool,
    /// Why it refused; empty when accepted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Digest of the deployed module.
    pub digest: String,
    /// Time from receipt to serving (or refusing), in milliseconds.
    pub took_ms: u64,
}
