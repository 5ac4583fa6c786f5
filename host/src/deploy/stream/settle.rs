//! What a host does once a batch read from the deploy stream is settled:
//! log each deploy, answer its deployer, and count every message read for
//! the keeper, in stream order.

use lapin::BasicProperties;
use warren_protocol::deploy::HEADER_DEPLOY_COPY;
use warren_protocol::header_text;

use super::connection::DeployStream;
use super::message::MessageRead;
use super::state::KeeperUpdate;
use crate::deploy::answers::{answer_deployer, log_answer};
use crate::deploy::batch::SettledDeploy;

impl DeployStream {
    /// Logs each settled deploy and answers its deployer, counts every
    /// message read for the [`crate::deploy::keeper::Keeper`] (claims too),
    /// in stream order, and moves the position past them. Returns the
    /// procedures whose copy this host (`me`) won the claim to publish.
    pub(super) async fn settle(
        &self,
        reads: Vec<MessageRead>,
        settled: Vec<SettledDeploy<(usize, BasicProperties)>>,
        history: bool,
        me: &str,
    ) -> Vec<String> {
        let mut updates: Vec<Option<KeeperUpdate>> = vec![None; reads.len()];
        for SettledDeploy {
            tag: (index, properties),
            name,
            answer,
            copy,
            verified,
        } in settled
        {
            let name = loggable_name(name);
            let republished = header_text(properties.headers().as_ref(), HEADER_DEPLOY_COPY);
            log_answer(&name, &answer, history || republished.is_some(), copy);
            if !history {
                answer_deployer(&self.channel, &properties, &answer).await;
            }
            updates[index] = KeeperUpdate::of(
                name,
                answer.accepted,
                copy,
                verified,
                properties.headers().as_ref(),
            );
        }
        let mut state = self.state.lock();
        let now = std::time::Instant::now();
        state.account(reads, updates, me, now)
    }
}

/// A deploy's name as it may be logged. A name that breaks the rule is not
/// logged as written: a publisher chose it (line breaks, terminal escapes).
fn loggable_name(name: Option<String>) -> String {
    name.filter(|name| warren_protocol::check_procedure_name(name).is_ok())
        .unwrap_or_else(|| "(invalid)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_that_breaks_the_rule_is_not_logged_as_written() {
        assert_eq!(loggable_name(Some("fib".into())), "fib");
        assert_eq!(loggable_name(Some("fib\n\u{1b}[2J".into())), "(invalid)");
        assert_eq!(loggable_name(None), "(invalid)");
    }
}
