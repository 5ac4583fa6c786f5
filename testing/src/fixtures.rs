//! The components and values tests use: built guests, a module that
//! behaves the same under another digest, the seed's fibonacci.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testing/ sits in the workspace")
        .to_owned()
}

/// The fib component, as `just build-guest` builds it.
pub fn fib_wasm() -> Vec<u8> {
    built_guest("guest_fib", "just build-guest")
}

/// The hostile test component, as `just build-test-guests` builds it.
pub fn hostile_wasm() -> Vec<u8> {
    built_guest("guest_hostile", "just build-test-guests")
}

/// The test component that reads its configuration (`wasi:config/store`),
/// as `just build-test-guests` builds it.
pub fn configured_wasm() -> Vec<u8> {
    built_guest("guest_configured", "just build-test-guests")
}

/// The test component that makes outbound HTTP requests (`wasi:http`),
/// as `just build-test-guests` builds it.
pub fn fetcher_wasm() -> Vec<u8> {
    built_guest("guest_fetcher", "just build-test-guests")
}

fn built_guest(file_stem: &str, recipe: &str) -> Vec<u8> {
    let path = workspace().join(format!("target/wasm32-wasip2/release/{file_stem}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}. Build it first: `{recipe}` (`just test` does it)",
            path.display()
        )
    })
}

/// `wasm` with a custom section appended: a different file (and digest)
/// that behaves exactly the same, like a rebuild.
pub fn with_custom_section(wasm: &[u8], payload: &str) -> Vec<u8> {
    with_custom_section_bytes(wasm, payload.as_bytes())
}

/// [`with_custom_section`] with any bytes as the payload.
pub fn with_custom_section_bytes(wasm: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"warren-test";
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// `sha256:<hex>` of `bytes`, as the host reports it (the one digest
/// function, `warren_protocol::digest`).
pub use warren_protocol::digest;

/// Whether `program` is on PATH (a toolchain a test needs, say).
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The seed's fibonacci, to check replies.
pub fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

/// A component built into target/guests (`just build-guests`,
/// `just build-test-guests`: the Python and JavaScript ones), or `None`,
/// after saying SKIPPED, where `toolchain` (python3, node) is not installed
/// to build it.
pub fn guest_component(stem: &str, toolchain: &str) -> Option<Vec<u8>> {
    let path = workspace().join(format!("target/guests/{stem}.wasm"));
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) if !on_path(toolchain) => {
            eprintln!(
                "SKIPPED: {toolchain} is not installed, so {} could not be built",
                path.display()
            );
            None
        }
        Err(e) => panic!(
            "reading {}: {e}. Build it first: `just build-guests build-test-guests` (`just test` does it)",
            path.display()
        ),
    }
}
