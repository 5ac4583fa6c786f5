//! What becomes of each settled deploy: a log line, and an answer to its
//! deployer.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use warren_protocol::deploy::DeployAnswer;

/// Refusals of new deploys are news for the operator; refusals found again
/// in the history a starting host replays were news when they were new, and
/// copies of what the host serves already are no news at all.
pub(super) fn log_answer(name: &str, answer: &DeployAnswer, history: bool, copy: bool) {
    if copy {
        tracing::debug!(procedure = %name, digest = %answer.digest, "deploy already applied");
    } else if answer.accepted {
        tracing::info!(procedure = %name, digest = %answer.digest, took_ms = answer.took_ms, history, "deploy accepted");
    } else if history {
        tracing::debug!(procedure = %name, digest = %answer.digest, "deploy in the history refused: {}", answer.reason);
    } else {
        tracing::warn!(procedure = %name, digest = %answer.digest, "deploy refused: {}", answer.reason);
    }
}

/// Sends `answer` to the deploy's `reply_to`, if it has one.
pub(super) async fn answer_deployer(
    channel: &Channel,
    deploy: &BasicProperties,
    answer: &DeployAnswer,
) {
    let Some(reply_to) = deploy.reply_to().clone() else {
        return;
    };
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(id) = deploy.correlation_id().clone() {
        properties = properties.with_correlation_id(id);
    }
    let body = serde_json::to_vec(answer).expect("a DeployAnswer always serialises");
    let published = channel
        .basic_publish(
            ShortString::default(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await;
    if let Err(error) = published {
        tracing::warn!(%error, "answering the deployer");
    }
}
