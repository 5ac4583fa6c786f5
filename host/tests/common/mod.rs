//! Shared by the host's own tests (no broker needed for any of them).

use std::path::Path;

/// The fib component, as `just build-guest` builds it.
pub fn fib_wasm() -> Vec<u8> {
    built_component("guest_fib.wasm", "just build-guest")
}

/// The misbehaving test component (`test-guests/hostile`), as `just
/// build-test-guests` builds it: its body names what it does ("spin",
/// "memory-bomb", …).
#[allow(dead_code)] // each test file is its own crate; not all of them use it
pub fn hostile_wasm() -> Vec<u8> {
    built_component("guest_hostile.wasm", "just build-test-guests")
}

/// A component in target/wasm32-wasip2/release, or a panic naming the
/// recipe that builds it.
fn built_component(file: &str, recipe: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}. Build it first: `{recipe}` (`just test` does it)",
            path.display()
        )
    })
}

/// The Python fib component (`just build-guest-py`, run by `just test`), or
/// `None`, after saying SKIPPED, where python3 is not installed to build it.
#[allow(dead_code)]
pub fn fib_py_wasm() -> Option<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guests/fib-py.wasm");
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(_) if !on_path("python3") => {
            eprintln!(
                "SKIPPED: python3 is not installed, so {} could not be built",
                path.display()
            );
            None
        }
        Err(e) => panic!(
            "reading {}: {e}. Build it first: `just build-guest-py` (`just test` does it)",
            path.display()
        ),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
