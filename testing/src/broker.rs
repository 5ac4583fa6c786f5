//! The real broker the tests talk to: its URL, fresh queue names, what it
//! says of a queue, deploys published by hand, and cleaning up.

use std::time::{Duration, Instant};

use warren_protocol::broker::close_quietly;

/// The broker the tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| warren_protocol::DEFAULT_AMQP_URL.into())
}

/// The broker user [`amqp_url`] logs in as: the `user_id` a deploy must
/// carry for hosts to read it (`--deploy-users`; a host reads its own
/// user's).
pub fn amqp_user_id() -> lapin::types::ShortString {
    warren_protocol::amqp_user(&amqp_url())
        .expect("AMQP_URL logs in with a user name")
        .into()
}

/// A connection as the broker user `url` logs in as, with an exclusive,
/// server-named queue of its own to collect replies (or deploy answers) on,
/// and a consumer of it (no acks).
pub async fn reply_queue(
    url: &str,
) -> (
    lapin::Connection,
    lapin::types::ShortString,
    lapin::Consumer,
) {
    use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    (connection, queue.name().clone(), consumer)
}

/// A unique queue name for one test.
pub fn unique_queue(test: &str) -> String {
    format!("warren-test-{test}-{}", uuid::Uuid::new_v4())
}

/// What the broker at `url` says of `queue`: (messages ready, consumers),
/// or `None` when it does not exist.
pub async fn queue_state_at(url: &str, queue: &str) -> Option<(u32, u32)> {
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    // A passive declare of a missing queue closes its channel (and this
    // connection is the test's own).
    let channel = connection.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let state = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .ok()
        .map(|info| (info.message_count(), info.consumer_count()));
    close_connection(&connection).await;
    state
}

/// [`queue_state_at`] on the test broker.
pub async fn queue_state(queue: &str) -> Option<(u32, u32)> {
    queue_state_at(&amqp_url(), queue).await
}

/// Waits until `accept` likes what the broker at `url` says of `queue`
/// ([`queue_state_at`]); panics with `what` after 30 s.
pub async fn wait_for_queue_at(
    url: &str,
    queue: &str,
    what: &str,
    accept: impl Fn(Option<(u32, u32)>) -> bool,
) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let state = queue_state_at(url, queue).await;
        if accept(state) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{queue}: {what} did not happen within 30 s (messages, consumers: {state:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until something consumes `queue` (a server started in another
/// process, say); panics after 30 s.
pub async fn wait_for_consumer(queue: &str) {
    wait_for_queue_at(&amqp_url(), queue, "a consumer", |state| {
        state.is_some_and(|(_, consumers)| consumers > 0)
    })
    .await;
}

/// Publishes a deploy message onto `queue`'s deploy stream by hand, as a
/// deploying user could (named as its `user_id`), without waiting for
/// answers.
pub async fn publish_raw_deploy(queue: &str, headers: lapin::types::FieldTable, module: &[u8]) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            warren_protocol::deploy::deploy_stream(queue)
                .as_str()
                .into(),
            lapin::options::BasicPublishOptions::default(),
            module,
            lapin::BasicProperties::default()
                .with_headers(headers)
                .with_user_id(amqp_user_id()),
        )
        .await
        .unwrap();
    close_connection(&connection).await;
}

/// Publishes deploy messages (headers, module) onto `queue`'s deploy
/// stream as a deploying user, declaring it first, in order, each
/// confirmed by the broker.
pub async fn publish_raw_deploys(queue: &str, deploys: &[(lapin::types::FieldTable, Vec<u8>)]) {
    publish_raw_deploys_from(&amqp_url(), queue, deploys).await;
}

/// [`publish_raw_deploys`] as the broker user `url` logs in as (named as
/// each message's `user_id`).
pub async fn publish_raw_deploys_from(
    url: &str,
    queue: &str,
    deploys: &[(lapin::types::FieldTable, Vec<u8>)],
) {
    let user_id: lapin::types::ShortString = warren_protocol::amqp_user(url)
        .expect("a URL with a user name")
        .into();
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .unwrap();
    let (channel, stream) = warren_protocol::deploy::open_deploy_stream(&connection, queue)
        .await
        .unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    for (headers, module) in deploys {
        let confirmation = channel
            .basic_publish(
                "".into(),
                stream.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                module,
                lapin::BasicProperties::default()
                    .with_headers(headers.clone())
                    .with_user_id(user_id.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack(), "the broker stored the deploy");
    }
    close_connection(&connection).await;
}

/// One message read back from a deploy stream.
#[derive(Debug)]
pub struct StreamMessage {
    pub offset: i64,
    pub headers: lapin::types::FieldTable,
    pub bytes: usize,
}

/// Everything `queue`'s deploy stream holds now, oldest first.
pub async fn read_deploy_stream(queue: &str) -> Vec<StreamMessage> {
    use futures_lite::StreamExt as _;
    use lapin::types::AMQPValue;
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(100, Default::default()).await.unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let stream = warren_protocol::deploy::deploy_stream(queue);
    let mut consumer = channel
        .basic_consume(
            stream.as_str().into(),
            "".into(),
            Default::default(),
            arguments,
        )
        .await
        .unwrap();
    let mut messages = Vec::new();
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
    {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(offset)) => *offset,
            other => panic!("no stream offset: {other:?}"),
        };
        messages.push(StreamMessage {
            offset,
            headers,
            bytes: delivery.data.len(),
        });
        delivery.acker.ack(Default::default()).await.unwrap();
    }
    close_connection(&connection).await;
    messages
}

/// Deletes `queue` and its deploy stream, if they exist.
pub async fn delete_queues(queue: &str) {
    let Ok(connection) = lapin::Connection::connect(&amqp_url(), Default::default()).await else {
        return;
    };
    let stream = warren_protocol::deploy::deploy_stream(queue);
    for name in [queue, stream.as_str()] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel.queue_delete(name.into(), Default::default()).await;
        }
    }
    close_connection(&connection).await;
}

/// Closes a test's own connection without risking a hang (lapin can wait
/// forever for a close-ok that never comes).
pub async fn close_connection(connection: &lapin::Connection) {
    close_quietly(connection.close(200, "test done".into())).await;
}

/// `GET path` from an HTTP server at `addr`: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
