//! Deploy keys: ed25519 key pairs as text files, and the signatures a
//! host checks. A public key is `ed25519:` + 64 hex digits, one per line in
//! a host's `--trusted-keys` file; a secret key file holds
//! `ed25519-secret:` + 64 hex digits and is created with mode 0600.

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::signed_bytes;

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

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

    /// Whether `signature_hex` is this key's signature over `name`, `digest`,
    /// `sequence` and, when the deploy carries one, the manifest's digest.
    pub fn verifies(
        &self,
        name: &str,
        digest: &str,
        sequence: u64,
        manifest: Option<&str>,
        signature_hex: &str,
    ) -> bool {
        let Ok(bytes) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        self.0
            .verify_strict(&signed_bytes(name, digest, sequence, manifest), &signature)
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

    /// Hex signature over `name`, `digest`, `sequence` and the manifest's
    /// digest when there is a manifest, for [`HEADER_DEPLOY_SIGNATURE`].
    pub fn sign(&self, name: &str, digest: &str, sequence: u64, manifest: Option<&str>) -> String {
        hex::encode(
            self.0
                .sign(&signed_bytes(name, digest, sequence, manifest))
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
        let signature = key.sign("fib", "sha256:aa", 7, None);
        assert!(
            key.public_key()
                .verifies("fib", "sha256:aa", 7, None, &signature)
        );
        assert!(
            !key.public_key()
                .verifies("fib", "sha256:bb", 7, None, &signature)
        );
        assert!(
            !key.public_key()
                .verifies("fob", "sha256:aa", 7, None, &signature)
        );
        assert!(
            !key.public_key()
                .verifies("fib", "sha256:aa", 8, None, &signature)
        );
        assert!(
            !other
                .public_key()
                .verifies("fib", "sha256:aa", 7, None, &signature)
        );
        assert!(
            !key.public_key()
                .verifies("fib", "sha256:aa", 7, None, "not hex")
        );
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
