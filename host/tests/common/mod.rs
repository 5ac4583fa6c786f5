//! Shared by the host's own tests (no broker needed for any of them).

use std::path::Path;

/// The fib component, as `just build-guest` builds it.
pub fn fib_wasm() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/guest_fib.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e}. Build it first: `just build-guest` (`just test` does it)",
            path.display()
        )
    })
}
