//! Requests and queues by hand over AMQP: the headers and bodies of the
//! wire contract, a request without `reply_to`, the queue a host declares
//! or joins.

use futures_lite::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_client::protocol::{
    ERROR_CONTENT_TYPE, ErrorBody, ErrorKind, HEADER_PROCEDURE, HEADER_PROCEDURE_DIGEST,
    HEADER_RPC_ERROR, HEADER_RPC_STATUS, header_text,
};
use warren_testing::*;

#[tokio::test(flavor = "multi_thread")]
async fn error_replies_follow_the_wire_contract() {
    let wasm = fib_wasm();
    let host = TestHost::start("wire", &[("fib", &wasm)]).await;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let callback = channel
        .queue_declare(
            ShortString::default(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut replies = channel
        .basic_consume(
            callback.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for (body, status) in [("abc", "error"), ("7", "ok")] {
        channel
            .basic_publish(
                "".into(),
                host.queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_reply_to(callback.name().clone())
                    .with_correlation_id(format!("corr-{body}").into()),
            )
            .await
            .unwrap();
        let reply = tokio::time::timeout(CALL_TIMEOUT, replies.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let props = &reply.properties;
        let headers = props.headers().as_ref();
        assert_eq!(
            props.correlation_id().as_ref().unwrap().as_str(),
            format!("corr-{body}")
        );
        assert_eq!(
            header_text(headers, HEADER_RPC_STATUS).as_deref(),
            Some(status)
        );
        assert_eq!(
            header_text(headers, HEADER_PROCEDURE).as_deref(),
            Some("fib")
        );
        assert_eq!(
            header_text(headers, HEADER_PROCEDURE_DIGEST),
            Some(digest(&wasm))
        );
        if status == "error" {
            assert_eq!(
                header_text(headers, HEADER_RPC_ERROR).as_deref(),
                Some("procedure-error")
            );
            assert_eq!(
                props.content_type().as_ref().unwrap().as_str(),
                ERROR_CONTENT_TYPE
            );
            let body = ErrorBody::from_json(&reply.data).expect("a JSON error body");
            assert_eq!(body.error.kind, ErrorKind::ProcedureError);
            assert!(
                std::str::from_utf8(&reply.data)
                    .unwrap()
                    .parse::<i64>()
                    .is_err()
            );
        } else {
            assert_eq!(reply.data, b"13");
            assert_eq!(header_text(headers, HEADER_RPC_ERROR), None);
        }
    }

    // An x-procedure header of the wrong AMQP type is named as such (it
    // used to be read as no header at all: "the request names no procedure").
    let mut headers = FieldTable::default();
    headers.insert(
        HEADER_PROCEDURE.into(),
        lapin::types::AMQPValue::LongLongInt(5),
    );
    channel
        .basic_publish(
            "".into(),
            host.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"7",
            BasicProperties::default()
                .with_reply_to(callback.name().clone())
                .with_headers(headers),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(CALL_TIMEOUT, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let body = ErrorBody::from_json(&reply.data).expect("a JSON error body");
    assert_eq!(body.error.kind, ErrorKind::NoProcedure);
    assert!(
        body.error
            .message
            .contains("the x-procedure header is an integer; it must be a string"),
        "{}",
        body.error.message
    );
    close_connection(&connection).await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_reply_to_is_acked_and_dropped() {
    let host = TestHost::start("no-reply-to", &[("fib", &fib_wasm())]).await;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            host.queue.as_str().into(),
            BasicPublishOptions::default(),
            b"10",
            BasicProperties::default().with_correlation_id("orphan".into()),
        )
        .await
        .unwrap();
    // A normal call after it proves the host moved past it.
    let client = host.client().await;
    assert_eq!(client.call(call("10")).await.unwrap().body, b"55");
    let queue = host.queue.clone();
    let mut host = host;
    let running = host.host.take().unwrap();
    running.stop().await.unwrap();
    // Had it been left unacked, stopping the host would have returned it to the queue.
    let info = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        info.message_count(),
        0,
        "the request without reply_to was not acked"
    );
    close_connection(&connection).await;
    host.stop().await;
}

/// In the default mode a host declares a new request queue durable
/// (RabbitMQ 4 deprecates, and can refuse, transient non-exclusive queues),
/// and joins a queue the tutorial's server made (transient) as it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_mode_declares_a_durable_queue_and_joins_the_tutorials() {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let transient = QueueDeclareOptions::default();

    let host = TestHost::start("declared-durable", &[("fib", &fib_wasm())]).await;
    let channel = connection.create_channel().await.unwrap();
    let redeclared = channel
        .queue_declare(host.queue.as_str().into(), transient, FieldTable::default())
        .await
        .expect_err("the host's queue is durable, so a transient redeclaration is refused");
    assert!(redeclared.to_string().contains("'durable'"), "{redeclared}");
    host.stop().await;

    let queue = unique_queue("tutorial-made");
    let channel = connection.create_channel().await.unwrap();
    if let Err(refused) = channel
        .queue_declare(queue.as_str().into(), transient, FieldTable::default())
        .await
    {
        assert!(
            refused.to_string().contains("transient_nonexcl_queues"),
            "{refused}"
        );
        eprintln!("this broker refuses transient non-exclusive queues: nothing to join");
        close_connection(&connection).await;
        return;
    }
    let host = TestHost::start_on(&queue, &[("fib", &fib_wasm())], |_| {}).await;
    let client = host.client().await;
    assert_eq!(client.call(call("10")).await.unwrap().body, b"55");
    client.close().await;
    host.stop().await;
    close_connection(&connection).await;
}
