//! The signed record of the newest deploy a host accepted for a procedure,
//! kept beside its module as `NAME.deploy`.
//!
//! The deploy stream is untrusted transport: whoever can write to it (or
//! kept an old signed deploy) can put an old deploy back into it once the
//! newer one has dropped out of its retention. A host refuses any deploy
//! that is not newer than the newest it accepted, and it must remember that
//! across restarts, so it writes this record with the module (in the same
//! all-or-nothing save) and reads every record before it reads the stream.
//! The record holds what the deployer signed (name, sequence, digest,
//! manifest digest, key, signature), so anyone can check that the served
//! module is what a trusted key deployed.
//!
//! A record outlives its module: a procedure whose `NAME.wasm` is removed
//! by hand still refuses deploys older than its last one.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use warren_protocol::deploy::{PublicKey, SignedDeploy};

pub use crate::modules::RECORD_EXTENSION;

/// What a host remembers of the newest deploy of one name it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// The procedure's name.
    pub name: String,
    /// The deploy's (signed) sequence.
    pub sequence: u64,
    /// `sha256:<hex>` of the module.
    pub digest: String,
    /// `sha256:<hex>` of the manifest's text, when the deploy had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// The signer's public key, `ed25519:<hex>` (absent on unsigned deploys
    /// a host with `--allow-unsigned-deploys` took).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hex of the signature over the name, digest, sequence and manifest
    /// digest (`warren_protocol::deploy::signed_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl DeployRecord {
    /// The record as saved: pretty JSON, one field a line.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a record always serialises");
        text.push('\n');
        text
    }

    /// Whether a key in `trusted` signed exactly this deploy.
    pub fn signed_by_one_of(&self, trusted: &[PublicKey]) -> bool {
        SignedDeploy {
            name: &self.name,
            digest: &self.digest,
            sequence: self.sequence,
            manifest_digest: self.manifest_digest.as_deref(),
            key: self.key.as_deref(),
            signature: self.signature.as_deref(),
        }
        .signed_by_one_of(trusted)
    }
}

/// What the records in a modules folder say, per procedure name.
#[derive(Debug, Default)]
pub struct Records {
    /// Readable records.
    pub read: HashMap<String, DeployRecord>,
    /// Names whose record exists but cannot be read (with why): this host
    /// no longer knows how new a deploy of them must be, so it refuses every
    /// deploy of them until a person removes or mends the file.
    pub unreadable: HashMap<String, String>,
}

/// Reads every `NAME.deploy` in `dir`. Only an unreadable folder is an
/// error; each bad record is reported in [`Records::unreadable`].
pub fn read_records(dir: &Path) -> anyhow::Result<Records> {
    use anyhow::Context as _;
    let mut records = Records::default();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the deploy records in {}", dir.display()))?;
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        if path.extension().is_none_or(|ext| ext != RECORD_EXTENSION) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|stem| stem.to_str()) else {
            continue;
        };
        if name.starts_with('.') || warren_protocol::check_procedure_name(name).is_err() {
            continue;
        }
        let read = std::fs::read_to_string(&path)
            .map_err(|error| error.to_string())
            .and_then(|text| {
                serde_json::from_str::<DeployRecord>(&text).map_err(|error| error.to_string())
            })
            .and_then(|record| {
                if record.name == name {
                    Ok(record)
                } else {
                    Err(format!("it is the record of {:?}", record.name))
                }
            });
        match read {
            Ok(record) => {
                records.read.insert(name.to_owned(), record);
            }
            Err(why) => {
                records
                    .unreadable
                    .insert(name.to_owned(), format!("{}: {why}", path.display()));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::deploy::SecretKey;

    fn record(key: &SecretKey) -> DeployRecord {
        let digest = warren_protocol::digest(b"module");
        let sequence = 42;
        DeployRecord {
            name: "fib".into(),
            sequence,
            signature: Some(key.sign("fib", &digest, sequence, None)),
            key: Some(key.public_key().to_string()),
            digest,
            manifest_digest: None,
        }
    }

    #[test]
    fn a_record_round_trips_and_its_signature_checks() {
        let key = SecretKey::generate().unwrap();
        let record = record(&key);
        let text = record.to_text();
        let back: DeployRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, record);
        assert!(record.signed_by_one_of(&[key.public_key()]));
        assert!(!record.signed_by_one_of(&[SecretKey::generate().unwrap().public_key()]));
        let forged = DeployRecord {
            sequence: 43,
            ..record
        };
        assert!(!forged.signed_by_one_of(&[key.public_key()]));
    }

    #[test]
    fn records_are_read_by_name_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        std::fs::write(dir.path().join("fib.deploy"), record(&key).to_text()).unwrap();
        std::fs::write(dir.path().join("echo.deploy"), "{ not json").unwrap();
        std::fs::write(dir.path().join("other.deploy"), record(&key).to_text()).unwrap();
        std::fs::write(dir.path().join("fib.wasm"), b"ignored").unwrap();
        let records = read_records(dir.path()).unwrap();
        assert_eq!(records.read.keys().collect::<Vec<_>>(), ["fib"]);
        let mut unreadable: Vec<&String> = records.unreadable.keys().collect();
        unreadable.sort();
        assert_eq!(unreadable, ["echo", "other"]);
        assert!(records.unreadable["other"].contains("record of \"fib\""));
    }
}
