//! The versions each host keeps, `warren versions`, `warren rollback`, and
//! sequences that do not hang on a deployer's clock.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use warren_client::protocol::deploy::{
    HEADER_DEPLOY_COPY, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_KEPT, new_sequence, public_key_path,
};
use warren_client::protocol::header_text;
use warren_client::{Deploy, SecretKey};
use warren_testing::*;

/// Runs `warren --queue QUEUE ARGS…` and returns what it printed.
async fn warren(queue: &str, args: &[&str]) -> Output {
    let mut command = Command::new(binary("warren"));
    command
        .env("AMQP_URL", amqp_url())
        .args(["--queue", queue, "--timeout", "60s"])
        .args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}stderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Signed deploys of each module in turn, every host accepting.
async fn deploy_all(queue: &str, secret: &Path, modules: &[&[u8]]) {
    for module in modules {
        let key = SecretKey::read(secret).unwrap();
        let answers = deploy(queue, Deploy::new("fib", module.to_vec()).signed_by(key)).await;
        assert!(
            !answers.is_empty() && answers.iter().all(|a| a.accepted),
            "{answers:?}"
        );
    }
}

/// Calls fib(15) one after another until `stop`, counting failures.
fn keep_calling(queue: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    let queue = queue.to_owned();
    tokio::spawn(async move {
        let client = warren_client::RpcClient::connect(&amqp_url(), &queue)
            .await
            .unwrap();
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        while !stop.load(Ordering::Relaxed) {
            match client.call(call("15").procedure("fib")).await {
                Ok(reply) if reply.body == b"610" => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        client.close().await;
        (ok.into_inner(), failed.into_inner())
    })
}

/// Issue 39: versions are kept, listed fleet-wide, and one command returns
/// every host to an earlier one, sending no module, failing no request; a
/// host started afterwards, which keeps nothing, serves it too.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_returns_every_host_to_a_kept_version_without_sending_it() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let v1 = fib_wasm();
    let (v2, v3) = (
        with_custom_section(&v1, "v2"),
        with_custom_section(&v1, "v3"),
    );
    let a = TestHost::start_with(
        "rollback",
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "host-a"),
    )
    .await;
    let b = TestHost::join(
        &a.queue,
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "host-b"),
    )
    .await;
    deploy_all(&a.queue, &secret, &[&v2, &v3]).await;

    let listed = warren(&a.queue, &["versions", "fib"]).await;
    assert_eq!(listed.status.code(), Some(0), "{}", text(&listed));
    let stdout = String::from_utf8_lossy(&listed.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    // v1 came from the folders, not a deploy: not kept, and no longer served.
    assert_eq!(lines.len(), 2, "v3 and v2: {stdout}");
    assert!(lines[0].starts_with(&digest(&v3)), "newest first: {stdout}");
    assert!(
        lines[0].contains("kept by host-a,host-b\tserved by host-a,host-b"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&digest(&v2)) && lines[1].contains("served by -"),
        "{stdout}"
    );
    assert!(lines[1].contains(&key.public_key().to_string()), "{stdout}");
    for host in [&a, &b] {
        let kept = host.modules.path().join(".versions/fib");
        assert_eq!(
            std::fs::read_dir(&kept).unwrap().count(),
            2,
            "{}",
            kept.display()
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let caller = keep_calling(&a.queue, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rolled = warren(
        &a.queue,
        &["rollback", "fib", "--key", secret.to_str().unwrap()],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = caller.await.unwrap();
    assert_eq!(rolled.status.code(), Some(0), "{}", text(&rolled));
    let answers = String::from_utf8_lossy(&rolled.stdout).into_owned();
    assert_eq!(answers.lines().count(), 2, "{answers}");
    assert!(
        answers
            .lines()
            .all(|l| l.contains("\taccepted\t") && l.contains(&digest(&v2))),
        "{answers}"
    );
    assert!(
        ok > 0 && failed == 0,
        "{ok} answered, {failed} failed across the rollback"
    );
    for host in [&a, &b] {
        assert_eq!(host.serving("fib"), Some(digest(&v2)));
        assert_eq!(std::fs::read(host.module_path("fib")).unwrap(), v2);
    }

    // The rollback itself carried no module; within the keeper's random
    // wait (up to 2 s) a host publishes it again with its module, so a host
    // that keeps nothing finds it.
    let stream = read_deploy_stream(&a.queue).await;
    let kept: Vec<_> = stream
        .iter()
        .filter(|m| header_text(Some(&m.headers), HEADER_DEPLOY_KEPT).is_some())
        .collect();
    assert_eq!(kept.len(), 1, "{stream:?}");
    assert_eq!(kept[0].bytes, 0);
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stream = read_deploy_stream(&a.queue).await;
        let copied = stream.iter().any(|m| {
            header_text(Some(&m.headers), HEADER_DEPLOY_COPY).is_some()
                && header_text(Some(&m.headers), HEADER_DEPLOY_DIGEST) == Some(digest(&v2))
                && m.bytes > 0
        });
        if copied {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no copy with the module: {stream:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = TestHost::join(&a.queue, &[], trusting(public_key_path(&secret), "host-c")).await;
    assert!(
        c.wait_serving("fib", &digest(&v2), Duration::from_secs(20))
            .await,
        "a host started after the rollback serves {:?}",
        c.serving("fib")
    );

    // Forward to v3 by a digest prefix: host c never had v3, so it refuses
    // (and says so), keeps serving v2, and the command exits 1.
    let prefix = &digest(&v3)["sha256:".len()..][..12];
    let forward = warren(
        &a.queue,
        &[
            "rollback",
            "fib",
            "--to",
            prefix,
            "--key",
            secret.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(forward.status.code(), Some(1), "{}", text(&forward));
    let said = text(&forward);
    assert!(said.contains("host-c does not keep that version"), "{said}");
    assert!(
        said.contains("host-c\trefused\t\t"),
        "no digest for what was not checked: {said}"
    );
    assert!(said.contains("keeps no such version"), "{said}");
    for host in [&a, &b] {
        assert!(
            host.wait_serving("fib", &digest(&v3), Duration::from_secs(10))
                .await
        );
    }
    assert_eq!(c.serving("fib"), Some(digest(&v2)));
    c.stop().await;
    b.stop().await;
    a.stop().await;
}

/// A rollback is a deploy like any other: unsigned or to a version a host
/// does not keep, it is refused and nothing changes; a --to that names no
/// kept version sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_to_a_version_not_kept_or_unsigned_changes_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "v2");
    let host = TestHost::start_with(
        "rollback-refused",
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "host-a"),
    )
    .await;
    deploy_all(&host.queue, &secret, &[&v2]).await;

    let never_kept = with_custom_section(&v1, "never deployed");
    let refused = only_answer(
        deploy(
            &host.queue,
            Deploy::kept_version("fib", digest(&never_kept), None)
                .signed_by(SecretKey::read(&secret).unwrap()),
        )
        .await,
    );
    assert!(
        !refused.accepted && refused.reason.contains("keeps no such version"),
        "{refused:?}"
    );
    let unsigned =
        only_answer(deploy(&host.queue, Deploy::kept_version("fib", digest(&v2), None)).await);
    assert!(
        !unsigned.accepted && unsigned.reason.contains("unsigned"),
        "{unsigned:?}"
    );
    // Signed for one manifest, claiming another: the signature fails.
    let mut forged = Deploy::kept_version("fib", digest(&v2), Some(digest("[config]\n")));
    forged = forged.signed_by(key);
    let forged = only_answer(deploy(&host.queue, forged).await);
    assert!(!forged.accepted, "{forged:?}");
    assert_eq!(host.serving("fib"), Some(digest(&v2)));

    let nothing = warren(
        &host.queue,
        &[
            "rollback",
            "fib",
            "--to",
            "000000000000",
            "--key",
            secret.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(nothing.status.code(), Some(2), "{}", text(&nothing));
    assert!(
        text(&nothing).contains("no host keeps a version"),
        "{}",
        text(&nothing)
    );
    // v2 is served and v1 was never deployed: nothing older is kept.
    let none_older = warren(
        &host.queue,
        &["rollback", "fib", "--key", secret.to_str().unwrap()],
    )
    .await;
    assert_eq!(none_older.status.code(), Some(2), "{}", text(&none_older));
    assert_eq!(host.serving("fib"), Some(digest(&v2)));
    host.stop().await;
}

/// Issue 39: a deploy from a clock an hour fast is served, and the deploy
/// after it from a clock that is right is not refused as older: `warren
/// deploy` goes on from the newest sequence the hosts hold.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_from_a_fast_clock_does_not_block_the_next_one() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let v1 = fib_wasm();
    let (fast, next) = (
        with_custom_section(&v1, "from a fast clock"),
        with_custom_section(&v1, "from a right clock"),
    );
    let host = TestHost::start_with(
        "fast-clock",
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "host-a"),
    )
    .await;
    let hour_ahead = new_sequence() + 3_600_000;
    let answers = deploy(
        &host.queue,
        Deploy::new("fib", fast.clone())
            .signed_by(key)
            .after_sequence(hour_ahead),
    )
    .await;
    assert!(only_answer(answers).accepted);

    let module = keys.path().join("next.wasm");
    std::fs::write(&module, &next).unwrap();
    let deployed = warren(
        &host.queue,
        &[
            "deploy",
            "fib",
            module.to_str().unwrap(),
            "--key",
            secret.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(deployed.status.code(), Some(0), "{}", text(&deployed));
    assert_eq!(host.serving("fib"), Some(digest(&next)));
    host.stop().await;
}

/// Answers every status request on `queue`'s control exchange with
/// `status`, as a forged host would: anyone who can bind a queue there can.
async fn forge_status(
    queue: &str,
    status: warren_client::protocol::status::HostStatus,
) -> tokio::task::JoinHandle<()> {
    use futures_lite::StreamExt as _;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    let connection = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let own = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let exchange = warren_client::protocol::status::control_exchange(queue);
    channel
        .queue_bind(
            own.name().as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut asks = channel
        .basic_consume(
            own.name().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let body = serde_json::to_vec(&status).unwrap();
    tokio::spawn(async move {
        while let Some(Ok(ask)) = asks.next().await {
            let (Some(to), Some(id)) = (
                ask.properties.reply_to().clone(),
                ask.properties.correlation_id().clone(),
            ) else {
                continue;
            };
            let _ = channel
                .basic_publish(
                    "".into(),
                    to.as_str().into(),
                    Default::default(),
                    &body,
                    lapin::BasicProperties::default().with_correlation_id(id),
                )
                .await;
        }
        drop(connection);
    })
}

/// Status answers are not signed: a forged host reporting a version of the
/// attacker's choosing (signed by its own key, or carrying a trusted key
/// with a signature that does not verify), newer than anything real, does
/// not get a deployer to sign it. The rollback goes to the real version,
/// or nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_status_answer_cannot_choose_what_a_rollback_signs() {
    use warren_client::protocol::status::{HostStatus, KeptVersion, ProcedureStatus};
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let (_, attacker) = key_in(keys.path(), "attacker");
    let v1 = fib_wasm();
    let (v2, evil) = (
        with_custom_section(&v1, "v2"),
        with_custom_section(&v1, "chosen by the attacker"),
    );
    let host = TestHost::start_with(
        "rollback-forged",
        &[("fib", &v1)],
        trusting(public_key_path(&secret), "host-a"),
    )
    .await;
    deploy_all(&host.queue, &secret, &[&v2]).await;
    let v2_sequence = read_deploy_stream(&host.queue)
        .await
        .iter()
        .filter_map(|m| header_text(Some(&m.headers), "x-deploy-sequence"))
        .filter_map(|s| s.parse::<u64>().ok())
        .max()
        .unwrap();
    let sequence = v2_sequence + 10;
    let forged = |key: Option<String>, signature: Option<String>, sequence| KeptVersion {
        name: "fib".into(),
        digest: digest(&evil),
        manifest: None,
        sequence,
        key,
        signature,
        accepted_ms: 1,
        serving: false,
    };
    let fake = HostStatus {
        host: "host-forged".into(),
        version: "0".into(),
        uptime_seconds: 1,
        node: String::new(),
        queue: host.queue.clone(),
        durable: false,
        concurrency: 1,
        in_flight: 0,
        served: 0,
        failed: 0,
        forbidden: 0,
        rate_limited: 0,
        procedures: vec![ProcedureStatus {
            name: "fib".into(),
            digest: digest(&v2),
            grants: None,
        }],
        versions: vec![
            // Signed, but by a key the deployer does not trust.
            forged(
                Some(attacker.public_key().to_string()),
                Some(attacker.sign("fib", &digest(&evil), sequence - 1, None)),
                sequence - 1,
            ),
            // The trusted key, with a signature it never made.
            forged(
                Some(key.public_key().to_string()),
                Some(attacker.sign("fib", &digest(&evil), sequence - 2, None)),
                sequence - 2,
            ),
        ],
    };
    let forger = forge_status(&host.queue, fake).await;
    let evil_prefix = &digest(&evil)["sha256:".len()..][..12];
    let named = warren(
        &host.queue,
        &[
            "rollback",
            "fib",
            "--to",
            evil_prefix,
            "--key",
            secret.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(named.status.code(), Some(2), "{}", text(&named));
    let chosen = warren(
        &host.queue,
        &["rollback", "fib", "--key", secret.to_str().unwrap()],
    )
    .await;
    // Nothing older than the served v2 is kept with a trusted signature.
    assert_eq!(chosen.status.code(), Some(2), "{}", text(&chosen));
    forger.abort();
    let stream = read_deploy_stream(&host.queue).await;
    assert!(
        stream
            .iter()
            .all(|m| header_text(Some(&m.headers), "x-deploy-digest") != Some(digest(&evil))),
        "a deploy of the attacker's digest was signed and sent: {stream:?}"
    );
    assert_ne!(host.serving("fib"), Some(digest(&evil)));
    host.stop().await;
}

/// A host that starts after a rollback, before any host has published it
/// again with its module, keeps no copy of the version rolled back to: it
/// must not serve the version rolled back from (the newest full deploy in
/// the history) meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_started_before_a_rollbacks_copy_does_not_serve_what_was_rolled_back() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = key_in(keys.path(), "ops");
    let v1 = fib_wasm();
    let (v2, v3) = (
        with_custom_section(&v1, "v2"),
        with_custom_section(&v1, "v3, rolled back"),
    );
    // No copy for a minute: the stream holds the rollback without its module.
    let slow_keeper = |config: &mut warren_host::HostConfig| {
        trusting(public_key_path(&secret), "host-a")(config);
        config.deploy_republish_jitter = Duration::from_secs(60);
    };
    let a = TestHost::start_with("rollback-window", &[("fib", &v1)], slow_keeper).await;
    deploy_all(&a.queue, &secret, &[&v2, &v3]).await;
    let rollback = Deploy::kept_version("fib", digest(&v2), None)
        .signed_by(SecretKey::read(&secret).unwrap())
        .after_sequence(new_sequence() + 1_000);
    assert!(only_answer(deploy(&a.queue, rollback).await).accepted);
    assert_eq!(a.serving("fib"), Some(digest(&v2)));

    let late = TestHost::join(
        &a.queue,
        &[],
        trusting(public_key_path(&secret), "host-late"),
    )
    .await;
    assert_eq!(
        late.serving("fib"),
        None,
        "a host that keeps neither version serves none until the copy comes"
    );
    late.stop().await;
    a.stop().await;
}
