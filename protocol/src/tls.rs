//! Connecting to the broker, over TLS when the URL says `amqps://`.
//!
//! Host and client connect the same way, so the TLS rules live here once:
//! an `amqps://` broker's certificate is checked against the system's
//! trusted roots (rustls with the platform verifier, through lapin) plus,
//! with `--amqp-ca-file`, the CA certificates of a PEM file, which is how a
//! broker with a certificate from a private CA is reached without touching
//! the system's trust store. The name in the URL must match the
//! certificate: `amqps://localhost:5671`, not the IP, for a certificate
//! issued to `localhost` (unless it names the IP too).

use std::path::Path;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};

/// How to connect: the extra CA certificates to trust for `amqps://`.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    /// PEM text of the extra CA certificates, if any.
    ca_pem: Option<String>,
}

impl Connector {
    /// Trusts the system's roots only.
    pub fn new() -> Self {
        Connector::default()
    }

    /// Also trusts the CA certificates in the PEM file at `path`. The error
    /// says what is wrong with the file in words fit for a user.
    pub fn with_ca_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("reading --amqp-ca-file {}: {e}", path.display()))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--amqp-ca-file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Connector { ca_pem: Some(pem) })
    }

    /// Whether extra CA certificates are trusted.
    pub fn has_ca_file(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// Opens a connection to `url` (`amqp://` or `amqps://`).
    pub async fn connect(
        &self,
        url: &str,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca_pem.clone(),
        };
        Connection::connect_with_config(url, properties, tls, lapin::runtime::default_runtime()?)
            .await
    }
}

/// A hint to add to a connection error when it looks like the broker's
/// certificate was not trusted, `None` otherwise.
pub fn certificate_hint(url: &str, error: &str) -> Option<&'static str> {
    let tls = url
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("amqps://");
    let about_certificates = [
        "certificate",
        "UnknownIssuer",
        "NotValidForName",
        "BadSignature",
    ]
    .iter()
    .any(|word| error.contains(word));
    (tls && about_certificates).then_some(
        "the broker's TLS certificate is not trusted here: if a private CA issued it, give \
         its certificate with --amqp-ca-file FILE (env AMQP_CA_FILE), and use the host name \
         the certificate names in the URL",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_refused_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let error = Connector::with_ca_file(&path).unwrap_err();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let missing = Connector::with_ca_file(&dir.path().join("nope.pem")).unwrap_err();
        assert!(missing.contains("reading --amqp-ca-file"), "{missing}");
    }

    #[test]
    fn certificate_errors_on_amqps_get_a_hint() {
        let error = "invalid peer certificate: UnknownIssuer";
        assert!(certificate_hint("amqps://h:5671/%2f", error).is_some());
        assert!(certificate_hint("amqp://h:5672/%2f", error).is_none());
        assert!(certificate_hint("amqps://h:5671/%2f", "connection refused").is_none());
    }
}
