//! The request queue: how each mode declares it, and what to say when the
//! broker refuses a declaration.

use lapin::types::{AMQPValue, FieldTable};

/// How a request queue is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueMode {
    /// A classic queue, not exclusive or auto-delete, as in the tutorial.
    /// Warren declares it durable: RabbitMQ 4 deprecates transient
    /// non-exclusive queues (the tutorial's `rpc_server.py` kind) and later
    /// 4.x releases refuse them. A queue that already exists the tutorial's
    /// way (one `rpc_server.py` made) is joined as it is, so Warren hosts
    /// and tutorial servers can serve the same queue. Requests are published
    /// transient either way: fastest, and a broker restart loses what was
    /// queued.
    #[default]
    Tutorial,
    /// A durable quorum queue, replicated over a cluster's nodes: requests
    /// survive broker restarts and node loss. A request delivered more than
    /// `delivery_limit` times without being acked is dead-lettered to
    /// [`dead_letter_queue`] instead of looping forever.
    Durable {
        /// Deliveries of one request before it is dead-lettered.
        delivery_limit: u32,
    },
}

/// The queue where durable mode's broker puts requests that reached the
/// delivery limit: `QUEUE.dead`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}{}", crate::values::DEAD_LETTERS_SUFFIX)
}

/// Declares request queue `queue` in `mode`, on a channel of its own
/// opened on `connection` and returned. RabbitMQ refuses a redeclaration
/// with other settings (`PRECONDITION_FAILED`), so every declarer of one
/// queue must agree on the mode; [`explain_queue_mismatch`] turns that
/// refusal into advice. The one exception: in [`QueueMode::Tutorial`] a
/// queue that exists as the tutorial declares it (not durable) is joined.
pub async fn declare_request_queue(
    connection: &lapin::Connection,
    queue: &str,
    mode: QueueMode,
) -> lapin::Result<lapin::Channel> {
    use lapin::options::QueueDeclareOptions;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let channel = connection.create_channel().await?;
    match mode {
        QueueMode::Tutorial => {
            let declared = channel
                .queue_declare(queue.into(), durable, FieldTable::default())
                .await;
            match declared {
                Ok(_) => Ok(channel),
                // The refusal closed that channel: join the tutorial's own
                // queue on a new one.
                Err(error)
                    if broker_said(&error, lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
                        && error.to_string().contains("'durable'") =>
                {
                    let channel = connection.create_channel().await?;
                    channel
                        .queue_declare(queue.into(), Default::default(), FieldTable::default())
                        .await?;
                    Ok(channel)
                }
                Err(error) => Err(error),
            }
        }
        QueueMode::Durable { delivery_limit } => {
            let dead = dead_letter_queue(queue);
            let mut arguments = quorum(FieldTable::default());
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(delivery_limit)),
            );
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(dead.as_str().into()),
            );
            channel
                .queue_declare(queue.into(), durable, arguments)
                .await?;
            // After the request queue: if that one is refused, nothing new
            // is left behind.
            channel
                .queue_declare(dead.as_str().into(), durable, quorum(FieldTable::default()))
                .await?;
            Ok(channel)
        }
    }
}

fn quorum(mut arguments: FieldTable) -> FieldTable {
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// If `error` is RabbitMQ refusing to redeclare `queue` with other settings,
/// says which and what to do; `None` for any other error.
pub fn explain_queue_mismatch(
    error: &lapin::Error,
    queue: &str,
    mode: QueueMode,
) -> Option<String> {
    if !broker_said(error, lapin::protocol::AMQPSoftError::PRECONDITIONFAILED) {
        return None;
    }
    let detail = error.to_string();
    let (wanted, other, flag) = match mode {
        QueueMode::Tutorial => (
            "a classic queue (as the tutorial declares it)",
            "a durable quorum queue",
            "add --durable",
        ),
        QueueMode::Durable { .. } => (
            "a durable quorum queue (--durable)",
            "a classic queue",
            "drop --durable",
        ),
    };
    // Which setting the broker names first differs between versions (3.x
    // names the queue type, 4.x may name a dead-letter argument). One the
    // existing queue lacks, or one it has that this mode never sets, means
    // the other mode made it.
    let other_mode = match mode {
        QueueMode::Tutorial => detail.contains("received none"),
        QueueMode::Durable { .. } => detail.contains("current is none"),
    };
    let what = if other_mode || detail.contains("x-queue-type") || detail.contains("'durable'") {
        format!("queue {queue:?} exists as {other}, but this host wants {wanted}")
    } else if detail.contains("x-delivery-limit") || detail.contains("x-dead-letter") {
        format!("queue {queue:?} exists with another --delivery-limit or dead-letter setting")
    } else {
        format!("queue {queue:?} exists with other settings than this host declares ({wanted})")
    };
    Some(format!(
        "{what}. Every host and caller of a queue must use the same mode: {flag} to match it, \
         or delete the queue when nothing needs what is in it (rabbitmqctl delete_queue {queue}) \
         and start again, or choose another --queue. (The broker said: {detail})"
    ))
}

/// Whether the broker answered with the channel-level AMQP error `code`:
/// 404 `NOT_FOUND` for a passive declare of a missing queue, 406
/// `PRECONDITION_FAILED` for a queue declared with other settings.
pub fn broker_said(error: &lapin::Error, code: lapin::protocol::AMQPSoftError) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == lapin::protocol::AMQPErrorKind::Soft(code)
    )
}
