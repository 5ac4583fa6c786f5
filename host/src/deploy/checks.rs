//! A deploy as received, and every check it must pass before anything is
//! compiled: name, size, digest, signature, manifest.

use warren_protocol::check_procedure_name;
use warren_protocol::deploy::{DeployHeaders, PublicKey};
use warren_protocol::manifest::Manifest;

use super::policy::DeployPolicy;
use super::record::DeployRecord;

/// One deploy as received: the module and what its headers claim.
#[derive(Debug, Default)]
pub struct DeployRequest {
    /// What the headers say.
    pub headers: DeployHeaders,
    /// The module's bytes.
    pub module: Vec<u8>,
}

/// A deploy that passed every check, ready to apply.
pub struct Verified {
    pub name: String,
    pub digest: String,
    /// Absent only on unsigned deploys from older deployers.
    pub sequence: Option<u64>,
    /// The manifest's text, already checked to parse.
    pub manifest: Option<String>,
    /// What is saved beside the module; absent without a sequence.
    pub record: Option<DeployRecord>,
}

/// Every check that needs no compiling: name, size, digest, signature.
/// A refusal's reason never repeats a header's value: whoever wrote
/// the headers chose it, and the reason goes back to a deployer and
/// into the log.
pub fn verify(
    policy: &DeployPolicy,
    request: &DeployRequest,
    actual_digest: &str,
) -> Result<Verified, String> {
    let headers = &request.headers;
    let name = headers
        .name
        .clone()
        .ok_or("the deploy names no procedure (header x-deploy-name)")?;
    check_procedure_name(&name).map_err(|_| {
        format!(
            "the deploy's name (header x-deploy-name) is not a valid procedure name \
             ({})",
            warren_protocol::PROCEDURE_NAME_RULE
        )
    })?;
    if request.module.len() > policy.max_module_bytes {
        return Err(format!(
            "the module is {} bytes; this host accepts at most {} (--max-module-bytes)",
            request.module.len(),
            policy.max_module_bytes
        ));
    }
    match headers.digest.as_deref() {
        None => return Err("the deploy has no digest header (x-deploy-digest)".into()),
        Some(claimed) if claimed != actual_digest => {
            return Err(format!(
                "the digest header (x-deploy-digest) does not match the module, whose \
                 digest is {actual_digest}"
            ));
        }
        Some(_) => {}
    }
    let sequence = match &headers.sequence {
        None => None,
        Some(text) => Some(text.trim().parse::<u64>().map_err(|_| {
            "the deploy's sequence (header x-deploy-sequence) is not a whole number".to_owned()
        })?),
    };
    check_signature(policy, request, &name, actual_digest, sequence)?;
    // After the signature: a stranger's manifest is not worth reading.
    if let Some(text) = &headers.manifest {
        Manifest::parse(text).map_err(|error| format!("its manifest is refused: {error}"))?;
    }
    let record = sequence.map(|sequence| DeployRecord {
        name: name.clone(),
        sequence,
        digest: actual_digest.to_owned(),
        manifest_digest: headers.manifest_digest(),
        key: headers.key.clone(),
        signature: headers.signature.clone(),
    });
    Ok(Verified {
        name,
        digest: actual_digest.to_owned(),
        sequence,
        manifest: headers.manifest.clone(),
        record,
    })
}

pub fn check_signature(
    policy: &DeployPolicy,
    request: &DeployRequest,
    name: &str,
    digest: &str,
    sequence: Option<u64>,
) -> Result<(), String> {
    if policy.trusted_keys.is_empty() && !policy.allow_unsigned {
        return Err(
            "this host accepts no remote deploys: start it with --trusted-keys FILE \
                    (or --allow-unsigned-deploys)"
                .into(),
        );
    }
    let (Some(key), Some(signature)) = (&request.headers.key, &request.headers.signature) else {
        return if policy.allow_unsigned {
            Ok(())
        } else {
            Err(
                "the deploy is unsigned; this host accepts only deploys signed by a trusted \
                 key (warren deploy --key FILE)"
                    .into(),
            )
        };
    };
    let key = PublicKey::parse(key).map_err(|e| format!("the deploy's key is unreadable: {e}"))?;
    if !policy.trusted_keys.contains(&key) {
        return if policy.allow_unsigned {
            Ok(())
        } else {
            Err(format!(
                "signed by {key}, which this host does not trust (add it to the --trusted-keys file)"
            ))
        };
    }
    let Some(sequence) = sequence else {
        return Err(
            "the deploy is signed without a sequence (x-deploy-sequence), as earlier \
             versions of warren signed; deploy it again with this warren"
                .into(),
        );
    };
    let manifest = request.headers.manifest_digest();
    if key.verifies(name, digest, sequence, manifest.as_deref(), signature) {
        Ok(())
    } else {
        Err(match manifest {
            None => format!(
                "bad signature: {key} did not sign {name} {digest} with sequence {sequence} \
                 and no manifest"
            ),
            Some(manifest) => format!(
                "bad signature: {key} did not sign {name} {digest} with sequence {sequence} \
                 and manifest {manifest} (was the manifest changed after signing?)"
            ),
        })
    }
}
