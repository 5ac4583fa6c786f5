//! `warren new`: each language's project builds outside this repository
//! with the command its README gives, and the component it leaves is served
//! as the procedure it is named after. With `--grants`, it is served with
//! the manifest it comes with (its allowed address pointed at a local HTTP
//! server), reads its configuration and fetches what the manifest allows
//! and nothing else.

use std::path::Path;
use std::process::Command;

use warren_client::CallError;
use warren_client::protocol::ErrorKind;
use warren_testing::*;

/// Runs `warren new NAME --lang LANG DIR`, then `build` in DIR, then serves
/// the component (`component`, relative to DIR) and calls it.
async fn create_build_and_serve(lang: &str, toolchain: &str, build: &[&str], component: &str) {
    if !on_path(toolchain) {
        eprintln!("SKIPPED: warren new --lang {lang}: {toolchain} is not installed");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("project");
    let name = format!("echo-{lang}");
    let output = run_warren(&["new", &name, "--lang", lang, dir.to_str().unwrap()]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "warren new: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(build.join(" ").as_str()), "{stdout}");

    build_in(&dir, build).await;
    if lang == "rust" {
        // It built with the versions Warren's own guests build with, and
        // with the small stack the README recommends.
        assert!(dir.join("build.rs").is_file(), "no build.rs");
        let locked = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap();
            let versions: Vec<String> = text
                .split("[[package]]")
                .filter(|entry| entry.contains("source = "))
                .map(|entry| entry.lines().take(3).collect::<Vec<_>>().join(" "))
                .collect();
            versions
        };
        let workspace_lock = locked(&workspace().join("Cargo.lock"));
        for package in locked(&dir.join("Cargo.lock")) {
            assert!(
                workspace_lock.contains(&package),
                "the project locked {package}, which Warren's own guests do not use"
            );
        }
    }
    let bytes = std::fs::read(dir.join(component))
        .unwrap_or_else(|e| panic!("the build left no {component}: {e}"));

    let host = TestHost::start(&format!("new-{lang}"), &[(&name, &bytes)]).await;
    let client = host.client().await;
    let slow = std::time::Duration::from_secs(120);
    let reply = client
        .call(call("hello").procedure(&name).timeout(slow))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(reply.body, b"hello");
    match client.call(call("").procedure(&name).timeout(slow)).await {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::ProcedureError, "{error}");
            assert!(error.message.contains("empty request"), "{error}");
        }
        other => panic!("{name} with an empty body: {other:?}"),
    }
    host.stop().await;
}

/// `warren new NAME --lang LANG --grants DIR`, built and served with its
/// manifest.
async fn create_build_and_serve_with_grants(
    lang: &str,
    toolchain: &str,
    build: &[&str],
    component: &str,
) {
    if !on_path(toolchain) {
        eprintln!("SKIPPED: warren new --lang {lang} --grants: {toolchain} is not installed");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("project");
    let name = format!("greeter-{lang}");
    let output = run_warren(&[
        "new",
        &name,
        "--lang",
        lang,
        "--grants",
        dir.to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "warren new --grants: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("{name}.toml")), "{stdout}");
    build_in(&dir, build).await;
    let bytes = std::fs::read(dir.join(component))
        .unwrap_or_else(|e| panic!("the build left no {component}: {e}"));

    let api = serve_http(|_, _| (200, vec![], b"hello from the API".to_vec()), 0).await;
    let manifest = std::fs::read_to_string(dir.join(format!("{name}.toml")))
        .unwrap()
        .replace("http://127.0.0.1:8080", &format!("http://127.0.0.1:{api}"));
    let host = TestHost::start(&format!("new-grants-{lang}"), &[]).await;
    host.install_manifest(&name, Some(&manifest));
    host.install(&name, &bytes);
    let client = host.client().await;
    let slow = std::time::Duration::from_secs(120);
    let greeted = call_until(
        &client,
        call("world").procedure(&name).timeout(slow),
        slow,
        |outcome| outcome.is_ok(),
    )
    .await;
    assert_eq!(
        greeted
            .map(|reply| String::from_utf8_lossy(&reply.body).into_owned())
            .ok()
            .as_deref(),
        Some("hello, world"),
        "{name} greets with its configured greeting"
    );
    let url = format!("http://127.0.0.1:{api}/");
    let reply = client
        .call(call(url.as_str()).procedure(&name).timeout(slow))
        .await
        .unwrap_or_else(|e| panic!("{name} fetching {url}: {e}"));
    assert_eq!(reply.body, b"hello from the API");
    // A port the manifest does not list is refused by the host.
    let elsewhere = serve_http(|_, _| (200, vec![], b"internal".to_vec()), 0).await;
    let url = format!("http://127.0.0.1:{elsewhere}/");
    match client
        .call(call(url.as_str()).procedure(&name).timeout(slow))
        .await
    {
        Err(CallError::Rpc { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::ProcedureError, "{error}");
            assert!(!error.message.contains("internal"), "{error}");
            // JavaScript's fetch reports a NetworkError, without the code.
            assert!(
                lang == "js" || error.message.contains("HttpRequestDenied"),
                "{error}"
            );
        }
        other => panic!("{name} fetching an address it was not granted: {other:?}"),
    }
    host.stop().await;
}

/// Runs `command` (a shell command line, as the README gives it) in `dir`,
/// with nothing of this workspace's build in its environment.
async fn build_in(dir: &Path, command: &[&str]) {
    let mut shell = Command::new("bash");
    shell
        .arg("-c")
        .arg(command.join(" "))
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS");
    let output = tokio::task::spawn_blocking(move || shell.output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{command:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_rust_procedure_builds_alone_and_serves() {
    create_build_and_serve(
        "rust",
        "cargo",
        &["cargo build --release --target wasm32-wasip2"],
        "target/wasm32-wasip2/release/echo_rust.wasm",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_python_procedure_builds_alone_and_serves() {
    create_build_and_serve("python", "python3", &["./build.sh"], "echo-python.wasm").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_javascript_procedure_builds_alone_and_serves() {
    create_build_and_serve("js", "npm", &["npm ci && npm run build"], "echo-js.wasm").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_rust_procedure_with_grants_reads_its_config_and_fetches_what_it_may() {
    create_build_and_serve_with_grants(
        "rust",
        "cargo",
        &["cargo build --release --target wasm32-wasip2"],
        "target/wasm32-wasip2/release/greeter_rust.wasm",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_python_procedure_with_grants_reads_its_config_and_fetches_what_it_may() {
    create_build_and_serve_with_grants("python", "python3", &["./build.sh"], "greeter-python.wasm")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_javascript_procedure_with_grants_reads_its_config_and_fetches_what_it_may() {
    create_build_and_serve_with_grants(
        "js",
        "npm",
        &["npm ci && npm run build"],
        "greeter-js.wasm",
    )
    .await;
}
