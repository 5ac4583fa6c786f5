//! The deploy history: hosts that start (or restart) after deploys apply
//! them before taking requests, however long the history, with no replay
//! rolling a procedure back, from a stream that stays bounded.

use std::time::Duration;

use warren_client::protocol::deploy::{new_sequence, public_key_path};
use warren_client::{Deploy, SecretKey};
use warren_testing::*;

#[tokio::test(flavor = "multi_thread")]
async fn restarted_and_newly_started_hosts_serve_the_deployed_version() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "deployed before they started");
    let mut first = TestHost::start_with(
        "deploy-later",
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "first"),
    )
    .await;
    let answer =
        only_answer(deploy(&first.queue, Deploy::new("fib", v2.clone()).signed_by(key)).await);
    assert!(answer.accepted, "{answer:?}");
    // An unsigned deploy after it must not hide it on replay.
    let unsigned = only_answer(deploy(&first.queue, Deploy::new("fib", v1.clone())).await);
    assert!(!unsigned.accepted);

    first.restart().await;
    assert_eq!(
        first.serving("fib"),
        Some(digest(&v2)),
        "the restarted host loads the saved module"
    );

    // A new host whose folder still holds the old version catches up from the history.
    let late = TestHost::join(
        &first.queue,
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "late"),
    )
    .await;
    assert!(
        late.wait_serving("fib", &digest(&v2), Duration::from_secs(15))
            .await,
        "the new host serves {:?}, not the deployed version",
        late.serving("fib")
    );
    assert_eq!(std::fs::read(late.module_path("fib")).unwrap(), v2);
    late.stop().await;
    first.stop().await;
}

/// Replaying an old signed deploy (its exact message, say copied off the
/// stream) onto the stream does not roll the procedure back: the sequence is
/// signed, and a host refuses a deploy not newer than the newest it
/// accepted for that name, live and when it replays the history.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_old_deploy_cannot_roll_a_procedure_back() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let v0 = fib_wasm();
    let v1 = with_custom_section(&v0, "v1");
    let v2 = with_custom_section(&v0, "v2");
    let mut host = TestHost::start_with(
        "deploy-replay",
        &[("fib", &v0)],
        trusting(public_key_path(&secret), "replayed"),
    )
    .await;

    // v1, as `warren deploy` would send it; its message is kept.
    let old_sequence = new_sequence() - 1_000;
    let old_signature = key.sign("fib", &digest(&v1), old_sequence, None);
    let old_deploy = deploy_headers("fib", &v1, old_sequence, &key, &old_signature);
    publish_raw_deploy(&host.queue, old_deploy.clone(), &v1).await;
    assert!(
        host.wait_serving("fib", &digest(&v1), Duration::from_secs(15))
            .await
    );
    // Then v2, and then the old message once more.
    let newer = only_answer(
        deploy(
            &host.queue,
            Deploy::new("fib", v2.clone()).signed_by(SecretKey::read(&secret).unwrap()),
        )
        .await,
    );
    assert!(newer.accepted, "{newer:?}");
    publish_raw_deploy(&host.queue, old_deploy, &v1).await;
    // A deploy after it, to know the replay has been processed.
    let marker = with_custom_section(&v0, "marker");
    let after = only_answer(
        deploy(
            &host.queue,
            Deploy::new("marker", marker).signed_by(SecretKey::read(&secret).unwrap()),
        )
        .await,
    );
    assert!(after.accepted, "{after:?}");
    assert_eq!(host.serving("fib"), Some(digest(&v2)), "rolled back live");

    // Going back on purpose is a new deploy of the old bytes: accepted.
    host.restart().await;
    assert_eq!(
        host.serving("fib"),
        Some(digest(&v2)),
        "rolled back on replay"
    );
    assert_eq!(std::fs::read(host.module_path("fib")).unwrap(), v2);
    let back = only_answer(
        deploy(
            &host.queue,
            Deploy::new("fib", v1.clone()).signed_by(SecretKey::read(&secret).unwrap()),
        )
        .await,
    );
    assert!(back.accepted, "{back:?}");
    assert_eq!(host.serving("fib"), Some(digest(&v1)));
    host.stop().await;
}

/// A host takes requests only once it has applied the deploy history: a
/// request waiting in the queue for a deployed procedure is answered by it,
/// even when the new host's folder lacks the module (it used to get
/// no-procedure, because the host said "ready" before replaying).
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_host_applies_the_deploy_history_before_taking_requests() {
    let v1 = fib_wasm();
    let fib2 = with_custom_section(&v1, "fib2");
    let unsigned =
        |config: &mut warren_host::HostConfig| config.deploys.allow_unsigned_deploys = true;
    let mut first = TestHost::start_with("deploy-ready", &[("fib", &v1)], unsigned).await;
    assert!(only_answer(deploy(&first.queue, Deploy::new("fib2", fib2.clone())).await).accepted);
    first.stop_host().await;

    // A request for fib2 waits in the queue while no host runs.
    let client = std::sync::Arc::new(first.client().await);
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.call(call("20").procedure("fib2")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = TestHost::join(&first.queue, &[("fib", &v1)], unsigned).await;
    let reply = waiting
        .await
        .unwrap()
        .expect("answered by the deployed fib2");
    assert_eq!(
        (reply.body.as_slice(), reply.digest),
        (&b"6765"[..], Some(digest(&fib2)))
    );
    second.stop().await;
    first.stop().await;
}

/// A host starts however long the deploy history is, and serves the newest
/// accepted version of each procedure. It used to wait forever once the
/// stream held 16 deploys (its prefetch): it held every message of the
/// history unacked until it reached its sync marker, which the broker then
/// never sent. Refused deploys and re-deploys of the same module count.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_starts_after_a_deploy_history_far_longer_than_its_prefetch() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let stranger = SecretKey::generate().unwrap();
    let queue = unique_queue("deploy-long-history");
    let fib = fib_wasm();
    let names = ["fib", "fob", "fub"];
    let first_sequence = new_sequence() - 10_000;
    let mut newest = std::collections::HashMap::new();
    let mut history = Vec::new();
    for i in 0..200u64 {
        let name = names[i as usize % names.len()];
        let sequence = first_sequence + i;
        // Every tenth module is its name's previous one again: a re-deploy.
        let version = if i % 10 == 5 { i - 3 } else { i };
        let module = with_custom_section(&fib, &format!("v{version}"));
        let module_digest = digest(&module);
        let (module, headers) = match i % 10 {
            3 => {
                let signature = stranger.sign(name, &module_digest, sequence, None);
                let headers = deploy_headers(name, &module, sequence, &stranger, &signature);
                (module, headers)
            }
            7 => {
                let signature = key.sign(name, &module_digest, sequence + 1, None);
                let headers = deploy_headers(name, &module, sequence, &key, &signature);
                (module, headers)
            }
            9 if i < 180 => {
                // Signed, but not a component, superseded by a later deploy.
                let garbage = format!("not a module {i}").into_bytes();
                let signature = key.sign(name, &digest(&garbage), sequence, None);
                let headers = deploy_headers(name, &garbage, sequence, &key, &signature);
                (garbage, headers)
            }
            _ => {
                let signature = key.sign(name, &module_digest, sequence, None);
                newest.insert(name, module_digest.clone());
                let headers = deploy_headers(name, &module, sequence, &key, &signature);
                (module, headers)
            }
        };
        history.push((headers, module));
    }
    publish_raw_deploys(&queue, &history).await;

    let host = tokio::time::timeout(
        Duration::from_secs(120),
        TestHost::start_on(&queue, &[], trusting(public_key_path(&secret), "late")),
    )
    .await
    .expect("the host became ready");
    for name in names {
        assert_eq!(
            host.serving(name).as_ref(),
            newest.get(name),
            "{name}: the newest accepted version"
        );
    }
    let client = host.client().await;
    let reply = client.call(call("20").procedure("fub")).await.unwrap();
    assert_eq!(reply.body, b"6765");
    host.stop().await;
}

/// The deploy stream keeps only its newest bytes (here 2 MiB), so it does
/// not grow without bound; the hosts publish each procedure's newest deploy
/// again before the stream would drop it, so a host started after the old
/// messages are gone still serves every procedure, at its newest version.
#[tokio::test(flavor = "multi_thread")]
async fn the_deploy_stream_stays_bounded_and_still_holds_every_procedure() {
    use warren_client::protocol::deploy::{HEADER_DEPLOY_COPY, StreamRetention};
    let retention = StreamRetention {
        max_bytes: 2 << 20,
        segment_bytes: 128 << 10,
    };
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let fib = fib_wasm();
    let small = |config: &mut warren_host::HostConfig| config.deploy_retention = retention;
    let keeper = TestHost::start_with("deploy-bounded", &[], |config| {
        trusting(public_key_path(&secret), "keeper")(config);
        small(config);
    })
    .await;
    let sign = |name: &str, module: &[u8], sequence: u64| {
        let signature = key.sign(name, &digest(module), sequence, None);
        deploy_headers(name, module, sequence, &key, &signature)
    };
    let steady = with_custom_section(&fib, "steady");
    let other = with_custom_section(&fib, "other");
    let sequence = new_sequence();
    publish_raw_deploys(
        &keeper.queue,
        &[
            (sign("steady", &steady, sequence), steady.clone()),
            (sign("other", &other, sequence), other.clone()),
        ],
    )
    .await;
    assert!(
        keeper
            .wait_serving("other", &digest(&other), Duration::from_secs(20))
            .await
    );

    // Deploy "churn" again and again: several times what the stream keeps.
    let per_deploy = fib.len() as u64;
    let deploys = (3 * retention.max_bytes / per_deploy).max(30);
    let mut last = Vec::new();
    for round in 0..deploys / 4 {
        let mut burst = Vec::new();
        for i in 0..4 {
            let module = with_custom_section(&fib, &format!("churn {round} {i}"));
            let sequence = new_sequence() + i;
            burst.push((sign("churn", &module, sequence), module.clone()));
            last = module;
        }
        publish_raw_deploys(&keeper.queue, &burst).await;
        assert!(
            keeper
                .wait_serving("churn", &digest(&last), Duration::from_secs(20))
                .await,
            "round {round}"
        );
    }
    // Give the keeper's last copies (a random wait of up to 2 s) time.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let messages = read_deploy_stream(&keeper.queue).await;
    assert!(
        messages[0].offset > 0,
        "the oldest messages are gone (the stream starts at {})",
        messages[0].offset
    );
    let held: usize = messages.iter().map(|m| m.bytes).sum();
    assert!(
        held as u64 <= retention.max_bytes,
        "the stream holds {held} bytes of deploys, more than it keeps"
    );
    let copies = messages
        .iter()
        .filter(|m| m.headers.inner().contains_key(HEADER_DEPLOY_COPY))
        .count();
    assert!(
        copies >= 2,
        "steady and other were published again: {copies}"
    );

    let late = TestHost::join(&keeper.queue, &[], |config| {
        trusting(public_key_path(&secret), "late")(config);
        small(config);
    })
    .await;
    for (name, module) in [("steady", &steady), ("other", &other), ("churn", &last)] {
        assert_eq!(late.serving(name), Some(digest(module)), "{name}");
    }
    late.stop().await;
    keeper.stop().await;
}
