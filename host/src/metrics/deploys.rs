//! What is served changing: swaps, deploys answered and skipped, module
//! files that failed to load.

use super::Metrics;
use super::labels::{DeployLabels, ProcedureLabels};

impl Metrics {
    /// A procedure was replaced by a new version.
    pub fn swapped(&self, procedure: &str) {
        self.swaps
            .get_or_create(&ProcedureLabels {
                procedure: procedure.to_owned(),
            })
            .inc();
    }

    /// A deploy was answered.
    pub fn deploy_answered(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.deploys.get_or_create(&DeployLabels { result }).inc();
    }

    /// A deploy-stream message was skipped: no deploying user published it.
    pub fn deploy_message_skipped(&self) {
        self.deploy_messages_skipped.inc();
    }

    /// A module file failed to load.
    pub fn load_failed(&self) {
        self.load_failures.inc();
    }
}
