//! The remote deploy contract: how a module reaches every host of a queue,
//! and how a host knows whom it came from.
//!
//! A deploy is one message on the durable RabbitMQ stream
//! [`deploy_stream`]`(queue)`, published through the default exchange. Its
//! body is the module's bytes; its headers name the procedure, the module's
//! digest, a sequence (the deployer's clock in milliseconds since the Unix
//! epoch, [`new_sequence`]), and (when signed) the deployer's ed25519 public
//! key and a signature over [`signed_bytes`]`(name, digest, sequence)`.
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
//! Keys are text: a public key is `ed25519:` + 64 hex digits, one per line
//! in a host's `--trusted-keys` file; a secret key file holds
//! `ed25519-secret:` + 64 hex digits and is created with mode 0600.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Deploy header: the procedure name the module is for.
pub const HEADER_DEPLOY_NAME: &str = "x-deploy-name";
/// Deploy header: `sha256:<hex>` of the module bytes (the body).
pub const HEADER_DEPLOY_DIGEST: &str = "x-deploy-digest";
/// Deploy header: the signer's public key, `ed25519:<hex>`.
pub const HEADER_DEPLOY_KEY: &str = "x-deploy-key";
/// Deploy header: hex of the ed25519 signature over [`signed_bytes`].
pub const HEADER_DEPLOY_SIGNATURE: &str = "x-deploy-signature";
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

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

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
}

impl DeployHeaders {
    /// The headers of a new deploy of `module` as `name`, signed by `key`
    /// when given, with a fresh [`new_sequence`].
    pub fn new(name: &str, module: &[u8], key: Option<&SecretKey>) -> Self {
        let digest = crate::module_digest(module);
        let sequence = new_sequence();
        DeployHeaders {
            name: Some(name.to_owned()),
            key: key.map(|key| key.public_key().to_string()),
            signature: key.map(|key| key.sign(name, &digest, sequence)),
            digest: Some(digest),
            sequence: Some(sequence.to_string()),
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
        ];
        for (header, value) in fields {
            if let Some(value) = value {
                crate::set_header_text(headers, header, value);
            }
        }
    }
}

/// What a deploy signature covers: a domain tag, the name, the digest and
/// the sequence. The digest binds the module bytes; the sequence orders
/// deploys of one name, so an old one cannot be passed off as new; the tag
/// keeps the signature from meaning anything anywhere else (v1 signatures,
/// without a sequence, are not accepted any more).
pub fn signed_bytes(name: &str, digest: &str, sequence: u64) -> Vec<u8> {
    format!("warren-deploy-v2\n{name}\n{digest}\n{sequence}\n").into_bytes()
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

/// A public key a host may trust.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// A deployer's secret key.
pub struct SecretKey(SigningKey);

/// A key or signature that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn decode_32(text: &str, prefix: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let hex_part = text.trim().strip_prefix(prefix).ok_or_else(|| {
        KeyError(format!(
            "{what} must start with {prefix:?} (as `warren keygen` writes it)"
        ))
    })?;
    let bytes = hex::decode(hex_part).map_err(|e| KeyError(format!("{what}: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| KeyError(format!("{what}: expected 32 bytes (64 hex digits)")))
}

impl PublicKey {
    /// Parses `ed25519:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_32(text, PUBLIC_PREFIX, "a public key")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| KeyError(format!("not a valid ed25519 public key: {e}")))
    }

    /// Whether `signature_hex` is this key's signature over `name`, `digest`
    /// and `sequence`.
    pub fn verifies(&self, name: &str, digest: &str, sequence: u64, signature_hex: &str) -> bool {
        let Ok(bytes) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.0
            .verify_strict(&signed_bytes(name, digest, sequence), &signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SecretKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError(format!("no randomness: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Parses `ed25519-secret:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        decode_32(text, SECRET_PREFIX, "a secret key")
            .map(|b| SecretKey(SigningKey::from_bytes(&b)))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Hex signature over `name`, `digest` and `sequence`, for
    /// [`HEADER_DEPLOY_SIGNATURE`].
    pub fn sign(&self, name: &str, digest: &str, sequence: u64) -> String {
        hex::encode(
            self.0
                .sign(&signed_bytes(name, digest, sequence))
                .to_bytes(),
        )
    }

    /// The key as written to its file.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", hex::encode(self.0.to_bytes()))
    }

    /// Writes the secret key to `path` (mode 0600) and the public key to
    /// `path.pub`. Never overwrites either: if one exists, nothing is
    /// written and the error names it.
    pub fn write_pair(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let public = public_key_path(path);
        for existing in [path, public.as_path()] {
            if existing.exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists; keys are never overwritten (move it away, or \
                         choose another file)",
                        existing.display()
                    ),
                ));
            }
        }
        let create_new = |path: &Path, mode: u32| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
            #[cfg(not(unix))]
            let _ = mode;
            options.open(path)
        };
        let mut secret = create_new(path, 0o600)?;
        let written = writeln!(secret, "{}", self.to_text()).and_then(|()| {
            let mut file = create_new(&public, 0o644)?;
            writeln!(file, "{}", self.public_key())
        });
        if written.is_err() {
            // Half a pair is no pair: leave nothing behind.
            let _ = std::fs::remove_file(path);
        }
        written
    }

    /// Reads a secret key file written by [`SecretKey::write_pair`].
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("reading the key {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }
}

/// `key` → `key.pub`.
pub fn public_key_path(secret: &Path) -> std::path::PathBuf {
    let mut name = secret.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// Reads a trusted-keys file: one public key per line; blank lines and
/// lines starting with `#` are ignored. An unreadable key is an error that
/// names its line, so a typo never silently trusts nobody.
pub fn read_trusted_keys(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyError(format!("reading trusted keys {}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(index, line)| {
            PublicKey::parse(line)
                .map_err(|e| KeyError(format!("{} line {}: {e}", path.display(), index + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_name_digest_and_key() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let signature = key.sign("fib", "sha256:aa", 7);
        assert!(key.public_key().verifies("fib", "sha256:aa", 7, &signature));
        assert!(!key.public_key().verifies("fib", "sha256:bb", 7, &signature));
        assert!(!key.public_key().verifies("fob", "sha256:aa", 7, &signature));
        assert!(!key.public_key().verifies("fib", "sha256:aa", 8, &signature));
        assert!(
            !other
                .public_key()
                .verifies("fib", "sha256:aa", 7, &signature)
        );
        assert!(!key.public_key().verifies("fib", "sha256:aa", 7, "not hex"));
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deployer");
        let key = SecretKey::generate().unwrap();
        key.write_pair(&path).unwrap();
        assert!(key.write_pair(&path).is_err(), "never overwrites a key");
        let lone = dir.path().join("lone");
        std::fs::write(public_key_path(&lone), "someone else's\n").unwrap();
        let refused = key.write_pair(&lone).unwrap_err();
        assert!(
            refused.to_string().contains("lone.pub already exists"),
            "{refused}"
        );
        assert!(!lone.exists(), "nothing written when the .pub exists");
        let read = SecretKey::read(&path).unwrap();
        assert_eq!(read.public_key(), key.public_key());
        let public = std::fs::read_to_string(public_key_path(&path)).unwrap();
        assert_eq!(public.lines().count(), 1);
        let trusted = dir.path().join("trusted");
        std::fs::write(&trusted, format!("# ops team\n\n{public}")).unwrap();
        assert_eq!(read_trusted_keys(&trusted).unwrap(), vec![key.public_key()]);
        std::fs::write(&trusted, "ed25519:zz\n").unwrap();
        assert!(
            read_trusted_keys(&trusted)
                .unwrap_err()
                .0
                .contains("line 1")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
