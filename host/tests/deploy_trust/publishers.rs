//! Who may write into the deploy stream and what it gets done: a caller's
//! flood and an old deploy put back cannot roll a host back; a caller's
//! deploy is neither applied, answered nor counted; replays are not
//! answered and refusals echo no header.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_client::protocol::ErrorKind;
use warren_client::protocol::deploy::{
    HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME, deploy_stream, new_sequence, public_key_path,
};
use warren_client::protocol::{header_text, set_header_text};
use warren_client::{Deploy, RpcClient, SecretKey};
use warren_testing::*;

use crate::support::{
    CALLER, DEPLOYER, SMALL, answers_within, counter, flood_stream, host_permissions, user,
    user_for,
};

/// Finding 1 of issue 37, end to end: v1, then v2 with a manifest that
/// lets only amy call; the host stops; a caller floods the deploy stream
/// past its retention, so v2 drops out of it, and someone who kept v1's
/// signed deploy publishes it again (as a deploying user: the worst case).
/// The restarted host still serves v2 with its manifest, refuses v1 by the
/// record it saved beside the module, and the procedure stays restricted.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_deploy_put_back_after_a_flood_cannot_roll_back_a_restarted_host() {
    let queue = unique_queue("deploy-rollback");
    let Some(deployer) = user("deployer", DEPLOYER) else {
        return;
    };
    let (Some(caller), Some(amy)) = (user("flooder", CALLER), user("amy", CALLER)) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let deploy_users = vec![deployer.name.clone()];
    let mut host = TestHost::start_on(&queue, &[], |config| {
        trusting(public_key_path(&secret), "restarted")(config);
        config.deploy_retention = SMALL;
        config.deploys.deploy_users = deploy_users;
    })
    .await;

    let fib = fib_wasm();
    let (v1, v2) = (
        with_custom_section(&fib, "v1"),
        with_custom_section(&fib, "v2"),
    );
    let old_sequence = new_sequence() - 60_000;
    let old_signature = key.sign("fib", &digest(&v1), old_sequence, None);
    let old_deploy = deploy_headers("fib", &v1, old_sequence, &key, &old_signature);
    publish_raw_deploys_from(&deployer.url(), &queue, &[(old_deploy.clone(), v1.clone())]).await;
    assert!(
        host.wait_serving("fib", &digest(&v1), Duration::from_secs(20))
            .await
    );
    let manifest = format!("callers = [\"{}\"]\n[limits]\ntimeout = \"1s\"\n", amy.name);
    let client = RpcClient::connect(&deployer.url(), &queue).await.unwrap();
    let report = client
        .deploy(
            Deploy::new("fib", v2.clone())
                .manifest(manifest.clone())
                .signed_by(SecretKey::read(&secret).unwrap())
                .timeout(CALL_TIMEOUT),
        )
        .await
        .expect("the deployer's permissions are enough to deploy");
    client.close().await;
    assert!(report.all_accepted(), "{report:?}");
    let record = std::fs::read_to_string(host.modules.path().join("fib.deploy")).unwrap();
    assert!(record.contains(&digest(&v2)), "{record}");

    host.stop_host().await;
    flood_stream(&caller, &queue, 48, 64 << 10).await;
    let left = read_deploy_stream(&queue).await;
    assert!(
        left.iter().all(|message| {
            header_text(Some(&message.headers), HEADER_DEPLOY_DIGEST) != Some(digest(&v2))
        }),
        "the flood pushed v2 out of the stream"
    );
    publish_raw_deploys_from(&deployer.url(), &queue, &[(old_deploy, v1.clone())]).await;

    host.restart().await;
    assert_eq!(host.serving("fib"), Some(digest(&v2)), "rolled back");
    assert_eq!(std::fs::read(host.module_path("fib")).unwrap(), v2);
    assert_eq!(
        std::fs::read_to_string(host.modules.path().join("fib.toml")).unwrap(),
        manifest,
        "the manifest was stripped"
    );
    let as_caller = RpcClient::connect(&caller.url(), &queue).await.unwrap();
    let refused = as_caller.call(call("10").procedure("fib")).await;
    assert_eq!(error_kind(refused), ErrorKind::Forbidden);
    as_caller.close().await;
    let as_amy = RpcClient::connect(&amy.url(), &queue).await.unwrap();
    let reply = as_amy.call(call("10").procedure("fib")).await.unwrap();
    assert_eq!(reply.body, b"55");
    as_amy.close().await;
    host.stop().await;
}

/// A caller, with exactly a caller's permissions, can publish into the
/// deploy stream (through the default exchange), even a deploy signed by a
/// trusted key: the host neither applies, answers nor counts it as a
/// deploy, only as a skipped message. A deploying user's deploy, and one
/// from a host running as a user with only the host's permissions, work.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_cannot_get_a_deploy_message_acted_on_answered_or_counted() {
    let queue = unique_queue("deploy-callers");
    let Some(deployer) = user("deployer", DEPLOYER) else {
        return;
    };
    let (Some(caller), Some(hosts)) = (
        user("caller", CALLER),
        user_for("host", &host_permissions(&queue)),
    ) else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let deploy_users = vec![deployer.name.clone()];
    let host_url = hosts.url();
    let host = TestHost::start_on(&queue, &[("fib", &fib_wasm())], |config| {
        trusting(public_key_path(&secret), "guarded")(config);
        config.broker.amqp_urls = vec![host_url];
        config.deploys.deploy_users = deploy_users;
    })
    .await;

    // A validly signed deploy (taken off the stream, say), sent by a caller.
    let taken = with_custom_section(&fib_wasm(), "taken");
    let sequence = new_sequence();
    let signature = key.sign("fib", &digest(&taken), sequence, None);
    let headers = deploy_headers("fib", &taken, sequence, &key, &signature);
    let (answers_connection, reply_to, mut answers) = reply_queue(&caller.url()).await;
    let connection = Connection::connect(&caller.url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            deploy_stream(&queue).as_str().into(),
            BasicPublishOptions::default(),
            &taken,
            BasicProperties::default()
                .with_headers(headers.clone())
                .with_user_id(caller.name.as_str().into())
                .with_reply_to(reply_to.clone()),
        )
        .await
        .expect("the broker lets a caller publish into the deploy stream")
        .await
        .unwrap();
    // And one without a user_id at all.
    channel
        .basic_publish(
            "".into(),
            deploy_stream(&queue).as_str().into(),
            BasicPublishOptions::default(),
            &taken,
            BasicProperties::default()
                .with_headers(headers)
                .with_reply_to(reply_to.clone()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    close_connection(&connection).await;

    // The deploying user's deploy, after them, is applied and answered.
    let deployed = with_custom_section(&fib_wasm(), "deployed");
    let client = RpcClient::connect(&deployer.url(), &queue).await.unwrap();
    let report = client
        .deploy(
            Deploy::new("fib", deployed.clone())
                .signed_by(SecretKey::read(&secret).unwrap())
                .timeout(CALL_TIMEOUT),
        )
        .await
        .unwrap();
    client.close().await;
    assert!(report.all_accepted(), "{report:?}");
    assert_eq!(host.serving("fib"), Some(digest(&deployed)));
    let to_caller = answers_within(&mut answers, Duration::from_secs(2)).await;
    assert!(
        to_caller.is_empty(),
        "the caller was answered: {to_caller:?}"
    );
    close_connection(&answers_connection).await;
    assert_eq!(
        counter(&host, "warren_deploys_total{result=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        counter(&host, "warren_deploys_total{result=\"refused\"}"),
        0.0
    );
    assert_eq!(counter(&host, "warren_deploy_messages_skipped_total"), 2.0);
    host.stop().await;
}

/// A starting host answers nothing it reads in the deploy history (three
/// junk deploys were answered once, when new, not again on restart), and a
/// refusal never repeats a header value its publisher chose.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_deploys_are_not_answered_and_refusals_do_not_echo_headers() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = key_in(keys.path(), "ops");
    let mut host = TestHost::start_with("deploy-echo", &[("fib", &fib_wasm())], |config| {
        trusting(public_key_path(&secret), "quiet")(config);
    })
    .await;
    let (connection, reply_to, mut answers) = reply_queue(&amqp_url()).await;
    let channel = connection.create_channel().await.unwrap();
    for i in 0..3 {
        let mut headers = FieldTable::default();
        set_header_text(&mut headers, HEADER_DEPLOY_NAME, "fib");
        set_header_text(
            &mut headers,
            HEADER_DEPLOY_DIGEST,
            &format!("<script>evil {i}</script>"),
        );
        channel
            .basic_publish(
                "".into(),
                deploy_stream(&host.queue).as_str().into(),
                BasicPublishOptions::default(),
                b"junk",
                BasicProperties::default()
                    .with_headers(headers)
                    .with_user_id(amqp_user_id())
                    .with_reply_to(reply_to.clone()),
            )
            .await
            .unwrap();
    }
    let mut first = Vec::new();
    while first.len() < 3 {
        let more = answers_within(&mut answers, CALL_TIMEOUT).await;
        assert!(!more.is_empty(), "answered {} of 3", first.len());
        first.extend(more);
    }
    for answer in &first {
        assert!(!answer.accepted);
        assert!(
            !answer.reason.contains("evil") && !answer.digest.contains("evil"),
            "{answer:?}"
        );
        assert!(answer.reason.contains("digest header"), "{answer:?}");
    }
    host.restart().await;
    let replayed = answers_within(&mut answers, Duration::from_secs(2)).await;
    assert!(replayed.is_empty(), "answered on replay: {replayed:?}");
    close_connection(&connection).await;
    host.stop().await;
}
