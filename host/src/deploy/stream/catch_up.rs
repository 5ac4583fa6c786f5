//! Catching up: on every connection, before it takes any request, a host
//! appends a sync marker and applies everything before it as one batch.

use std::time::Duration;

use futures_lite::StreamExt as _;

use super::connection::DeployStream;
use super::message::is_marker;
use crate::deploy::deployer::Deployer;

/// How long a host resuming the stream where it stopped waits for a first
/// message before it takes the stream for a new one (see
/// [`DeployStream::catch_up`]).
const CATCH_UP_STALL: Duration = Duration::from_secs(10);

/// What a catching-up host does when the stream gave nothing for
/// [`CATCH_UP_STALL`].
#[derive(Debug, PartialEq, Eq)]
enum Stalled {
    /// It reads the stream from its start, which holds its marker at
    /// least: it waits on.
    KeepWaiting,
    /// It resumed where it stopped. The marker is stored, so a reader
    /// before it gets something soon; nothing means this host resumed past
    /// the end of a stream that was deleted and declared anew (offsets
    /// start again at 0). Read it all again.
    StartOver,
}

/// What a stalled catching up does, by whether it `resumed` the stream
/// where this host stopped.
fn stalled(resumed: bool) -> Stalled {
    if resumed {
        Stalled::StartOver
    } else {
        Stalled::KeepWaiting
    }
}

impl DeployStream {
    /// Appends a sync marker and applies every deploy before it. When this
    /// returns, the host serves everything the stream held when it
    /// connected. `history` says whether these deploys are the history a
    /// starting host replays (their refusals were reported when they were
    /// new, so they are logged at debug level only).
    ///
    /// Nothing read in a starting host's history is answered: those
    /// deploys' deployers were answered when they were new, and whatever
    /// `reply_to` an old message names is no one's business now.
    pub async fn catch_up(&mut self, deployer: &Deployer, history: bool) -> anyhow::Result<()> {
        let marker = uuid::Uuid::new_v4().to_string();
        self.append_marker(&marker).await?;
        let resumed = self.state.position().is_some();
        let mut batch = deployer.batch();
        let mut reads = Vec::new();
        loop {
            let next = tokio::time::timeout(CATCH_UP_STALL, self.consumer.next()).await;
            let next = match next {
                Ok(next) => next,
                Err(_) => match stalled(resumed) {
                    Stalled::KeepWaiting => continue,
                    Stalled::StartOver => {
                        self.state.start_over();
                        anyhow::bail!(
                            "reading the deploy stream {} from where this host stopped gave \
                             nothing for {}s: the stream was deleted and declared anew; reading \
                             it again from its start",
                            self.stream,
                            CATCH_UP_STALL.as_secs()
                        );
                    }
                },
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    return Err(anyhow::Error::from(error).context("reading the deploy history"));
                }
                None => anyhow::bail!("the broker stopped the deploy stream consumer"),
            };
            let ours = is_marker(delivery.properties.headers().as_ref(), &marker);
            self.take(delivery, &mut batch, &mut reads).await;
            if ours {
                break;
            }
        }
        let settled = batch.finish().await;
        // A claim of this host's in what it catches up with is from before
        // a reconnect: its keeping rounds start again once it follows.
        self.settle(reads, settled, history, deployer.host_id())
            .await;
        if history {
            self.keep_recorded(deployer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_starts_over_only_when_the_host_resumed_where_it_stopped() {
        assert_eq!(stalled(true), Stalled::StartOver);
        assert_eq!(stalled(false), Stalled::KeepWaiting);
    }
}
