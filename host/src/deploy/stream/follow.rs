//! Following: once caught up, a host applies deploys as they come, a burst
//! at a time, and publishes again those the stream would otherwise drop.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt as _;
use warren_protocol::broker::{close_quietly, ends_connection};

use super::connection::DeployStream;
use crate::deploy::deployer::Deployer;
use crate::shutdown::Shutdown;

/// Quiet time that ends a burst of live deploys.
const DEPLOY_SETTLE: Duration = Duration::from_millis(200);

impl DeployStream {
    /// Applies deploys as they arrive, a burst at a time, and publishes
    /// again those the stream would otherwise drop, until shutdown or the
    /// connection's end (`Ok`), or until the stream fails on a connection
    /// that is still up (`Err`: the broker cancelled the consumer because
    /// the stream was deleted, say), which the session takes for its own
    /// failure, so that it reconnects and reads the stream anew.
    pub async fn follow(
        mut self,
        deployer: Arc<Deployer>,
        mut shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        self.schedule_republish();
        let ended = loop {
            let republish = async {
                match self.republish_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                _ = shutdown.recv() => break Ok(()),
                () = republish => {
                    self.republish_at = None;
                    self.claim_due(&deployer).await;
                    self.schedule_republish();
                    continue;
                }
                next = self.consumer.next() => next,
            };
            let first = match first {
                Some(Ok(delivery)) => delivery,
                // A lost connection is reported once, by the session.
                Some(Err(error)) if ends_connection(&error) => {
                    tracing::debug!(%error, "reading the deploy stream stopped with the connection");
                    break Ok(());
                }
                Some(Err(error)) => {
                    break Err(anyhow::Error::from(error)
                        .context(format!("reading the deploy stream {} failed", self.stream)));
                }
                None => {
                    break Err(anyhow::anyhow!(
                        "the broker ended this host's reading of the deploy stream {} (was it \
                         deleted?): reconnecting, to read it anew",
                        self.stream
                    ));
                }
            };
            let mut batch = deployer.batch();
            let mut reads = Vec::new();
            self.take(first, &mut batch, &mut reads).await;
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(DEPLOY_SETTLE, self.consumer.next()).await
            {
                self.take(delivery, &mut batch, &mut reads).await;
            }
            let settled = batch.finish().await;
            let won = self.settle(reads, settled, false, deployer.host_id()).await;
            self.publish_copies(&deployer, won).await;
            self.schedule_republish();
        };
        close_quietly(self.publisher.close(200, "warren-host stopping".into())).await;
        close_quietly(self.channel.close(200, "warren-host stopping".into())).await;
        ended
    }
}
