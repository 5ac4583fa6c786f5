//! Which deploys a host accepts, and whose deploy-stream messages it reads.

use warren_protocol::deploy::PublicKey;

/// Which deploys a host accepts.
#[derive(Debug, Clone, Default)]
pub struct DeployPolicy {
    /// Deploys signed by one of these keys are accepted.
    pub trusted_keys: Vec<PublicKey>,
    /// Accept deploys that are unsigned or signed by an unknown key.
    pub allow_unsigned: bool,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// The broker users whose deploy-stream messages this host acts on
    /// (`--deploy-users`, and this host's own user, which publishes
    /// copies): the broker checks a message's `user_id` against the user
    /// that published it. Messages of anyone else are skipped unread.
    pub publishers: Vec<String>,
    /// The broker users hosts log in as (this host's own): only their
    /// claims to publish a copy count (`keeper`), so a deploying user
    /// cannot hold copies back with claims it never follows.
    pub host_users: Vec<String>,
}

impl DeployPolicy {
    /// Whether a deploy-stream message with this `user_id` is to be read.
    pub fn admits_publisher(&self, user_id: Option<&str>) -> bool {
        user_id.is_some_and(|user| self.publishers.iter().any(|known| known == user))
    }

    /// Whether a claim with this `user_id` came from a host.
    pub fn admits_claim(&self, user_id: Option<&str>) -> bool {
        user_id.is_some_and(|user| self.host_users.iter().any(|known| known == user))
    }
}
