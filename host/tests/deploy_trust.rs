//! The broker as untrusted transport for deploys, with real broker users
//! holding the permissions SECURITY.md gives hosts, deployers and callers:
//! a caller cannot get a deploy-stream message acted on, answered or
//! counted; an old signed deploy put back after the stream lost the newer
//! one cannot roll a restarted host back; replays are not answered and
//! refusals do not repeat what a publisher wrote; one host publishes each
//! keeper copy; a stream that keeps too little is refused.

use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_client::protocol::ErrorKind;
use warren_client::protocol::deploy::{
    DeployAnswer, HEADER_DEPLOY_COPY, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME, StreamRetention,
    deploy_stream, new_sequence, public_key_path,
};
use warren_client::protocol::{header_text, set_header_text};
use warren_client::{Deploy, RpcClient, SecretKey};
use warren_testing::*;

/// A deploy stream small enough to flood in a test.
const SMALL: StreamRetention = StreamRetention {
    max_bytes: 2 << 20,
    segment_bytes: 128 << 10,
};

/// The permissions SECURITY.md gives a caller: its own callback queue, and
/// publishing through the default exchange.
const CALLER: [&str; 3] = ["^amq\\.gen-.*", "^amq\\.default$", "^amq\\.gen-.*"];

/// The permissions SECURITY.md gives a deployer: its own callback queue,
/// publishing through the default exchange (the stream the hosts made is
/// opened passively).
const DEPLOYER: [&str; 3] = CALLER;

/// The permissions SECURITY.md gives the hosts of `queue`.
fn host_permissions(queue: &str) -> [String; 3] {
    let all = format!(
        "^{}(\\..*)?$|^amq\\.gen-.*|^amq\\.default$",
        queue.replace('.', "\\.")
    );
    [all.clone(), all.clone(), all]
}

fn user(prefix: &str, permissions: [&str; 3]) -> Option<BrokerUser> {
    BrokerUser::create_with(prefix, permissions)
}

fn user_for(prefix: &str, permissions: &[String; 3]) -> Option<BrokerUser> {
    let [c, w, r] = permissions;
    BrokerUser::create_with(prefix, [c, w, r])
}

/// Publishes `count` junk messages of `size` bytes into `queue`'s deploy
/// stream as `user` would (its `user_id`), each confirmed, with a
/// `reply_to` of its own: what a caller can do.
async fn flood_stream(user: &BrokerUser, queue: &str, count: usize, size: usize) {
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
async fn answers_within(consumer: &mut lapin::Consumer, within: Duration) -> Vec<DeployAnswer> {
    let mut answers = Vec::new();
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(within, consumer.next()).await {
        answers.push(serde_json::from_slice(&delivery.data).unwrap());
    }
    answers
}

/// The value of counter `name` in the host's metrics (0 when absent).
fn counter(host: &TestHost, line_start: &str) -> f64 {
    host.metrics_text()
        .lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0.0, |value| value.parse().unwrap())
}

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

/// Three hosts keep a procedure in a small stream while another churns.
/// Each waits almost no time before claiming (so all three claim every
/// round, and publishing takes longer than the wait), yet each round ends
/// with one copy: between two copies of a procedure, at least half of what
/// a round waits for follows the first.
#[tokio::test(flavor = "multi_thread")]
async fn one_host_publishes_each_copy_however_many_keep_the_stream() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let eager = |host_id: &'static str| {
        let secret = public_key_path(&secret);
        move |config: &mut warren_host::HostConfig| {
            trusting(secret, host_id)(config);
            config.deploy_retention = SMALL;
            config.deploy_republish_jitter = Duration::from_millis(1);
        }
    };
    let first = TestHost::start_with("deploy-claims", &[], eager("k1")).await;
    let second = TestHost::join(&first.queue, &[], eager("k2")).await;
    let third = TestHost::join(&first.queue, &[], eager("k3")).await;
    let fib = fib_wasm();
    let sign = |name: &str, module: &[u8], sequence: u64| {
        let signature = key.sign(name, &digest(module), sequence, None);
        deploy_headers(name, module, sequence, &key, &signature)
    };
    let steady = with_custom_section(&fib, "steady");
    publish_raw_deploys(
        &first.queue,
        &[(sign("steady", &steady, new_sequence()), steady.clone())],
    )
    .await;
    for host in [&first, &second, &third] {
        assert!(
            host.wait_serving("steady", &digest(&steady), Duration::from_secs(20))
                .await
        );
    }
    let rounds = 3 * SMALL.max_bytes / fib.len() as u64;
    for round in 0..rounds {
        let module = with_custom_section(&fib, &format!("churn {round}"));
        publish_raw_deploys(
            &first.queue,
            &[(sign("churn", &module, new_sequence()), module.clone())],
        )
        .await;
        assert!(
            first
                .wait_serving("churn", &digest(&module), Duration::from_secs(20))
                .await,
            "round {round}"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let messages = read_deploy_stream(&first.queue).await;
    let mut since_copy: Option<usize> = None;
    let mut copies = 0;
    for message in &messages {
        let name = header_text(Some(&message.headers), HEADER_DEPLOY_NAME);
        let copy = message.headers.inner().contains_key(HEADER_DEPLOY_COPY);
        if copy && name.as_deref() == Some("steady") {
            copies += 1;
            if let Some(between) = since_copy {
                assert!(
                    between as u64 >= SMALL.republish_after() / 2,
                    "two copies of steady with only {between} bytes between them"
                );
            }
            since_copy = Some(0);
        } else if let Some(between) = since_copy.as_mut() {
            *between += message.bytes;
        }
    }
    assert!(copies >= 2, "steady was kept: {copies} copies");
    third.stop().await;
    second.stop().await;
    first.stop().await;
}

/// A deploy stream declared by hand with an age limit, or with too few
/// bytes, is refused when a host starts (it waits for a person to fix it,
/// saying why; here it gives up): the message gives the stream's settings
/// and the fix. One declared by an earlier Warren (1 GiB, the
/// broker's default segments) is used.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_stream_that_keeps_too_little_is_refused_at_start() {
    for (arguments, said) in [
        (vec![("x-max-age", "1h")], "x-max-age=1h"),
        (
            vec![("x-max-length-bytes", "1000000")],
            "x-max-length-bytes=1000000",
        ),
    ] {
        let queue = unique_queue("deploy-retention");
        declare_stream_by_hand(&queue, &arguments).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = HostConfig::new(&queue, dir.path());
        config.broker.amqp_urls = vec![amqp_url()];
        // A refused setup is retried every 30 s (saying why), like any
        // other a person must fix; give up at once here.
        config.broker.connect_timeout = Some(Duration::from_secs(5));
        let refused = match warren_host::start(config).await {
            Ok(host) => {
                host.stop().await.unwrap();
                panic!("a host started on a stream with {said}");
            }
            Err(error) => format!("{error:#}"),
        };
        assert!(refused.contains(said), "{refused}");
        assert!(
            refused.contains(&format!("rabbitmqctl delete_queue {queue}.deploys")),
            "{refused}"
        );
        delete_queues(&queue).await;
    }

    let queue = unique_queue("deploy-retention-earlier");
    declare_stream_by_hand(&queue, &[("x-max-length-bytes", "1073741824")]).await;
    let host = TestHost::start_on(&queue, &[("fib", &fib_wasm())], |_| {}).await;
    host.stop().await;
}

/// Deletes `queue`'s deploy stream, as an operator would (or as a broker
/// that lost it).
async fn delete_stream(queue: &str) {
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
async fn declare_stream_by_hand(queue: &str, arguments: &[(&str, &str)]) {
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

/// The deploy stream deleted under a running host (as the refusal of a bad
/// stream tells an operator to do): the host notices, reconnects, reads the
/// stream declared anew from its start (it resumed past its end before, and
/// hung), and takes the next deploy.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_follows_a_deploy_stream_deleted_and_declared_anew() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = key_in(keys.path(), "ops");
    let host = TestHost::start_with(
        "deploy-recreated",
        &[("fib", &fib_wasm())],
        trusting(public_key_path(&secret), "follower"),
    )
    .await;
    let signed = |payload: &str| {
        Deploy::new("fib", with_custom_section(&fib_wasm(), payload))
            .signed_by(SecretKey::read(&secret).unwrap())
    };
    let first = only_answer(deploy(&host.queue, signed("before")).await);
    assert!(first.accepted, "{first:?}");

    delete_stream(&host.queue).await;

    let after = with_custom_section(&fib_wasm(), "after");
    let client = host.client().await;
    let report = client
        .deploy(
            Deploy::new("fib", after.clone())
                .signed_by(SecretKey::read(&secret).unwrap())
                .allow_no_hosts(true)
                .expect_hosts(1)
                .timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    client.close().await;
    assert!(report.all_accepted(), "{report:?}");
    assert_eq!(host.serving("fib"), Some(digest(&after)));
    host.stop().await;
}

/// Lose nothing: the deploy stream is lost while every host is down
/// (deleted, or flooded past its retention). A host that restarts with its
/// record and module publishes that deploy again, from its record and
/// manifest, so a host started later, from an empty folder, serves it with
/// its manifest.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_host_puts_back_a_deploy_the_stream_lost() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = key_in(keys.path(), "ops");
    let mut keeper = TestHost::start_with(
        "deploy-put-back",
        &[],
        trusting(public_key_path(&secret), "keeper"),
    )
    .await;
    let module = with_custom_section(&fib_wasm(), "kept");
    let manifest = "[limits]\ntimeout = \"2s\"\n";
    let answer = only_answer(
        deploy(
            &keeper.queue,
            Deploy::new("fib", module.clone())
                .manifest(manifest)
                .signed_by(SecretKey::read(&secret).unwrap()),
        )
        .await,
    );
    assert!(answer.accepted, "{answer:?}");

    keeper.stop_host().await;
    delete_stream(&keeper.queue).await;
    keeper.restart().await;

    let late = TestHost::join(
        &keeper.queue,
        &[],
        trusting(public_key_path(&secret), "late"),
    )
    .await;
    assert!(
        late.wait_serving("fib", &digest(&module), Duration::from_secs(20))
            .await,
        "the late host found the deploy the restarted one put back"
    );
    assert_eq!(
        std::fs::read_to_string(late.modules.path().join("fib.toml")).unwrap(),
        manifest
    );
    late.stop().await;
    keeper.stop().await;
}
