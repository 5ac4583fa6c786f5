//! The ceiling: a tutorial-shaped worker that replies with the request body
//! the moment a request arrives, computing nothing. What a request costs
//! through this worker is what the broker costs; Warren is measured
//! against it.
//!
//! It handles requests as concurrently as `warren-host` does (a task per
//! request: publish the reply, then ack), so the comparison isolates what
//! Warren adds (choosing and running a procedure), not how it talks to the
//! broker. A worker that awaited each reply before taking the next request
//! would be a lower ceiling than the broker allows.
//!
//! `echo-worker --queue Q [--prefetch N]`; stops on SIGTERM or Ctrl-C.

use clap::Parser;
use futures_lite::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Replies to every request on QUEUE with its own body.
#[derive(Parser)]
struct Options {
    /// Broker to connect to.
    #[arg(long, env = "AMQP_URL", default_value = warren_protocol::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// Queue to serve (declared as the tutorial declares it).
    #[arg(long)]
    queue: String,
    /// Unacked requests held at once.
    #[arg(long, default_value_t = 128)]
    prefetch: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let properties = ConnectionProperties::default().with_connection_name("echo-worker".into());
    let connection = Connection::connect(&options.amqp_url, properties).await?;
    let channel =
        warren_protocol::declare_request_queue(&connection, &options.queue, Default::default())
            .await?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await?;
    let mut requests = channel
        .basic_consume(
            options.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("echo-worker: serving {}", options.queue);
    let serve = async {
        while let Some(request) = requests.next().await {
            let request = request?;
            let channel = channel.clone();
            tokio::spawn(async move {
                if let Some(reply_to) = request.properties.reply_to().clone() {
                    let mut properties = BasicProperties::default();
                    if let Some(id) = request.properties.correlation_id().clone() {
                        properties = properties.with_correlation_id(id);
                    }
                    let published = channel
                        .basic_publish(
                            "".into(),
                            reply_to,
                            BasicPublishOptions::default(),
                            &request.data,
                            properties,
                        )
                        .await;
                    if published.is_err() {
                        return; // unacked: the broker redelivers it
                    }
                }
                let _ = request.acker.ack(BasicAckOptions::default()).await;
            });
        }
        anyhow::Ok(())
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        served = serve => served?,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    let _ = channel
        .queue_delete(options.queue.as_str().into(), Default::default())
        .await;
    Ok(())
}
