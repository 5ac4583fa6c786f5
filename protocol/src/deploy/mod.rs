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
//! stays bounded and a host that starts later still finds every procedure;
//! a host claims that work first ([`HEADER_DEPLOY_CLAIM`]), so that one
//! host publishes each copy.
//!
//! The broker is untrusted transport: anyone who may publish a request may
//! publish into the stream too (through the default exchange). Hosts act
//! only on stream messages whose `user_id`, which the broker checks against
//! the publisher's login, names a deploying user or a host's own user.
//!
//! A module larger than [`DEPLOY_PART_BYTES`] is split across consecutive
//! messages (`parts`), under one signature.
//!
//! The keys that sign deploys, and their files, are in `keys`.

mod keys;
mod parts;
mod stream;

use serde::{Deserialize, Serialize};

pub use keys::{KeyError, PublicKey, SecretKey, public_key_path, read_trusted_keys};
pub use parts::{
    COMPRESS_FROM_BYTES, DEPLOY_ENCODING, DEPLOY_PART_BYTES, HEADER_DEPLOY_PART,
    HEADER_DEPLOY_PARTS_ID, Part, decode_module, encode_module, publish_deploy, publish_encoded,
};
pub use stream::{
    DeclaredStream, StreamRetention, declare_deploy_stream, deploy_stream, open_deploy_stream,
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
/// Header of a claim: a message on the deploy stream, not a deploy, by
/// which a host says it is about to publish a copy of a deploy the stream
/// would otherwise drop (value: its host id; the name, digest and sequence
/// headers say which deploy; empty body). Hosts read claims in stream
/// order; only the host of the first claim of a round publishes the copy.
pub const HEADER_DEPLOY_CLAIM: &str = "x-deploy-claim";
/// Deploy header: the deploy is of a version hosts already keep (`warren
/// rollback`), so its body is empty: each host takes the module and manifest
/// from the versions it keeps, or refuses it if it keeps no such version.
/// The value is the version's manifest digest (`sha256:<hex>`), or `none`
/// for a version without a manifest. The signature is the same as a full
/// deploy's (it covers the name, the module's and manifest's digests and the
/// sequence, not how the bytes travel), so a host may publish the deploy
/// again with its module attached, and its signature still holds.
pub const HEADER_DEPLOY_KEPT: &str = "x-deploy-kept";
/// [`HEADER_DEPLOY_KEPT`]'s value for a version without a manifest.
pub const KEPT_WITHOUT_MANIFEST: &str = "none";
/// Header RabbitMQ puts on every message read from a stream: its offset.
pub const HEADER_STREAM_OFFSET: &str = "x-stream-offset";

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
    /// Present on a deploy of a version hosts keep, with no module in it
    /// ([`HEADER_DEPLOY_KEPT`]): the version's manifest digest or
    /// [`KEPT_WITHOUT_MANIFEST`].
    pub kept: Option<String>,
}

impl DeployHeaders {
    /// The headers of a new deploy of `module` as `name`, with its
    /// `manifest` text if it has one, signed by `key` when given, with a
    /// fresh [`new_sequence`].
    pub fn new(name: &str, module: &[u8], manifest: Option<&str>, key: Option<&SecretKey>) -> Self {
        Self::with_sequence(name, module, manifest, key, new_sequence())
    }

    /// [`DeployHeaders::new`] with a sequence of the deployer's choosing
    /// ([`next_sequence`]).
    pub fn with_sequence(
        name: &str,
        module: &[u8],
        manifest: Option<&str>,
        key: Option<&SecretKey>,
        sequence: u64,
    ) -> Self {
        let digest = crate::digest(module);
        let manifest_digest = manifest.map(crate::digest);
        DeployHeaders {
            name: Some(name.to_owned()),
            key: key.map(|key| key.public_key().to_string()),
            signature: key.map(|key| key.sign(name, &digest, sequence, manifest_digest.as_deref())),
            digest: Some(digest),
            sequence: Some(sequence.to_string()),
            manifest: manifest.map(str::to_owned),
            kept: None,
        }
    }

    /// The headers of a deploy of a version hosts keep ([`HEADER_DEPLOY_KEPT`]):
    /// module `digest` with the manifest of `manifest_digest` (or none),
    /// signed by `key` when given, at `sequence`. Its body is empty.
    pub fn of_kept_version(
        name: &str,
        digest: &str,
        manifest_digest: Option<&str>,
        key: Option<&SecretKey>,
        sequence: u64,
    ) -> Self {
        DeployHeaders {
            name: Some(name.to_owned()),
            key: key.map(|key| key.public_key().to_string()),
            signature: key.map(|key| key.sign(name, digest, sequence, manifest_digest)),
            digest: Some(digest.to_owned()),
            sequence: Some(sequence.to_string()),
            manifest: None,
            kept: Some(manifest_digest.unwrap_or(KEPT_WITHOUT_MANIFEST).to_owned()),
        }
    }

    /// `sha256:<hex>` of the manifest, if the deploy has one: what the
    /// signature covers of it. From the manifest's text when the deploy
    /// carries it, else from [`HEADER_DEPLOY_KEPT`].
    pub fn manifest_digest(&self) -> Option<String> {
        match (&self.manifest, &self.kept) {
            (Some(text), _) => Some(crate::digest(text)),
            (None, Some(kept)) if kept != KEPT_WITHOUT_MANIFEST => Some(kept.clone()),
            _ => None,
        }
    }

    /// These headers with the version's `manifest` text in place of
    /// [`HEADER_DEPLOY_KEPT`]: the deploy as it reads with its module
    /// attached (the signature is unchanged and still holds).
    pub fn with_manifest_attached(&self, manifest: Option<String>) -> Self {
        DeployHeaders {
            manifest,
            kept: None,
            ..self.clone()
        }
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
            kept: text(HEADER_DEPLOY_KEPT),
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
            (HEADER_DEPLOY_KEPT, &self.kept),
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

/// What a deploy's signature covers, with the key and signature it
/// carries as text (`ed25519:<hex>`, hex): a deploy record, or one as hosts
/// report it.
#[derive(Debug, Clone, Copy)]
pub struct SignedDeploy<'a> {
    pub name: &'a str,
    pub digest: &'a str,
    pub sequence: u64,
    pub manifest_digest: Option<&'a str>,
    pub key: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl SignedDeploy<'_> {
    /// Whether a key in `trusted` signed exactly this deploy.
    pub fn signed_by_one_of(&self, trusted: &[PublicKey]) -> bool {
        let (Some(key), Some(signature)) = (self.key, self.signature) else {
            return false;
        };
        let Ok(key) = PublicKey::parse(key) else {
            return false;
        };
        trusted.contains(&key)
            && key.verifies(
                self.name,
                self.digest,
                self.sequence,
                self.manifest_digest,
                signature,
            )
    }
}

/// A sequence for a new deploy: the clock in milliseconds since the Unix
/// epoch. Deployers whose clocks disagree by more than the time between two
/// deploys of one name can see the later one refused as older; a deployer
/// that can ask the hosts uses [`next_sequence`] instead.
pub fn new_sequence() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// How far ahead of the deployer's clock a sequence the hosts report may
/// be for [`next_sequence`] to go on from it: a day. Status answers are not
/// signed (anyone who can bind a queue to the control exchange can answer
/// one), so without a bound a forged answer near `u64::MAX` would have a
/// deployer sign a sequence at the end of the range, and every later deploy
/// of that name would be refused as older.
pub const MAX_SEQUENCE_LEAD_MS: u64 = 24 * 60 * 60 * 1000;

/// The sequence for a deploy of a name whose accepted deploys the hosts
/// report at `reported` sequences: the clock ([`new_sequence`]), or one
/// above the newest of them when that is ahead of the clock. So a deploy
/// from a clock that ran fast does not block the deploys that follow it
/// from clocks that are right: they go on from it. A reported sequence
/// more than [`MAX_SEQUENCE_LEAD_MS`] ahead of the clock is not believed.
pub fn next_sequence(reported: impl IntoIterator<Item = u64>) -> u64 {
    let clock = new_sequence();
    let believed = clock.saturating_add(MAX_SEQUENCE_LEAD_MS);
    match reported.into_iter().filter(|s| *s <= believed).max() {
        Some(newest) if newest >= clock => newest + 1,
        _ => clock,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_goes_on_from_the_newest_reported_unless_that_is_past_belief() {
        let clock = new_sequence();
        assert!(next_sequence([]) >= clock);
        assert!(next_sequence([clock - 5_000]) >= clock, "behind the clock");
        let hour = clock + 3_600_000;
        assert_eq!(
            next_sequence([clock - 1, hour]),
            hour + 1,
            "a clock that ran fast"
        );
        // A forged answer near the end of the range is not believed, and
        // does not hide the true newest one.
        assert_eq!(next_sequence([u64::MAX - 1, hour]), hour + 1);
        assert!(next_sequence([u64::MAX]) < clock + MAX_SEQUENCE_LEAD_MS);
    }
}
