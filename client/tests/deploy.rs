//! Remote deploys across a fleet: signed modules over the deploy stream,
//! accepted only from trusted keys, served by every host of the queue,
//! including hosts that start (or restart) after the deploy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_client::protocol::deploy::{
    DeployAnswer, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_KEY, HEADER_DEPLOY_NAME,
    HEADER_DEPLOY_SEQUENCE, HEADER_DEPLOY_SIGNATURE, deploy_stream, new_sequence, public_key_path,
};
use warren_client::protocol::set_header_text;
use warren_client::{Deploy, RpcClient, SecretKey};

/// A fresh key pair in `dir`; returns (secret key path, the key).
fn key_in(dir: &Path, name: &str) -> (PathBuf, SecretKey) {
    let path = dir.join(name);
    let key = SecretKey::generate().unwrap();
    key.write_pair(&path).unwrap();
    (path, key)
}

fn trusting(
    public_key_file: PathBuf,
    host_id: &'static str,
) -> impl FnOnce(&mut warren_host::HostConfig) {
    move |config| {
        config.trusted_keys = Some(public_key_file);
        config.host_id = Some(host_id.into());
    }
}

async fn deploy(queue: &str, deploy: Deploy) -> Vec<DeployAnswer> {
    let client = RpcClient::connect(&amqp_url(), queue).await.unwrap();
    let report = client.deploy(deploy.timeout(CALL_TIMEOUT)).await.unwrap();
    client.close().await;
    report.answers
}

/// The headers of a deploy of `module` as `name` with `sequence`, carrying
/// `signer`'s key and `signature`: what `warren deploy` sends, or a forgery.
fn deploy_headers(
    name: &str,
    module: &[u8],
    sequence: u64,
    signer: &SecretKey,
    signature: &str,
) -> FieldTable {
    let mut headers = FieldTable::default();
    set_header_text(&mut headers, HEADER_DEPLOY_NAME, name);
    set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &digest(module));
    set_header_text(&mut headers, HEADER_DEPLOY_SEQUENCE, &sequence.to_string());
    set_header_text(
        &mut headers,
        HEADER_DEPLOY_KEY,
        &signer.public_key().to_string(),
    );
    set_header_text(&mut headers, HEADER_DEPLOY_SIGNATURE, signature);
    headers
}

/// Publishes a deploy message by hand (what a deployer that skips the
/// client's checks could send) and returns the hosts' answers to it.
async fn answers_to_raw_deploy(
    queue: &str,
    headers: FieldTable,
    module: &[u8],
) -> Vec<DeployAnswer> {
    use futures_lite::StreamExt as _;
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let replies = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            replies.name().clone(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            deploy_stream(queue).as_str().into(),
            BasicPublishOptions::default(),
            module,
            BasicProperties::default()
                .with_headers(headers)
                .with_reply_to(replies.name().clone()),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(CALL_TIMEOUT, consumer.next())
        .await
        .expect("a host answered")
        .unwrap()
        .unwrap();
    close_connection(&connection).await;
    vec![serde_json::from_slice(&delivery.data).unwrap()]
}

fn only_answer(answers: Vec<DeployAnswer>) -> DeployAnswer {
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers.into_iter().next().unwrap()
}

#[test]
fn keygen_writes_a_private_secret_and_a_one_line_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deployer");
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(public_key_path(&path)).unwrap();
    assert_eq!(public.lines().count(), 1);
    assert!(public.starts_with("ed25519:"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        public,
        "stdout shows the public key"
    );
    SecretKey::read(&path).expect("the secret key reads back");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing key is never overwritten"
    );

    // Nor an existing FILE.pub: nothing is written at all.
    let other = dir.path().join("other");
    std::fs::write(public_key_path(&other), "keep me\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("keygen")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("other.pub already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!other.exists());
    assert_eq!(
        std::fs::read_to_string(public_key_path(&other)).unwrap(),
        "keep me\n"
    );
}

/// Without --expect-hosts, a deploy waits for every host consuming the
/// queue and prints each answer (it used to print one and exit 0).
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_on_one_queue_receive_one_signed_deploy_and_both_serve_it() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = key_in(keys.path(), "ops");
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "deployed");
    let a = TestHost::start_with(
        "deploy-two",
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
    let module = keys.path().join("fib-v2.wasm");
    std::fs::write(&module, &v2).unwrap();

    let queue = a.queue.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .env("AMQP_URL", amqp_url())
            .args(["--queue", &queue, "--timeout", "20s", "deploy", "fib"])
            .arg(&module)
            .arg("--key")
            .arg(&secret)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per host: {stdout}");
    for host in ["host-a", "host-b"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("no line for {host}: {stdout}"));
        assert!(
            line.contains("accepted") && line.contains(&digest(&v2)),
            "{line}"
        );
    }
    for host in [&a, &b] {
        assert_eq!(host.serving("fib"), Some(digest(&v2)));
        assert_eq!(
            std::fs::read(host.module_path("fib")).unwrap(),
            v2,
            "saved into the modules folder"
        );
    }
    let client = a.client().await;
    for _ in 0..6 {
        let reply = client.call(call("15")).await.unwrap();
        assert_eq!(
            (reply.body.as_slice(), reply.digest),
            (&b"610"[..], Some(digest(&v2)))
        );
    }
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_deploys_change_nothing() {
    let keys = tempfile::tempdir().unwrap();
    let (trusted_path, trusted) = key_in(keys.path(), "trusted");
    let (_, stranger) = key_in(keys.path(), "stranger");
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "never served");
    let host = TestHost::start_with("deploy-refused", &[("fib", &v1)], |config| {
        config.trusted_keys = Some(public_key_path(&trusted_path));
        config.max_module_bytes = 150_000;
    })
    .await;

    let unsigned = only_answer(deploy(&host.queue, Deploy::new("fib", v2.clone())).await);
    assert!(
        !unsigned.accepted && unsigned.reason.contains("unsigned"),
        "{unsigned:?}"
    );

    let unknown = only_answer(
        deploy(
            &host.queue,
            Deploy::new("fib", v2.clone()).signed_by(stranger),
        )
        .await,
    );
    assert!(
        !unknown.accepted && unknown.reason.contains("does not trust"),
        "{unknown:?}"
    );

    // The client refuses to send what is not a component; a deployer that
    // skips its check meets the host's.
    let not_wasm = b"not a component".to_vec();
    let sequence = new_sequence();
    let signature = trusted.sign("fib", &digest(&not_wasm), sequence);
    let headers = deploy_headers("fib", &not_wasm, sequence, &trusted, &signature);
    let not_wasm = only_answer(answers_to_raw_deploy(&host.queue, headers, &not_wasm).await);
    assert!(
        !not_wasm.accepted && not_wasm.reason.contains("not a WebAssembly file"),
        "{not_wasm:?}"
    );

    let big = with_custom_section(&v1, &"x".repeat(100_000));
    let too_big = only_answer(
        deploy(
            &host.queue,
            Deploy::new("fib", big).signed_by(SecretKey::read(&trusted_path).unwrap()),
        )
        .await,
    );
    assert!(
        !too_big.accepted && too_big.reason.contains("--max-module-bytes"),
        "{too_big:?}"
    );

    // A forged deploy: the trusted key's name on a stranger's signature.
    let forger = SecretKey::generate().unwrap();
    let sequence = new_sequence();
    let forged = forger.sign("fib", &digest(&v2), sequence);
    let headers = deploy_headers("fib", &v2, sequence, &trusted, &forged);
    publish_raw_deploy(&host.queue, headers, &v2).await;
    // Something valid after it, to know the forged one has been processed.
    let twin = with_custom_section(&v1, "twin");
    let twin_answer = only_answer(
        deploy(
            &host.queue,
            Deploy::new("twin", twin.clone()).signed_by(SecretKey::read(&trusted_path).unwrap()),
        )
        .await,
    );
    assert!(twin_answer.accepted, "{twin_answer:?}");

    assert_eq!(
        host.serving("fib"),
        Some(digest(&v1)),
        "nothing refused was served"
    );
    assert_eq!(
        std::fs::read(host.module_path("fib")).unwrap(),
        v1,
        "nothing refused was saved"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_trusted_keys_a_host_refuses_deploys_unless_unsigned_ones_are_allowed() {
    let v1 = fib_wasm();
    let v2 = with_custom_section(&v1, "unsigned");
    let closed = TestHost::start("deploy-closed", &[("fib", &v1)]).await;
    let signed = Deploy::new("fib", v2.clone()).signed_by(SecretKey::generate().unwrap());
    let answer = only_answer(deploy(&closed.queue, signed).await);
    assert!(
        !answer.accepted && answer.reason.contains("--trusted-keys"),
        "{answer:?}"
    );
    assert_eq!(closed.serving("fib"), Some(digest(&v1)));
    closed.stop().await;

    let open = TestHost::start_with("deploy-open", &[("fib", &v1)], |config| {
        config.allow_unsigned_deploys = true;
    })
    .await;
    let answer = only_answer(deploy(&open.queue, Deploy::new("fib", v2.clone())).await);
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(open.serving("fib"), Some(digest(&v2)));
    open.stop().await;
}

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
    let old_signature = key.sign("fib", &digest(&v1), old_sequence);
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

/// A deploy is all or nothing: a module that cannot be saved into the
/// modules folder is refused and not served (it used to be swapped in, then
/// refused when saving failed).
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_that_cannot_be_saved_is_neither_served_nor_stored() {
    let v1 = fib_wasm();
    let host = TestHost::start_with("deploy-unsaved", &[("fib", &v1)], |config| {
        config.allow_unsigned_deploys = true;
    })
    .await;
    // A directory where the file would go: the rename into place fails.
    std::fs::create_dir(host.module_path("blocked")).unwrap();
    let refused = only_answer(deploy(&host.queue, Deploy::new("blocked", v1.clone())).await);
    assert!(
        !refused.accepted && refused.reason.contains("saving blocked.wasm"),
        "{refused:?}"
    );
    assert_eq!(host.serving("blocked"), None, "refused, so not served");
    let client = host.client().await;
    let call = client.call(call("12").procedure("blocked")).await;
    assert_eq!(
        error_kind(call),
        warren_client::protocol::ErrorKind::NoProcedure
    );
    let leftovers: Vec<_> = std::fs::read_dir(host.modules.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("deploy"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    host.stop().await;
}

/// Names follow one rule, checked by the client before sending and by the
/// host on receipt: no `fib.wasm` saved as `fib.wasm.wasm`, no `-dash`, no
/// name too long to be a file.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_names_are_checked_by_the_client_and_the_host() {
    let v1 = fib_wasm();
    let host = TestHost::start_with("deploy-names", &[("fib", &v1)], |config| {
        config.allow_unsigned_deploys = true;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("m.wasm");
    std::fs::write(&module, &v1).unwrap();
    let module = module.to_string_lossy().into_owned();
    let long = "a".repeat(300);
    for name in ["fib.wasm", "-dash", "Fib", long.as_str()] {
        let out = run_warren(&["--queue", &host.queue, "deploy", "--", name, &module]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("lowercase letters"), "{name}: {stderr}");
    }

    // A deployer that skips the client's check meets the host's.
    let client = RpcClient::connect(&amqp_url(), &host.queue).await.unwrap();
    let refused = client.deploy(Deploy::new("fib.wasm", v1.clone())).await;
    assert!(
        matches!(&refused, Err(warren_client::CallError::Invalid(why)) if why.contains("lowercase")),
        "{refused:?}"
    );
    client.close().await;
    let connection = Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    set_header_text(&mut headers, HEADER_DEPLOY_NAME, &long);
    set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &digest(&v1));
    channel
        .basic_publish(
            "".into(),
            deploy_stream(&host.queue).as_str().into(),
            BasicPublishOptions::default(),
            &v1,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap();
    close_connection(&connection).await;
    // Something valid after it, to know the bad one has been processed.
    let twin = with_custom_section(&v1, "twin");
    assert!(only_answer(deploy(&host.queue, Deploy::new("twin", twin)).await).accepted);
    assert_eq!(
        host.registry_names(),
        vec!["fib".to_owned(), "twin".to_owned()]
    );
    host.stop().await;
}

/// A deploy to a queue no host consumes is refused before anything is
/// stored (a mistyped --queue used to leave the module in a stream that any
/// host later started on that name would replay), unless --allow-no-hosts.
#[tokio::test(flavor = "multi_thread")]
async fn deploying_to_a_queue_without_hosts_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("fib.wasm");
    std::fs::write(&module, fib_wasm()).unwrap();
    let module = module.to_string_lossy().into_owned();
    let typo = unique_queue("deploy-typo");

    let out = run_warren(&["--queue", &typo, "deploy", "fib", &module]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        queue_state(&deploy_stream(&typo)).await.is_none(),
        "a refused deploy must not create the stream"
    );

    let out = run_warren(&[
        "--queue",
        &typo,
        "deploy",
        "fib",
        &module,
        "--allow-no-hosts",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("hosts that start on it will apply"),
        "{stderr}"
    );
    assert!(queue_state(&deploy_stream(&typo)).await.is_some());
    delete_queues(&typo).await;
}

/// A host takes requests only once it has applied the deploy history: a
/// request waiting in the queue for a deployed procedure is answered by it,
/// even when the new host's folder lacks the module (it used to get
/// no-procedure, because the host said "ready" before replaying).
#[tokio::test(flavor = "multi_thread")]
async fn a_starting_host_applies_the_deploy_history_before_taking_requests() {
    let v1 = fib_wasm();
    let fib2 = with_custom_section(&v1, "fib2");
    let unsigned = |config: &mut warren_host::HostConfig| config.allow_unsigned_deploys = true;
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
                let signature = stranger.sign(name, &module_digest, sequence);
                let headers = deploy_headers(name, &module, sequence, &stranger, &signature);
                (module, headers)
            }
            7 => {
                let signature = key.sign(name, &module_digest, sequence + 1);
                let headers = deploy_headers(name, &module, sequence, &key, &signature);
                (module, headers)
            }
            9 if i < 180 => {
                // Signed, but not a component, superseded by a later deploy.
                let garbage = format!("not a module {i}").into_bytes();
                let signature = key.sign(name, &digest(&garbage), sequence);
                let headers = deploy_headers(name, &garbage, sequence, &key, &signature);
                (garbage, headers)
            }
            _ => {
                let signature = key.sign(name, &module_digest, sequence);
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
        let signature = key.sign(name, &digest(module), sequence);
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

/// `warren deploy` checks the file before it sends anything: what no host
/// could accept (an empty file, garbage, a core module, a component without
/// the handler, a file over the limit) is refused with exit 2 and never goes
/// into the deploy stream, where every host would read it again on every
/// start.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_refuses_what_no_host_could_accept_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let no_handler = b"\0asm\x0d\0\x01\0".to_vec();
    let cases: [(&str, Vec<u8>, &[&str], &str); 5] = [
        ("empty", Vec::new(), &[], "empty"),
        (
            "garbage",
            b"MZ not wasm at all".to_vec(),
            &[],
            "not a WebAssembly file",
        ),
        ("core", core_module, &[], "core WebAssembly module"),
        ("no-handler", no_handler, &[], "warren:procedure/handler"),
        (
            "big",
            fib_wasm(),
            &["--max-module-bytes", "1KiB"],
            "--max-module-bytes",
        ),
    ];
    let queue = unique_queue("deploy-checked");
    for (name, bytes, extra, reason) in cases {
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, &bytes).unwrap();
        let path = path.to_string_lossy().into_owned();
        let mut args = vec![
            "--queue",
            &queue,
            "deploy",
            "fib",
            &path,
            "--allow-no-hosts",
        ];
        args.extend_from_slice(extra);
        let out = run_warren(&args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(reason), "{name}: {stderr}");
    }
    assert!(
        queue_state(&deploy_stream(&queue)).await.is_none(),
        "nothing was published: the deploy stream was never even declared"
    );
}

/// `--expect-hosts 0` does not wait for answers, and says so, instead of
/// claiming that no host consumes the queue while one does.
#[tokio::test(flavor = "multi_thread")]
async fn deploy_expecting_no_answers_says_so_while_a_host_consumes() {
    let v1 = fib_wasm();
    let host = TestHost::start_with("deploy-expect-0", &[("fib", &v1)], |config| {
        config.allow_unsigned_deploys = true;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("fib.wasm");
    std::fs::write(&module, with_custom_section(&v1, "expect 0")).unwrap();
    let module = module.to_string_lossy().into_owned();
    let out = run_warren(&[
        "--queue",
        &host.queue,
        "deploy",
        "fib",
        &module,
        "--expect-hosts",
        "0",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("not waiting for the 1 consuming hosts"),
        "{stderr}"
    );
    assert!(!stderr.contains("no host consumes"), "{stderr}");
    host.stop().await;
}
