//! Remote deploys across a fleet: signed modules over the deploy stream,
//! accepted only from trusted keys, served by every host of the queue;
//! what `warren deploy` refuses before sending; the versions hosts keep and
//! `warren rollback` (`versions.rs`). The history a host replays is in
//! `deploy_history.rs`.

mod versions;

use std::process::Command;

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use warren_client::protocol::deploy::{
    HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_NAME, deploy_stream, new_sequence, public_key_path,
};
use warren_client::protocol::set_header_text;
use warren_client::{Deploy, RpcClient, SecretKey};
use warren_testing::*;

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
        Command::new(binary("warren"))
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
        config.deploys.trusted_keys = Some(public_key_path(&trusted_path));
        config.deploys.max_module_bytes = 150_000;
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
    let signature = trusted.sign("fib", &digest(&not_wasm), sequence, None);
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
    let forged = forger.sign("fib", &digest(&v2), sequence, None);
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
        config.deploys.allow_unsigned_deploys = true;
    })
    .await;
    let answer = only_answer(deploy(&open.queue, Deploy::new("fib", v2.clone())).await);
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(open.serving("fib"), Some(digest(&v2)));
    open.stop().await;
}

/// A deploy is all or nothing: a module that cannot be saved into the
/// modules folder is refused and not served (it used to be swapped in, then
/// refused when saving failed).
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_that_cannot_be_saved_is_neither_served_nor_stored() {
    let v1 = fib_wasm();
    let host = TestHost::start_with("deploy-unsaved", &[("fib", &v1)], |config| {
        config.deploys.allow_unsigned_deploys = true;
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
        config.deploys.allow_unsigned_deploys = true;
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
            BasicProperties::default()
                .with_headers(headers)
                .with_user_id(amqp_user_id()),
        )
        .await
        .unwrap();
    close_connection(&connection).await;
    // Something valid after it, to know the bad one has been processed.
    let twin = with_custom_section(&v1, "twin");
    assert!(only_answer(deploy(&host.queue, Deploy::new("twin", twin)).await).accepted);
    assert_eq!(
        host.served_names(),
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
        config.deploys.allow_unsigned_deploys = true;
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
