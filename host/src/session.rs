//! One connection's life, and the next one's when it fails.
//!
//! A [`Session`] opens in a fixed order: connect, declare the request queue,
//! catch up with the deploy stream, and only then consume requests. So a
//! host never answers a request before it serves every deploy it could know
//! about, on its first connection or after a reconnect. [`connect`] retries
//! until the broker answers (startup under systemd or compose, where start
//! order is a guess) and, slowly, while it refuses the setup (a queue
//! declared the other way: exiting would only crash-loop under a
//! supervisor); [`serve_forever`] reconnects when the connection drops,
//! moving on to the next node of a cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use warren_protocol::QueueMode;
use warren_protocol::deploy::StreamRetention;

use warren_protocol::broker::{Backoff, Brokers, close_quietly};

use crate::causes::{Causes, SetupRefused};
use crate::control::{Control, StatusSource};
use crate::deploy::Deployer;
use crate::deploy::stream::{DeployStream, RetentionRefused, StreamState};
use crate::dispatch::Dispatcher;
use crate::requests::dead::DeadLetters;
use crate::requests::{RequestQueue, Requests};
use crate::shutdown::Shutdown;

/// Where and how to connect; the same for every session of a host.
#[derive(Debug)]
pub struct Target {
    /// The broker's nodes (URLs with passwords; never logged as they are).
    pub brokers: Brokers,
    /// The request queue.
    pub queue: String,
    /// How the request queue is declared.
    pub mode: QueueMode,
    /// Unacked requests held at once.
    pub prefetch: u16,
    /// How the deploy stream is declared, if this host creates it.
    pub retention: StreamRetention,
    /// What the host answers `warren status` with.
    pub status: Arc<StatusSource>,
}

/// A connection that is consuming requests and following the deploy stream.
pub struct Session {
    connection: Connection,
    /// The node connected to, password hidden.
    broker: String,
    requests: Requests,
    deploys: DeployStream,
    dead_letters: Option<DeadLetters>,
    control: Control,
    status: Arc<StatusSource>,
}

/// Why a session could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The broker did not answer or refused the connection: worth retrying.
    Unreachable(anyhow::Error),
    /// Connected, but the setup failed in a way that passes (a stream just
    /// declared on a cluster whose replica is not up yet, an internal
    /// error): worth retrying soon.
    Transient(anyhow::Error),
    /// Connected, but the broker refused the setup (a queue declared with
    /// other settings, no permission): retrying will not help until a
    /// person changes something.
    Refused(anyhow::Error),
}

impl OpenError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            OpenError::Unreachable(error)
            | OpenError::Transient(error)
            | OpenError::Refused(error) => error,
        }
    }

    /// Sorts an error met while setting up on a connection.
    fn of_setup(error: anyhow::Error) -> Self {
        if needs_a_person(&error) {
            OpenError::Refused(error)
        } else {
            OpenError::Transient(error)
        }
    }
}

/// Whether a setup error needs a person: a [`SetupRefused`], or the broker
/// refusing access or the queue's arguments. Anything else (an internal
/// error, a stream whose replica is not on this node yet, a channel closed
/// under it) is taken to pass.
fn needs_a_person(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if cause.is::<SetupRefused>() || cause.is::<RetentionRefused>() {
            return true;
        }
        let Some(lapin) = cause.downcast_ref::<lapin::Error>() else {
            return false;
        };
        let lapin::ErrorKind::ProtocolError(amqp) = lapin.kind() else {
            return false;
        };
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
            | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => true,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => {
                amqp.get_message().as_str().contains("inequivalent arg")
            }
            _ => false,
        }
    })
}

impl Session {
    /// Connects and sets up, in the order the module docs give. `history`
    /// says whether this is the host's first session (whose catch-up replays
    /// the deploy history).
    pub async fn open(
        target: &Target,
        deployer: &Deployer,
        state: &StreamState,
        history: bool,
    ) -> Result<Self, OpenError> {
        let (connection, broker) = target
            .brokers
            .connect(CONNECT_ATTEMPT_TIMEOUT, |error| {
                if target.brokers.len() > 1 {
                    tracing::warn!("cannot connect: {error}");
                }
            })
            .await
            .map_err(|error| OpenError::Unreachable(error.into()))?;
        let set_up = async {
            let queue =
                RequestQueue::declare(&connection, &target.queue, target.mode, target.prefetch)
                    .await?;
            let user = warren_protocol::amqp_user(&broker);
            let mut deploys = DeployStream::open(
                &connection,
                deployer,
                user,
                &target.queue,
                target.retention,
                state.clone(),
            )
            .await?;
            deploys.catch_up(deployer, history).await?;
            let dead_letters = match target.mode {
                QueueMode::Durable { delivery_limit } => {
                    Some(DeadLetters::consume(&connection, &target.queue, delivery_limit).await?)
                }
                QueueMode::Tutorial => None,
            };
            let control = Control::listen(&connection, &target.queue).await?;
            let requests = queue.consume().await?;
            anyhow::Ok((requests, deploys, dead_letters, control))
        }
        .await;
        match set_up {
            Ok((requests, deploys, dead_letters, control)) => Ok(Session {
                connection,
                broker,
                requests,
                deploys,
                dead_letters,
                control,
                status: target.status.clone(),
            }),
            Err(error) => {
                // Half-set-up connections must not pile up across retries.
                close_quietly(connection.close(200, "warren-host setup failed".into())).await;
                Err(OpenError::of_setup(error))
            }
        }
    }

    /// The node this session is connected to, password hidden.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// Answers requests and applies deploys until shutdown (`Ok`) or until
    /// the connection fails (`Err`).
    pub async fn serve(
        self,
        dispatcher: Arc<Dispatcher>,
        deployer: Arc<Deployer>,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let mut deploys = tokio::spawn(self.deploys.follow(deployer, shutdown.clone()));
        let dead_letters = self
            .dead_letters
            .map(|dead| tokio::spawn(dead.serve(shutdown.clone())));
        let control = tokio::spawn(self.control.serve(self.status, shutdown.clone()));
        let requests = self.requests.serve(dispatcher, shutdown);
        tokio::pin!(requests);
        // A deploy stream that fails while the connection is up (deleted
        // under the host) fails the session: it reconnects and reads the
        // stream anew, rather than go on deaf to deploys. Requests not yet
        // acked are redelivered, to this host or another.
        let mut deploys_ended = false;
        let result = loop {
            tokio::select! {
                result = &mut requests => break result,
                ended = &mut deploys, if !deploys_ended => {
                    deploys_ended = true;
                    if let Ok(Err(error)) = ended {
                        break Err(error);
                    }
                }
            }
        };
        if !deploys_ended {
            if result.is_ok() {
                let _ = deploys.await;
            } else {
                deploys.abort();
            }
        }
        for task in [control].into_iter().chain(dead_letters) {
            if result.is_ok() {
                let _ = task.await;
            } else {
                task.abort();
            }
        }
        close_quietly(self.connection.close(200, "warren-host stopping".into())).await;
        result
    }
}

/// How long one connection attempt may take.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before trying again a setup the broker refused: it
/// takes a person to fix it.
const REFUSED_RETRY: Duration = Duration::from_secs(30);

/// Opens the first session, retrying while the broker cannot be reached or
/// the setup fails in passing (with backoff) or the broker refuses the
/// setup (every 30 s, saying why), for at most `give_up_after` (forever
/// when `None`).
pub async fn connect(
    target: &Target,
    deployer: &Deployer,
    state: &StreamState,
    give_up_after: Option<Duration>,
) -> anyhow::Result<Session> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        let (error, delay, waiting_for) = match Session::open(target, deployer, state, true).await {
            Ok(session) => return Ok(session),
            Err(OpenError::Unreachable(error)) => (error, backoff.next_delay(), "the broker"),
            Err(OpenError::Transient(error)) => (
                error,
                backoff.next_delay(),
                "the broker to finish setting up",
            ),
            Err(OpenError::Refused(error)) => (error, REFUSED_RETRY, "the setup to be fixed"),
        };
        if let Some(limit) = give_up_after
            && started.elapsed() + delay > limit
        {
            return Err(error.context(format!(
                "gave up waiting for {waiting_for} after {}: the next try, in {}, would be past \
                 --connect-timeout {}",
                humantime::format_duration(round_to_ms(started.elapsed())),
                humantime::format_duration(round_to_ms(delay)),
                humantime::format_duration(limit)
            )));
        }
        tracing::warn!(
            brokers = %target.brokers.shown(),
            "waiting for {waiting_for}: {}; next try in {}",
            Causes(&error),
            humantime::format_duration(round_to_ms(delay))
        );
        tokio::time::sleep(delay).await;
    }
}

/// Keeps sessions going until shutdown: when one fails, opens the next
/// with backoff. Deploys missed meanwhile are applied before requests flow
/// again. The broker link's state goes into the dispatcher's metrics (the
/// caller has marked `first` connected).
pub async fn serve_forever(
    first: Session,
    target: Target,
    dispatcher: Arc<Dispatcher>,
    deployer: Arc<Deployer>,
    state: StreamState,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let metrics = dispatcher.metrics().clone();
    let mut session = first;
    loop {
        let served = session.serve(dispatcher.clone(), deployer.clone(), shutdown.clone());
        let served = served.await;
        metrics.disconnected();
        let error = match served {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        tracing::warn!("lost the broker: {}; reconnecting", Causes(&error));
        let mut backoff = Backoff::new();
        session = loop {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.recv() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            match Session::open(&target, &deployer, &state, false).await {
                Ok(session) => {
                    metrics.reconnected();
                    metrics.connected(session.broker());
                    tracing::info!(broker = %session.broker(), queue = %target.queue, "reconnected");
                    break session;
                }
                Err(error) => {
                    let error = error.into_inner();
                    tracing::warn!("reconnect failed: {}; trying again", Causes(&error));
                }
            }
        };
    }
}

fn round_to_ms(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::AMQPError;

    fn broker_error(kind: AMQPErrorKind, message: &str) -> anyhow::Error {
        let error = lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
            kind,
            message.into(),
        )));
        anyhow::Error::from(error).context("consuming the deploy stream")
    }

    /// Hosts started at once on a new queue meet errors that pass while
    /// the broker sets the new stream up: those are retried quickly, and
    /// only what a person must fix waits.
    #[test]
    fn only_setups_a_person_must_fix_wait_long() {
        let soft = |code| AMQPErrorKind::Soft(code);
        let passing = [
            broker_error(
                soft(AMQPSoftError::PRECONDITIONFAILED),
                "PRECONDITION_FAILED - stream queue 'q.deploys' in vhost '/' does not have a \
                 replica on the local node",
            ),
            broker_error(
                AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR),
                "INTERNAL_ERROR",
            ),
            anyhow::anyhow!("the broker stopped the deploy stream consumer"),
        ];
        for error in passing {
            assert!(!needs_a_person(&error), "{error:#}");
        }
        let lasting = [
            broker_error(
                soft(AMQPSoftError::PRECONDITIONFAILED),
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q'",
            ),
            broker_error(
                soft(AMQPSoftError::ACCESSREFUSED),
                "ACCESS_REFUSED - access to queue 'q' refused",
            ),
            anyhow::Error::from(SetupRefused("queue \"q\" exists as a quorum queue".into())),
        ];
        for error in lasting {
            assert!(needs_a_person(&error), "{error:#}");
        }
    }
}
