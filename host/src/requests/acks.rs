//! Acknowledging requests in as few frames as the broker allows.
//!
//! Each request task reports its delivery tag here once its reply has been
//! written (or once it knows it must be redelivered). One task turns the
//! reports into `basic.ack` frames with `multiple` set: it acks up to the
//! highest tag below which every request is done, so a burst of replies
//! costs one ack instead of one each, and the frames go straight to the
//! channel rather than through lapin's internal RPC task (two thread
//! wake-ups fewer per request). A request to be redelivered is nacked on its
//! own first, so a later `multiple` ack never covers it.
//!
//! Under load an ack waits until it covers [`ack_every`] requests, a
//! fraction of the prefetch window, so a busy host sends one ack frame per
//! few requests rather than one per reply; the moment no request is left
//! unsettled it goes out at once, so a host that goes idle (or a caller
//! making one call at a time) leaves nothing unacked. Delaying an ack loses
//! nothing: a request answered but not yet acked when the connection drops
//! is redelivered, as any unacked request is.
//!
//! Delivery tags on a channel start at 1 and count up by one per delivery;
//! the request channel carries nothing but the request consumer, so every
//! tag is eventually reported and the acks never stall behind a gap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::DeliveryTag;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Answered (or unanswerable and dropped): ack it.
    Done(DeliveryTag),
    /// Not answered: return it to the queue for another try.
    Requeue(DeliveryTag),
}

/// Where request tasks report; cheap to clone.
#[derive(Debug, Clone)]
pub struct Acks {
    reports: mpsc::UnboundedSender<Settled>,
    /// Requests received and not yet settled. Its own count rather than the
    /// request tasks' `TaskTracker::len`: a task is still alive while it
    /// reports, so the tracker never reads zero when the last one settles.
    unsettled: Arc<AtomicUsize>,
}

impl Acks {
    /// Starts the ack task on `channel`, whose consumer holds at most
    /// `prefetch` unacked requests. It ends, having acked everything
    /// reported, once every [`Acks`] is dropped; await the handle before
    /// closing the channel.
    pub fn start(channel: Channel, prefetch: u16) -> (Self, JoinHandle<()>) {
        let (reports, received) = mpsc::unbounded_channel();
        let unsettled = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            channel,
            received,
            unsettled.clone(),
            ack_every(prefetch),
        ));
        (Acks { reports, unsettled }, task)
    }

    /// Counts a request just taken from the queue; it must be settled.
    pub fn received(&self) {
        self.unsettled.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports one request as settled.
    pub fn settle(&self, settled: Settled) {
        self.unsettled.fetch_sub(1, Ordering::Relaxed);
        // The ack task outlives every sender; if it stopped, the channel is
        // gone and the broker redelivers whatever was not acked.
        let _ = self.reports.send(settled);
    }
}

/// How many answered requests one ack covers while others are still being
/// answered: an eighth of the prefetch window, so acks held back never
/// keep the broker from sending more than a few requests' worth. With
/// prefetch 32 and fib(1) at 64 in flight, the host's `sendto` calls per
/// request went 0.75 → 0.61–0.65 (`BENCHMARKS.md`).
fn ack_every(prefetch: u16) -> u64 {
    u64::from(prefetch / 8).max(1)
}

async fn run(
    channel: Channel,
    mut received: mpsc::UnboundedReceiver<Settled>,
    unsettled: Arc<AtomicUsize>,
    ack_every: u64,
) {
    let mut window = Window::default();
    // The highest answered tag not yet acked, and the last tag acked.
    let (mut due, mut acked): (Option<DeliveryTag>, DeliveryTag) = (None, 0);
    loop {
        let Some(first) = received.recv().await else {
            // Every sender is gone: nothing more will settle.
            if let Some(upto) = due {
                let _ = ack_through(&channel, upto).await;
            }
            return;
        };
        let mut batch = vec![first];
        while let Ok(next) = received.try_recv() {
            batch.push(next);
        }
        for settled in batch {
            if let Settled::Requeue(tag) = settled {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if let Err(error) = channel.basic_nack(tag, requeue).await {
                    tracing::warn!(%error, "returning a request to the queue");
                    return;
                }
            }
            window.settle(settled);
        }
        due = window.advance().or(due);
        let Some(upto) = due else { continue };
        if upto - acked >= ack_every || unsettled.load(Ordering::Relaxed) == 0 {
            if ack_through(&channel, upto).await.is_err() {
                return;
            }
            (due, acked) = (None, upto);
        }
    }
}

/// Acks every outstanding request up to and including `upto`.
async fn ack_through(channel: &Channel, upto: DeliveryTag) -> Result<(), ()> {
    let multiple = BasicAckOptions { multiple: true };
    channel.basic_ack(upto, multiple).await.map_err(|error| {
        tracing::warn!(%error, "acking requests");
    })
}

/// Which tags are settled, and how far a `multiple` ack may reach.
///
/// RabbitMQ requires the tag of a `multiple` ack to be one it is waiting
/// for (a nacked one is not: it answers `PRECONDITION_FAILED`), so the ack
/// goes up to the last *answered* tag of the settled run.
#[derive(Debug, Default)]
struct Window {
    /// Every tag up to this one is settled, and acked or nacked.
    through: DeliveryTag,
    /// Settled tags above `through`: `true` if answered, `false` if requeued.
    settled: BTreeMap<DeliveryTag, bool>,
}

impl Window {
    fn settle(&mut self, settled: Settled) {
        let (tag, answered) = match settled {
            Settled::Done(tag) => (tag, true),
            Settled::Requeue(tag) => (tag, false),
        };
        if tag > self.through {
            self.settled.insert(tag, answered);
        }
    }

    /// The tag to ack up to now, if the settled run from `through + 1`
    /// grew and holds an answered request.
    fn advance(&mut self) -> Option<DeliveryTag> {
        let mut last_answered = None;
        while let Some(answered) = self.settled.remove(&(self.through + 1)) {
            self.through += 1;
            if answered {
                last_answered = Some(self.through);
            }
        }
        last_answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_covers_an_eighth_of_the_window() {
        assert_eq!(ack_every(32), 4);
        assert_eq!(ack_every(256), 32);
        assert_eq!(
            ack_every(4),
            1,
            "a small window is acked request by request"
        );
        assert_eq!(ack_every(1), 1);
    }

    #[test]
    fn acks_reach_only_as_far_as_every_request_below_is_settled() {
        let mut window = Window::default();
        window.settle(Settled::Done(2));
        window.settle(Settled::Done(3));
        assert_eq!(window.advance(), None, "1 is still running");
        window.settle(Settled::Done(1));
        assert_eq!(window.advance(), Some(3));
        window.settle(Settled::Done(5));
        assert_eq!(window.advance(), None);
        window.settle(Settled::Requeue(4));
        assert_eq!(
            window.advance(),
            Some(5),
            "4 was nacked on its own, so the ack may pass it"
        );
        window.settle(Settled::Done(7));
        window.settle(Settled::Requeue(8));
        window.settle(Settled::Requeue(6));
        assert_eq!(
            window.advance(),
            Some(7),
            "never up to a requeued tag: the broker no longer waits for it"
        );
        window.settle(Settled::Requeue(9));
        assert_eq!(window.advance(), None, "nothing answered to ack");
        window.settle(Settled::Done(10));
        assert_eq!(window.advance(), Some(10));
    }
}
