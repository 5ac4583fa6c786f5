//! The deploy stream itself: one keeper copy per round however many hosts
//! keep it, a stream that keeps too little refused at start, a stream
//! deleted under a running host followed anew, a lost deploy put back.

use std::time::Duration;

use warren_client::protocol::deploy::{
    HEADER_DEPLOY_COPY, HEADER_DEPLOY_NAME, new_sequence, public_key_path,
};
use warren_client::protocol::header_text;
use warren_client::{Deploy, SecretKey};
use warren_testing::*;

use crate::support::{SMALL, declare_stream_by_hand, delete_stream};

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
        config.connection.connect_timeout = Some(Duration::from_secs(5));
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
