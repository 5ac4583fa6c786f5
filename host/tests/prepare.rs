//! Modules the sandbox must refuse at load, each with a reason a person can
//! act on. No broker needed: this is `Sandbox::prepare` alone.

use warren_host::sandbox::{Limits, Sandbox};

fn refusal(wasm: &[u8]) -> String {
    let sandbox = Sandbox::new(Limits::default(), None).unwrap();
    match sandbox.prepare(wasm, "sha256:under-test") {
        Ok(_) => panic!("the module was accepted"),
        Err(error) => format!("{error:#}"),
    }
}

#[test]
fn bytes_that_are_not_wasm_are_refused() {
    let why = refusal(b"#!/bin/sh\nrm -rf /\n");
    assert!(why.contains("not a WebAssembly file"), "{why}");
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let why = refusal(&wat::parse_str("(module)").unwrap());
    assert!(
        why.contains("core WebAssembly module, not a component"),
        "{why}"
    );
}

#[test]
fn a_component_of_another_world_is_refused() {
    let other = wat::parse_str(
        r#"(component
            (core module $m (func (export "f") (result i32) i32.const 1))
            (core instance $i (instantiate $m))
            (func $f (result u32) (canon lift (core func $i "f")))
            (export "answer" (func $f)))"#,
    )
    .unwrap();
    let why = refusal(&other);
    assert!(
        why.contains("does not export `warren:procedure/handler"),
        "{why}"
    );
}

#[test]
fn a_component_importing_what_the_host_does_not_offer_is_refused() {
    let greedy = wat::parse_str(
        r#"(component (import "evil:net/raw@1.0.0" (instance (export "connect" (func)))))"#,
    )
    .unwrap();
    let why = refusal(&greedy);
    assert!(
        why.contains("imports something this host does not offer"),
        "{why}"
    );
    assert!(why.contains("evil:net/raw"), "{why}");
}
