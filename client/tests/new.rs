//! `warren new`: each language's project builds outside this repository
//! with the command its README gives, and the component it leaves is served
//! as the procedure it is named after.

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
