//! What the deploy trust tests share: a small stream, the permissions
//! SECURITY.md gives each party, a caller's flood, the answers and
//! counters a host gives, and the stream deleted or declared by hand.

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_client::protocol::deploy::{
    DeployAnswer, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME, StreamRetention, deploy_stream,
};
use warren_client::protocol::set_header_text;
use warren_testing::*;

/// A deploy stream small enough to flood in a test.
pub const SMALL: StreamRetention = StreamRetention {
    max_bytes: 2 << 20,
    segment_bytes: 128 << 10,
};

/// The permissions SECURITY.md gives a caller: its own callback queue, and
/// publishing through the default exchange.
pub const CALLER: [&str; 3] = ["^amq\\.gen-.*", "^amq\\.default$", "^amq\\.gen-.*"];

/// The permissions SECURITY.md gives a deployer: its own callback queue,
/// publishing through the default exchange (the stream the hosts made is
/// opened passively).
pub const DEPLOYER: [&str; 3] = CALLER;

/// The permissions SECURITY.md gives the hosts of `queue`.
pub fn host_permissions(queue: &str) -> [String; 3] {
    let all = format!(
        "^{}(\\..*)?$|^amq\\.gen-.*|^amq\\.default$",
        queue.replace('.', "\\.")
    );
    [all.clone(), all.clone(), all]
}

pub fn user(prefix: &str, permissions: [&str; 3]) -> Option<BrokerUser> {
    BrokerUser::create_with(prefix, permissions)
}

pub fn user_for(prefix: &str, permissions: &[String; 3]) -> Option<BrokerUser> {
    let [c, w, r] = permissions;
    BrokerUser::create_with(prefix, [c, w, r])
}

/// Publishes `count` junk messages of `size` bytes into `queue`'s deploy
/// stream as `user` would (its `user_id`), each confirmed, with a
/// `reply_to` of its own: what a caller can do.
pub async fn flood_stream(user: &BrokerUser, queue: &str, count: usize, size: usize) {
    let connection = Connection::connect(&user.url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    let junk = vec![b'x'; size];
    for i in 0..count {
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_DEPLOY_NAME, "fib");
        set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &format!("junk-{i}"));
        let confirm = channel
            .basic_publish(
                "".into(),
                deploy_stream(queue).as_str().into(),
                BasicPublishOptions::default(),
                &junk,
                BasicProperties::default()
                    .with_headers(headers)
                    .with_user_id(user.name.as_str().into())
                    .with_reply_to("amq.gen-nobody".into()),
            )
            .await
            .expect("a caller may publish into the deploy stream")
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker stored the junk");
    }
    close_connection(&connection).await;
}

/// The answers that arrive on `consumer` within `within`.
pub async fn answers_within(consumer: &mut lapin::Consumer, within: Duration) -> Vec<DeployAnswer> {
    let mut answers = Vec::new();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(within, consumer.next()).await {
        answers.push(serde_json::from_slice(&delivery.data).unwrap());
    }
    answers
}

/// The value of counter `name` in the host's metrics (0 when absent).
pub fn counter(host: &TestHost, line_start: &str) -> f64 {
    host.metrics_text()
        .lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

/// Deletes `queue`'s deploy stream, as an operator would (or as a broker
/// that lost it).
pub async fn delete_stream(queue: &str) {
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(deploy_stream(queue).as_str().into(), Default::default())
        .await
        .unwrap();
    close_connection(&connection).await;
}

/// Declares `queue`'s deploy stream with `arguments` (numbers as numbers).
pub async fn declare_stream_by_hand(queue: &str, arguments: &[(&str, &str)]) {
    use lapin::types::AMQPValue;
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut table = FieldTable::default();
    table.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    for (name, value) in arguments {
        let value = match value.parse::<i64>() {
            Ok(number) => AMQPValue::LongLongInt(number),
            Err(_) => AMQPValue::LongString((*value).into()),
        };
        table.insert((*name).into(), value);
    }
    channel
        .queue_declare(
            deploy_stream(queue).as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table,
        )
        .await
        .unwrap();
    close_connection(&connection).await;
}
