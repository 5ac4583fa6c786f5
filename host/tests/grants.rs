//! Manifests: what a procedure is granted (configuration, secrets, lower
//! limits) from `NAME.toml` in the modules folder or from a signed deploy,
//! refused at load when the component imports what is not granted, and
//! secrets that never show anywhere but in the guest.

use std::time::Duration;

use warren_client::protocol::deploy::{DeployHeaders, public_key_path};
use warren_client::protocol::{ErrorKind, manifest::EffectiveGrants};
use warren_client::{Deploy, SecretKey};
use warren_testing::*;

const SECRET_VALUE: &str = "tr0ub4dor-and-3-horses";

fn grants_of(host: &TestHost, name: &str) -> Option<EffectiveGrants> {
    let running = host.host.as_ref()?;
    running
        .served()
        .into_iter()
        .find(|served| served.name == name)
        .and_then(|served| served.grants)
}

async fn answer(host: &TestHost, procedure: &str, body: &str) -> Result<String, ErrorKind> {
    let client = host.client().await;
    let outcome = client.call(call(body).procedure(procedure)).await;
    client.close().await;
    match outcome {
        Ok(reply) => Ok(String::from_utf8_lossy(&reply.body).into_owned()),
        Err(error) => Err(error_kind(Err(error))),
    }
}

async fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let give_up = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < give_up, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A component that imports wasi:config/store is refused without a
/// manifest granting configuration; with one it reads its values, and a
/// changed manifest is a new version, swapped in like a new module.
#[tokio::test(flavor = "multi_thread")]
async fn configuration_comes_from_the_manifest_beside_the_module() {
    let configured = configured_wasm();
    let host = TestHost::start("grants-config", &[("conf", &configured)]).await;
    assert!(
        !host.served_names().contains(&"conf".to_owned()),
        "a component importing wasi:config/store without a manifest must not load"
    );

    host.install_manifest(
        "conf",
        Some("[config]\ngreeting = \"hello\"\ncolour = \"teal\"\n"),
    );
    host.install("conf", &with_custom_section(&configured, "touched"));
    eventually(
        Duration::from_secs(10),
        "conf loads with its manifest",
        || host.served_names().contains(&"conf".to_owned()),
    )
    .await;
    assert_eq!(
        answer(&host, "conf", "get greeting").await,
        Ok("hello".into())
    );
    assert_eq!(
        answer(&host, "conf", "get missing").await,
        Ok("(none)".into())
    );
    assert_eq!(
        answer(&host, "conf", "keys").await,
        Ok("colour,greeting".into())
    );
    let grants = grants_of(&host, "conf").unwrap();
    assert_eq!(grants.config, ["colour", "greeting"]);
    assert!(grants.manifest.is_some());

    // Only the manifest changes: the procedure is loaded again with it.
    host.install_manifest("conf", Some("[config]\ngreeting = \"bonjour\"\n"));
    let client = host.client().await;
    let swapped = call_until(
        &client,
        call("get greeting").procedure("conf"),
        Duration::from_secs(10),
        |outcome| matches!(outcome, Ok(reply) if reply.body == b"bonjour"),
    )
    .await;
    client.close().await;
    assert!(
        swapped.is_ok_and(|reply| reply.body == b"bonjour"),
        "the new manifest's value is served"
    );

    // A broken manifest keeps the last good version serving.
    host.install_manifest("conf", Some("[config]\ngreeting = \"bonjour\"\n[limit]\n"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        answer(&host, "conf", "get greeting").await,
        Ok("bonjour".into())
    );
    host.stop().await;
}

/// Limits in a manifest lower the host's for that procedure only.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_lowers_the_limits_of_its_procedure_only() {
    let hostile = hostile_wasm();
    let host = TestHost::start("grants-limits", &[("tight", &hostile), ("loose", &hostile)]).await;
    host.install_manifest(
        "tight",
        Some(
            "[limits]\ntimeout = \"300ms\"\nmemory = \"8MiB\"\nreply = \"1KiB\"\nconcurrency = 1\n",
        ),
    );
    host.install("tight", &with_custom_section(&hostile, "tight"));
    eventually(
        Duration::from_secs(10),
        "tight loads with its manifest",
        || grants_of(&host, "tight").is_some_and(|g| g.manifest.is_some()),
    )
    .await;
    let grants = grants_of(&host, "tight").unwrap();
    assert_eq!(
        (
            grants.timeout_ms,
            grants.memory_bytes,
            grants.reply_bytes,
            grants.concurrency
        ),
        (300, 8 << 20, 1024, 1)
    );

    let client = host.client().await;
    let slept = client.call(call("sleep").procedure("tight")).await;
    let message = format!("{slept:?}");
    assert_eq!(error_kind(slept), ErrorKind::Timeout);
    assert!(message.contains("300ms budget"), "{message}");
    let bomb = client.call(call("memory-bomb").procedure("tight")).await;
    let message = format!("{bomb:?}");
    assert_eq!(error_kind(bomb), ErrorKind::MemoryLimit);
    assert!(message.contains("8 MiB"), "{message}");
    let big = "x".repeat(2000);
    assert_eq!(
        error_kind(client.call(call(big.as_str()).procedure("tight")).await),
        ErrorKind::ReplyTooLarge
    );
    // The same module without a manifest keeps the host's limits.
    let echoed = client
        .call(call(big.as_str()).procedure("loose"))
        .await
        .unwrap();
    assert_eq!(echoed.body.len(), 2000);
    client.close().await;
    host.stop().await;
}

/// Secrets: named in the manifest, read from --secrets-dir, readable by the
/// guest, and never in a log line, the status answer or an error reply; a
/// secret the host does not have refuses the procedure at load.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_guest_and_nothing_else() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("api-key"), format!("{SECRET_VALUE}\n")).unwrap();
    let configured = configured_wasm();
    let queue = unique_queue("grants-secrets");
    let secrets_dir = secrets.path().to_str().unwrap().to_owned();
    let host = HostProcess::start(
        &queue,
        &[
            ("conf", &configured),
            (
                "conf.toml",
                b"[config]\nregion = \"eu\"\n[secrets]\nnames = [\"api-key\"]\n",
            ),
            ("lacking", &configured),
            ("lacking.toml", b"[secrets]\nnames = [\"db-password\"]\n"),
        ],
        &["--secrets-dir", &secrets_dir, "--default-procedure", "conf"],
        None,
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(60))
        .await;
    let refused = host
        .wait_for_log("db-password", Duration::from_secs(10))
        .await;
    assert!(refused.contains("does not have"), "{refused}");

    let client = warren_client::RpcClient::connect(&amqp_url(), &queue)
        .await
        .unwrap();
    let read = client.call(call("get api-key")).await.unwrap();
    assert_eq!(read.body, SECRET_VALUE.as_bytes());
    let failed = client.call(call("what")).await;
    let failed = format!("{failed:?}");
    client.close().await;
    let status = run_warren(&["--queue", &queue, "status", "--json"]).await;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("\"api-key\""),
        "status names the secret: {status}"
    );

    let mut host = host;
    host.signal("TERM");
    host.wait_exit(Duration::from_secs(20)).await;
    for (what, text) in [
        ("the log", host.log()),
        ("status", status),
        ("an error reply", failed),
    ] {
        assert!(
            !text.contains(SECRET_VALUE),
            "the secret's value is in {what}: {text}"
        );
    }
    delete_queues(&queue).await;
}

/// Issue 37, finding 8: a trap reply quotes the guest's last stderr line,
/// and a procedure that fails on its secret (CPython's `ValueError:
/// invalid literal for int() with base 10: 'VALUE'`, a Rust parser's
/// panic) put the value there. Every granted secret value is replaced by
/// `[secret]` in error replies and in what the host logs, guest output
/// included (logged at debug level, which this host logs).
#[tokio::test(flavor = "multi_thread")]
async fn a_procedure_failing_on_its_secret_does_not_show_it() {
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("api-key"), format!("{SECRET_VALUE}\n")).unwrap();
    let manifest = b"[secrets]\nnames = [\"api-key\"]\n";
    let configured = configured_wasm();
    let python = secret_py_wasm();
    let mut modules: Vec<(&str, &[u8])> = vec![("conf", &configured), ("conf.toml", manifest)];
    if let Some(python) = &python {
        modules.extend([("py", python.as_slice()), ("py.toml", manifest)]);
    }
    let queue = unique_queue("grants-secret-trap");
    let secrets_dir = secrets.path().to_str().unwrap();
    let host = HostProcess::start_logging(
        &queue,
        &modules,
        &["--secrets-dir", secrets_dir],
        None,
        "info,warren_host=debug",
    );
    host.wait_for_log("warren-host ready", Duration::from_secs(180))
        .await;

    let client = warren_client::RpcClient::connect(&amqp_url(), &queue)
        .await
        .unwrap();
    let mut replies = Vec::new();
    let rust = client.call(call("panic api-key").procedure("conf")).await;
    let message = format!("{rust:?}");
    assert_eq!(error_kind(rust), ErrorKind::Trap);
    assert!(
        message.contains(r#"invalid digit in \"[secret]\""#)
            || message.contains(r#"invalid digit in "[secret]""#),
        "{message}"
    );
    replies.push(message);
    if python.is_some() {
        let py = client.call(call("api-key").procedure("py")).await;
        let message = format!("{py:?}");
        assert_eq!(error_kind(py), ErrorKind::Trap);
        assert!(
            message.contains("ValueError: invalid literal for int() with base 10: '[secret]'"),
            "{message}"
        );
        replies.push(message);
    }
    client.close().await;
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = host.log();
        if log.matches("answered with error").count() >= replies.len() {
            break log;
        }
        assert!(std::time::Instant::now() < give_up, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        log.contains("guest output"),
        "debug lines are logged: {log}"
    );
    assert!(log.contains("[secret]"), "{log}");
    drop(host);
    for text in replies.iter().chain([&log]) {
        assert!(
            !text.contains(SECRET_VALUE),
            "the secret's value shows: {text}"
        );
        assert!(
            !text.contains("tr0ub4dor"),
            "part of the secret shows: {text}"
        );
    }
    delete_queues(&queue).await;
}

/// The Python procedure of [`a_procedure_failing_on_its_secret_does_not_show_it`]
/// (test-guests/secret-py, against test-guests/configured/wit), built into
/// target/guests/secret-py.wasm with componentize-py when missing or older
/// than its source (about 30 s); `None`, after saying SKIPPED, without
/// python3.
fn secret_py_wasm() -> Option<Vec<u8>> {
    let root = workspace();
    let source = root.join("test-guests/secret-py/app.py");
    let out = root.join("target/guests/secret-py.wasm");
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&out).is_some_and(|built| Some(built) >= modified(&source)) {
        return Some(std::fs::read(&out).unwrap());
    }
    if !on_path("python3") {
        eprintln!(
            "SKIPPED: python3 is not installed, so the Python secret test guest could not be built"
        );
        return None;
    }
    let venv = std::process::Command::new(root.join("scripts/py-env"))
        .args(["target/py-guest", "guest-fib-py/requirements.txt"])
        .output()
        .expect("running scripts/py-env");
    assert!(
        venv.status.success(),
        "scripts/py-env: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let python = String::from_utf8(venv.stdout).unwrap();
    let componentize = std::path::Path::new(python.trim()).with_file_name("componentize-py");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let tmp = out.with_extension(format!("wasm.{}.tmp", std::process::id()));
    let built = std::process::Command::new(componentize)
        .current_dir(source.parent().unwrap())
        .arg("-d")
        .arg(root.join("test-guests/configured/wit"))
        .args(["-w", "configured", "componentize", "app", "-o"])
        .arg(&tmp)
        .output()
        .expect("running componentize-py");
    assert!(
        built.status.success(),
        "componentize-py: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    Some(std::fs::read(&out).unwrap())
}

/// A manifest in a signed deploy: served by every host with its grants and
/// saved beside the module; a manifest changed or stripped after signing is
/// refused by every host.
#[tokio::test(flavor = "multi_thread")]
async fn the_deploy_signature_covers_the_manifest() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let a = TestHost::start_with(
        "grants-deploy",
        &[],
        trusting(public_key_path(&secret), "host-a"),
    )
    .await;
    let b = TestHost::join(&a.queue, &[], trusting(public_key_path(&secret), "host-b")).await;
    let configured = configured_wasm();
    let manifest = "[config]\ngreeting = \"signed hello\"\n[limits]\ntimeout = \"2s\"\n";

    let answers = deploy(
        &a.queue,
        Deploy::new("conf", configured.clone())
            .manifest(manifest)
            .signed_by(SecretKey::read(&secret).unwrap())
            .expect_hosts(2),
    )
    .await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers.iter().all(|answer| answer.accepted), "{answers:?}");
    for host in [&a, &b] {
        assert_eq!(
            answer(host, "conf", "get greeting").await,
            Ok("signed hello".into())
        );
        assert_eq!(grants_of(host, "conf").unwrap().timeout_ms, 2000);
        let saved = std::fs::read_to_string(host.modules.path().join("conf.toml")).unwrap();
        assert_eq!(saved, manifest);
    }

    // Signed with one manifest, sent with another: every host refuses it.
    let mut headers = DeployHeaders::new(
        "conf",
        &configured,
        Some("[config]\ngreeting = \"x\"\n"),
        Some(&key),
    );
    headers.manifest = Some("[config]\ngreeting = \"x\"\n[limits]\ntimeout = \"10s\"\n".into());
    let refusals = raw_deploy_answers(&a.queue, &headers, &configured, 2).await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    for refusal in &refusals {
        assert!(
            !refusal.accepted && refusal.reason.contains("was the manifest changed"),
            "{refusal:?}"
        );
    }
    // Signed with a manifest, sent without: refused too.
    let mut stripped = DeployHeaders::new("conf", &configured, Some(manifest), Some(&key));
    stripped.manifest = None;
    let refusals = raw_deploy_answers(&a.queue, &stripped, &configured, 2).await;
    assert!(
        refusals
            .iter()
            .all(|r| !r.accepted && r.reason.contains("bad signature")),
        "{refusals:?}"
    );
    for host in [&a, &b] {
        assert_eq!(
            answer(host, "conf", "get greeting").await,
            Ok("signed hello".into())
        );
    }

    // A new deploy without a manifest takes the grants away (and the file).
    let hostile = hostile_wasm();
    let answers = deploy(
        &a.queue,
        Deploy::new("conf", hostile).signed_by(key).expect_hosts(2),
    )
    .await;
    assert!(answers.iter().all(|answer| answer.accepted), "{answers:?}");
    for host in [&a, &b] {
        assert!(!host.modules.path().join("conf.toml").exists());
        assert!(grants_of(host, "conf").unwrap().manifest.is_none());
    }
    b.stop().await;
    a.stop().await;
}

/// Publishes a deploy with these headers and collects `hosts` answers.
async fn raw_deploy_answers(
    queue: &str,
    headers: &DeployHeaders,
    module: &[u8],
    hosts: usize,
) -> Vec<warren_client::protocol::deploy::DeployAnswer> {
    let mut table = lapin::types::FieldTable::default();
    headers.write(&mut table);
    answers_to_raw_messages_from(queue, vec![(table, module.to_vec())], hosts).await
}
