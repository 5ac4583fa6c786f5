//! Links the component with a 64 KiB stack instead of Rust's default 1 MiB.
//!
//! Why: a fresh instance per request means the host resets the guest's
//! memory after every request, and the reset looks at every page of it
//! (`PAGEMAP_SCAN` over the whole linear memory). With the default stack the
//! memory is 1.1 MiB; with 64 KiB it is 128 KiB, and a fresh instance and
//! call of fib(1) took 19 → 12 µs in `cargo bench -p warren-host --bench
//! sandbox` (see BENCHMARKS.md). fib recurses at most 93 calls deep, a few
//! KiB. A guest that overflows its stack traps (an out-of-bounds access);
//! it cannot write over its data.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size=65536");
    }
}
