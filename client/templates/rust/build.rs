//! Links the component with a 64 KiB stack instead of Rust's default 1 MiB.
//!
//! The host gives every request a fresh instance and resets its memory
//! after it; a smaller memory costs less per request (BENCHMARKS.md in
//! Warren's repository has the figures). 64 KiB is plenty for a procedure
//! that does not recurse deeply; one that overflows its stack traps (the
//! caller gets `trap`), it cannot write over its data. Raise the number, or
//! delete this file, if your procedure needs more.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size=65536");
    }
}
