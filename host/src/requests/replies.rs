//! The request channel's outgoing side: replies published, requests acked.
//!
//! Request tasks compute their answer and hand it here ([`Replies::send`]);
//! one task per channel publishes the replies and acks the requests, and
//! holds back a refusal over quota until its caller's turn
//! ([`crate::callers::ReplyHolder`]), its request acked at once. Why one
//! task rather than each request publishing its own reply:
//! - **One wake per burst.** lapin writes frames on its own I/O thread and
//!   resolves a promise per publish once its frames are written (or, in
//!   durable mode, once the broker confirms them). Awaited by each request
//!   task, every reply cost a cross-thread wake-up; awaited here together
//!   (a `FuturesUnordered`), the I/O thread wakes this one task once for
//!   every reply its write carried.
//! - **Acks follow their replies.** A request is acked only after its
//!   reply's frames are written (durable mode: confirmed), and lapin sends
//!   method frames such as `basic.ack` ahead of queued publishes, so the ack
//!   must wait for the publish promise; here that wait is free.
//! - **Few ack frames.** Acks go out with `multiple` set, up to the highest
//!   tag below which every request is settled, straight to the channel. A
//!   request to be redelivered (its reply could not be published, or its
//!   task panicked) is nacked on its own first, so a later `multiple` ack
//!   never covers it.
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
//! tag is eventually settled and the acks never stall behind a gap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{DeliveryTag, ShortString};
use lapin::{BasicProperties, Channel};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use warren_protocol::broker::publish_to;

use crate::callers::HeldReply;

/// What became of one request, as its task hands it over.
#[allow(
    clippy::large_enum_variant,
    reason = "nearly every answer is a reply: boxing it would cost an allocation per request"
)]
pub enum Answer {
    /// Publish this reply to `to`, then ack the request `tag`; if the
    /// reply cannot be published, return the request to the queue. With
    /// `held` (a refusal over quota): ack the request now and publish the
    /// reply at `held.until`, or as soon as the host stops taking requests.
    /// `span` is the request's, so what happens to the reply is logged (and
    /// traced) under it.
    Reply {
        tag: DeliveryTag,
        to: ShortString,
        body: Vec<u8>,
        properties: BasicProperties,
        span: tracing::Span,
        held: Option<HeldReply>,
    },
    /// Nothing to publish (the request had no `reply_to`, or its caller had
    /// gone): ack it. Also what a published reply's request comes to.
    Ack(DeliveryTag),
    /// Not answered (its task panicked, or its reply could not be
    /// published): return it to the queue.
    Requeue(DeliveryTag),
}

/// Where request tasks hand their answers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Replies {
    answers: mpsc::UnboundedSender<Answer>,
    /// Requests received and not yet settled (their reply published, or
    /// nacked). Its own count rather than the request tasks'
    /// `TaskTracker::len`: a reply is still being published after its task
    /// has ended.
    unsettled: Arc<AtomicUsize>,
}

impl Replies {
    /// Starts the reply task on `channel`, whose consumer holds at most
    /// `prefetch` unacked requests. Held replies go out at once when
    /// `stopping` is cancelled. It ends, having published every reply
    /// handed to it and acked what it could, once every [`Replies`] is
    /// dropped; await the handle before closing the channel.
    pub fn start(
        channel: Channel,
        prefetch: u16,
        stopping: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (answers, received) = mpsc::unbounded_channel();
        let unsettled = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            channel,
            received,
            unsettled.clone(),
            ack_every(prefetch),
            stopping,
        ));
        (Replies { answers, unsettled }, task)
    }

    /// Counts a request just taken from the queue; it must be answered.
    pub fn received(&self) {
        self.unsettled.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands over one request's answer.
    pub fn send(&self, answer: Answer) {
        // The reply task outlives every sender unless the channel failed;
        // then the broker redelivers whatever was not acked.
        let _ = self.answers.send(answer);
    }
}

/// A refusal's reply, held until its caller's turn.
struct Held {
    to: ShortString,
    body: Vec<u8>,
    properties: BasicProperties,
    span: tracing::Span,
    /// Counts it as held until it is published.
    _held: HeldReply,
}

/// How many answered requests one ack covers while others are still being
/// answered: an eighth of the prefetch window, so acks held back never
/// keep the broker from sending more than a few requests' worth, and the
/// host makes fewer `sendto` calls per request (`BENCHMARKS.md`).
fn ack_every(prefetch: u16) -> u64 {
    u64::from(prefetch / 8).max(1)
}

async fn run(
    channel: Channel,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    unsettled: Arc<AtomicUsize>,
    ack_every: u64,
    stopping: CancellationToken,
) {
    let mut publishing = FuturesUnordered::new();
    let mut window = Window::default();
    // Refusals' replies by when they are due (and the order they came in).
    let mut held: BTreeMap<(Instant, u64), Held> = BTreeMap::new();
    let mut held_count = 0_u64;
    // The highest answered tag not yet acked, and the last tag acked.
    let (mut due, mut acked): (Option<DeliveryTag>, DeliveryTag) = (None, 0);
    let mut open = true;
    // Requests settled since the last ack: only `Ack` and `Requeue`.
    let mut settled = Vec::new();
    while open || !publishing.is_empty() || !held.is_empty() {
        let next_held = held.keys().next().map(|(at, _)| *at);
        tokio::select! {
            answer = answers.recv(), if open => match answer {
                Some(answer) => {
                    let mut next = Some(answer);
                    while let Some(answer) = next {
                        match answer {
                            Answer::Reply { tag, to, body, properties, span, held: Some(hold) } => {
                                held_count += 1;
                                held.insert((hold.until, held_count), Held { to, body, properties, span, _held: hold });
                                settled.push(Answer::Ack(tag));
                            }
                            Answer::Reply { tag, to, body, properties, span, held: None } => {
                                publishing.push(publish(&channel, Some(tag), to, body, properties).instrument(span));
                            }
                            settles => settled.push(settles),
                        }
                        next = answers.try_recv().ok();
                    }
                }
                // Every sender is gone: only the replies being published
                // (and those held) are left.
                None => open = false,
            },
            Some(done) = publishing.next(), if !publishing.is_empty() => settled.extend(done),
            _ = tokio::time::sleep_until(next_held.unwrap_or_else(Instant::now).into()), if next_held.is_some() => {}
            _ = stopping.cancelled(), if next_held.is_some() => {}
        }
        // Held replies now due, or all of them once the host stops.
        let now = Instant::now();
        while let Some(entry) = held.first_entry() {
            if entry.key().0 > now && open && !stopping.is_cancelled() {
                break;
            }
            let Held {
                to,
                body,
                properties,
                span,
                ..
            } = entry.remove();
            publishing.push(publish(&channel, None, to, body, properties).instrument(span));
        }
        // Queues the frames of the replies just taken (a publish future's
        // first poll does) and collects every reply whose write (or, in
        // durable mode, confirm) has completed by now.
        while let Some(Some(done)) = futures_lite::future::poll_once(publishing.next()).await {
            settled.extend(done);
        }
        unsettled.fetch_sub(settled.len(), Ordering::Relaxed);
        for settled in settled.drain(..) {
            if let Answer::Requeue(tag) = settled {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                if let Err(error) = channel.basic_nack(tag, requeue).await {
                    tracing::warn!(%error, "returning a request to the queue");
                    return;
                }
            }
            window.settle(&settled);
        }
        due = window.advance().or(due);
        let Some(upto) = due else { continue };
        let idle = unsettled.load(Ordering::Relaxed) == 0;
        if upto - acked >= ack_every || idle || !open {
            if ack_through(&channel, upto).await.is_err() {
                return;
            }
            (due, acked) = (None, upto);
        }
    }
}

/// Publishes a reply and says what became of its request `tag`: acked, or
/// returned to the queue when the reply could not be published. No `tag`:
/// a held refusal, whose request was acked when it was refused.
async fn publish(
    channel: &Channel,
    tag: Option<DeliveryTag>,
    to: ShortString,
    body: Vec<u8>,
    properties: BasicProperties,
) -> Option<Answer> {
    let published = publish_to(channel, to, &body, properties).await;
    match (published, tag) {
        (Ok(()), tag) => tag.map(Answer::Ack),
        (Err(error), Some(tag)) => {
            tracing::error!(
                "publishing the reply failed: {error:#}; the request goes back to the queue"
            );
            Some(Answer::Requeue(tag))
        }
        (Err(error), None) => {
            // The request is acked; its caller sees its call time out.
            tracing::debug!("publishing a held refusal failed: {error:#}");
            None
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
    /// Notes a request settled: `Ack` (answered) or `Requeue`.
    fn settle(&mut self, settled: &Answer) {
        let (tag, answered) = match *settled {
            Answer::Ack(tag) => (tag, true),
            Answer::Requeue(tag) => (tag, false),
            Answer::Reply { .. } => unreachable!("a reply is settled once published"),
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
        window.settle(&Answer::Ack(2));
        window.settle(&Answer::Ack(3));
        assert_eq!(window.advance(), None, "1 is still running");
        window.settle(&Answer::Ack(1));
        assert_eq!(window.advance(), Some(3));
        window.settle(&Answer::Ack(5));
        assert_eq!(window.advance(), None);
        window.settle(&Answer::Requeue(4));
        assert_eq!(
            window.advance(),
            Some(5),
            "4 was nacked on its own, so the ack may pass it"
        );
        window.settle(&Answer::Ack(7));
        window.settle(&Answer::Requeue(8));
        window.settle(&Answer::Requeue(6));
        assert_eq!(
            window.advance(),
            Some(7),
            "never up to a requeued tag: the broker no longer waits for it"
        );
        window.settle(&Answer::Requeue(9));
        assert_eq!(window.advance(), None, "nothing answered to ack");
        window.settle(&Answer::Ack(10));
        assert_eq!(window.advance(), Some(10));
    }
}
