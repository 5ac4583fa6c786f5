//! What the caller tests share: requests sent by hand as the seed's client
//! sends them (with or without `user_id`), reading a metrics line, and a
//! broker user of a chosen name.

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use warren_client::CallError;
use warren_client::protocol::{ErrorKind, HEADER_PROCEDURE, HEADER_RETRY_AFTER_MS, header_text};
use warren_testing::*;

/// Requests sent by hand, as the seed's client sends them (no `user_id`
/// unless given), with a callback queue of their own.
pub struct RawCaller {
    connection: Connection,
    channel: lapin::Channel,
    replies: lapin::Consumer,
    reply_to: ShortString,
    user_id: Option<String>,
}

/// A reply's `x-rpc-error` kind (`None` for success), `x-retry-after-ms`
/// and body.
pub type RawReply = (Option<String>, Option<String>, Vec<u8>);

impl RawCaller {
    pub async fn connect(url: &str, user_id: Option<&str>) -> Result<Self, lapin::Error> {
        let connection = Connection::connect(url, Default::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let queue = channel
            .queue_declare(
                ShortString::default(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let replies = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(RawCaller {
            connection,
            channel,
            replies,
            reply_to: queue.name().clone(),
            user_id: user_id.map(str::to_owned),
        })
    }

    /// Publishes one request for `procedure` and waits for the broker to
    /// take it.
    pub async fn send(
        &self,
        queue: &str,
        procedure: &str,
        body: &[u8],
    ) -> Result<(), lapin::Error> {
        let mut headers = FieldTable::default();
        warren_client::protocol::set_header_text(&mut headers, HEADER_PROCEDURE, procedure);
        let mut properties = BasicProperties::default()
            .with_reply_to(self.reply_to.clone())
            .with_correlation_id(uuid::Uuid::new_v4().to_string().into())
            .with_headers(headers);
        if let Some(user) = &self.user_id {
            properties = properties.with_user_id(user.as_str().into());
        }
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        Ok(())
    }

    /// The next reply, within 30 s.
    pub async fn reply(&mut self) -> Result<RawReply, lapin::Error> {
        let reply = tokio::time::timeout(Duration::from_secs(30), self.replies.next())
            .await
            .expect("a reply within 30s")
            .expect("the consumer is open")?;
        let headers = reply.properties.headers().as_ref();
        Ok((
            header_text(headers, warren_client::protocol::HEADER_RPC_ERROR),
            header_text(headers, HEADER_RETRY_AFTER_MS),
            reply.data,
        ))
    }

    pub async fn close(self) {
        close_connection(&self.connection).await;
    }
}

/// Sends one request by hand and returns the reply's `x-rpc-error` kind
/// (`None` for success) and `x-retry-after-ms`.
pub async fn raw_call(
    url: &str,
    queue: &str,
    procedure: &str,
    user_id: Option<&str>,
) -> Result<(Option<String>, Option<String>), lapin::Error> {
    let mut caller = RawCaller::connect(url, user_id).await?;
    caller.send(queue, procedure, b"10").await?;
    let (kind, retry_after, _) = caller.reply().await?;
    caller.close().await;
    Ok((kind, retry_after))
}

pub fn rpc_kind(outcome: Result<warren_client::Reply, CallError>) -> Option<ErrorKind> {
    match outcome {
        Ok(_) => None,
        Err(CallError::Rpc { error, .. }) => Some(error.kind),
        Err(other) => panic!("expected a reply, got {other}"),
    }
}

/// Sends one request by hand and returns the whole reply: its
/// `x-rpc-error` kind, `x-retry-after-ms` and body.
pub async fn raw_reply(
    url: &str,
    queue: &str,
    procedure: &str,
    user_id: Option<&str>,
) -> Result<RawReply, lapin::Error> {
    let mut caller = RawCaller::connect(url, user_id).await?;
    caller.send(queue, procedure, b"10").await?;
    let reply = caller.reply().await?;
    caller.close().await;
    Ok(reply)
}

/// Sends requests by hand until one is answered with success (`true`), for
/// at most 20 s: until a module or manifest just installed is served.
pub async fn raw_served(url: &str, queue: &str, procedure: &str, user_id: Option<&str>) -> bool {
    for _ in 0..200 {
        if let Ok((None, _)) = raw_call(url, queue, procedure, user_id).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The `count` of a metrics line that starts with `series` (0 without one).
pub fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A broker user with a name of the test's choosing (`anonymous`), made
/// like [`BrokerUser`] and deleted when dropped; `None` (after saying
/// SKIPPED) where it cannot be made, or already exists.
pub struct NamedUser {
    name: String,
    password: String,
}

impl NamedUser {
    pub fn create(name: &str) -> Option<NamedUser> {
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let made = std::process::Command::new("rabbitmqctl")
            .args(["add_user", name, &password])
            .output()
            .ok()
            .filter(|output| output.status.success());
        if made.is_none() {
            eprintln!("SKIPPED: no broker user {name:?} could be made (rabbitmqctl add_user)");
            return None;
        }
        let user = NamedUser {
            name: name.to_owned(),
            password,
        };
        let permitted = std::process::Command::new("rabbitmqctl")
            .args(["set_permissions", "-p", "/", name, ".*", ".*", ".*"])
            .status()
            .unwrap();
        assert!(permitted.success(), "rabbitmqctl set_permissions {name}");
        Some(user)
    }

    pub fn url(&self) -> String {
        let url = amqp_url();
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }
}

impl Drop for NamedUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}
