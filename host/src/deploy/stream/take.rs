//! Taking one message off the deploy stream: acked at once, told apart
//! ([`MessageKind`]), joined with its other parts, inflated, and added to
//! the batch being read.

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use warren_protocol::deploy::{Part, decode_module};

use super::connection::DeployStream;
use super::message::{MessageKind, MessageRead, classify, part_count, stream_offset, whole_size};
use crate::deploy::batch::Batch;
use crate::deploy::keeper::MESSAGE_OVERHEAD;
use crate::deploy::parts::Joined;

impl DeployStream {
    /// Acks one stream message at once (so the broker sends the next) and
    /// adds it to `batch` unless it is a sync marker or was not published
    /// by a deploying user (see [`crate::deploy::policy::DeployPolicy::publishers`]).
    pub(super) async fn take(
        &mut self,
        delivery: Delivery,
        batch: &mut Batch<'_, (usize, BasicProperties)>,
        reads: &mut Vec<MessageRead>,
    ) {
        let Delivery {
            properties,
            data,
            acker,
            ..
        } = delivery;
        if let Err(error) = acker.ack(BasicAckOptions::default()).await {
            tracing::warn!(%error, "acking a deploy stream message");
        }
        let size = data.len() as u64 + MESSAGE_OVERHEAD;
        let offset = stream_offset(&properties);
        let headers = properties.headers().as_ref();
        let user_id = properties.user_id().as_ref().map(|user| user.as_str());
        let kind = classify(
            headers,
            batch.admits_publisher(user_id),
            batch.admits_claim(user_id),
        );
        let deploy = match kind {
            MessageKind::Foreign => {
                // Anyone who may publish a request may publish here: what
                // they wrote takes room in the stream, and nothing else.
                self.foreign += 1;
                if self.foreign == 1 {
                    tracing::warn!(
                        stream = %self.stream,
                        user_id = user_id.unwrap_or("(none)"),
                        "skipping a deploy-stream message no deploying user published (the \
                         first; the rest are counted in warren_deploy_messages_skipped_total). If \
                         this user is one of your deployers, add it to --deploy-users; a caller \
                         must not be"
                    );
                }
                batch.skipped_publisher();
                reads.push(MessageRead::of(offset, size));
                return;
            }
            MessageKind::Marker | MessageKind::Claim(None) => {
                reads.push(MessageRead::of(offset, size));
                return;
            }
            MessageKind::Claim(claim) => {
                reads.push(MessageRead {
                    claim,
                    ..MessageRead::of(offset, size)
                });
                return;
            }
            MessageKind::Deploy(deploy) => deploy,
        };
        let part = Part::read(headers);
        let parts = part_count(&part);
        let joined = self
            .state
            .lock()
            .parts
            .add(deploy, part, data, batch.max_module_bytes());
        let whole = whole_size(&joined, parts, size);
        reads.push(MessageRead {
            whole,
            ..MessageRead::of(offset, size)
        });
        let tag = (reads.len() - 1, properties);
        match joined {
            Joined::Whole(mut request) => {
                let encoding = tag.1.content_encoding().as_ref().map(|e| e.to_string());
                let body = std::mem::take(&mut request.module);
                match decode(encoding, body, batch.max_module_bytes()).await {
                    Ok(module) => {
                        request.module = module;
                        batch.add(request, tag);
                    }
                    Err(reason) => batch.refuse(request.headers, reason, tag),
                }
            }
            Joined::Refused(headers, reason) => batch.refuse(headers, reason, tag),
            Joined::Partial | Joined::Skipped => {}
        }
    }
}

/// The module a deploy body carries (`decode_module`), inflated off the
/// async runtime when it is deflated.
async fn decode(encoding: Option<String>, body: Vec<u8>, max: usize) -> Result<Vec<u8>, String> {
    if encoding.is_none() {
        return Ok(body);
    }
    tokio::task::spawn_blocking(move || decode_module(encoding.as_deref(), body, max))
        .await
        .unwrap_or_else(|error| Err(format!("inflating the module failed: {error}")))
}
