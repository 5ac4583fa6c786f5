//! Fleet status: asking every host of a queue what it does (the contract
//! is in `warren_protocol::status`).

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use warren_protocol::status::{CONTROL_STATUS, HEADER_CONTROL, HostStatus, control_exchange};
use warren_protocol::{broker_said, set_header_text};

use crate::link::broker;
use crate::{CallError, RpcClient};
use warren_protocol::broker::close_quietly;

impl RpcClient {
    /// Asks every host listening on the queue's control exchange for its
    /// status and collects the answers for up to `wait`, or until as many
    /// hosts answered as consume the request queue. Hosts sorted by id;
    /// none when no host listens.
    pub async fn status(&self, wait: Duration) -> Result<Vec<HostStatus>, CallError> {
        let consumers = self.consumer_count().await?.unwrap_or(0) as usize;
        let link = self.link().await?;
        // Hosts declare the exchange; asking must not leave one behind for
        // a mistyped queue. A passive declare of a missing exchange closes
        // its channel, so ask on a throwaway one.
        let probe = link
            .connection
            .create_channel()
            .await
            .map_err(broker("opening a channel to look for hosts"))?;
        let exists = probe
            .exchange_declare(
                control_exchange(&self.queue).as_str().into(),
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        close_quietly(probe.close(200, "probe done".into())).await;
        match exists {
            Ok(()) => {}
            Err(error) if broker_said(&error, AMQPSoftError::NOTFOUND) => return Ok(Vec::new()),
            Err(error) => return Err(broker("looking for the control exchange")(error)),
        }
        let exchange = control_exchange(&self.queue);
        let (waiting, mut answers) = self.expect_replies();
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_CONTROL, CONTROL_STATUS);
        let properties = BasicProperties::default()
            .with_reply_to(link.callback_queue.clone())
            .with_correlation_id(waiting.correlation_id.as_str().into())
            .with_expiration(wait.as_millis().max(1).to_string().into())
            .with_headers(headers);
        let confirmation = link
            .channel
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                b"",
                properties,
            )
            .await
            .map_err(broker("asking the hosts for their status"))?
            .await
            .map_err(broker("asking the hosts for their status"))?;
        if let Confirmation::Ack(Some(_returned)) = confirmation {
            return Ok(Vec::new()); // routed nowhere: no host listens
        }

        let mut hosts = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while consumers == 0 || hosts.len() < consumers {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(delivery)) => match serde_json::from_slice::<HostStatus>(&delivery.data) {
                    Ok(status) => hosts.push(status),
                    Err(error) => tracing::warn!(%error, "ignoring an unreadable status answer"),
                },
                Ok(None) => return Err(CallError::Disconnected),
                Err(_elapsed) => break,
            }
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(hosts)
    }
}
