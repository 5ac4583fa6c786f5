//! No procedure can end the host process or grow its memory without bound:
//! modules built to hit known wasmtime advisories, run through the sandbox
//! beside an honest procedure that must go on answering. No broker needed.

use std::time::Duration;

use warren_host::sandbox::{EngineOptions, Limits, Sandbox};
use warren_protocol::ErrorKind;
use warren_protocol::digest;
use warren_testing::{fib_wasm, hostile_wasm};

/// A procedure written by hand: a core module whose exported `handle`
/// runs `body` (instructions leaving nothing on the stack) and answers `ok`
/// with the first `reply_len` bytes at address 3000, lifted as
/// `warren:procedure/handler`. `types` and `items` go into the core module
/// before it.
fn procedure(types: &str, items: &str, body: &str) -> Vec<u8> {
    procedure_replying(types, items, body, 0, 1)
}

/// [`procedure`] replying `reply_len` bytes, with `memory_pages` of 64 KiB.
fn procedure_replying(
    types: &str,
    items: &str,
    body: &str,
    reply_len: u32,
    memory_pages: u32,
) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
            (core module $m
                {types}
                (memory (export "memory") {memory_pages})
                {items}
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
                (func (export "handle") (param i32 i32) (result i32)
                    {body}
                    ;; result<list<u8>, string> at 2048: ok, the reply bytes
                    (i32.store8 (i32.const 2048) (i32.const 0))
                    (i32.store (i32.const 2052) (i32.const 3000))
                    (i32.store (i32.const 2056) (i32.const {reply_len}))
                    i32.const 2048))
            (core instance $i (instantiate $m))
            (type $handle (func (param "request" (list u8)) (result (result (list u8) (error string)))))
            (func $handle (type $handle)
                (canon lift (core func $i "handle") (memory $i "memory") (realloc (func $i "realloc"))))
            (instance $handler (export "handle" (func $handle)))
            (export "warren:procedure/handler@0.1.0" (instance $handler)))"#
    ))
    .unwrap_or_else(|e| panic!("the test's own WAT: {e}"))
}

async fn answers_fib(sandbox: &Sandbox, fib: &warren_host::sandbox::PreparedComponent) {
    let reply = sandbox.run(fib, b"20".to_vec(), "fib").await.unwrap();
    assert_eq!(reply, b"6765", "the host still answers");
}

/// wasmtime advisory GHSA-rc4p-x33f-vpr2: a `call_indirect` through a
/// non-final function type (GC subtyping) aborted the whole process in
/// 48.0.8. Warren runs 48.0.11, which has the fix, and enables no GC, so the
/// module is refused at load, with a reason naming the proposal; the host
/// goes on serving. The same call through an ordinary type runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_indirect_through_a_non_final_type_cannot_end_the_host() {
    let sandbox = Sandbox::new(Limits::default(), None).unwrap();
    let fib_bytes = fib_wasm();
    let fib = sandbox.prepare(&fib_bytes, &digest(&fib_bytes)).unwrap();

    let subtyped = procedure(
        "(type $t (sub (func (result i32)))) (type $u (sub $t (func (result i32))))",
        "(table 1 funcref) (func $f (type $u) i32.const 42) (elem (i32.const 0) func $f)",
        "(drop (call_indirect (type $t) (i32.const 0)))",
    );
    let refused = match sandbox.prepare(&subtyped, &digest(&subtyped)) {
        Ok(_) => panic!("a module using GC subtyping was accepted"),
        Err(error) => format!("{error:#}"),
    };
    assert!(refused.contains("does not enable"), "{refused}");
    assert!(
        refused.to_lowercase().contains("gc"),
        "names the proposal: {refused}"
    );
    answers_fib(&sandbox, &fib).await;

    // The control: the same call through a final type, which any engine
    // runs; this shows the procedure itself is well made.
    let plain = procedure(
        "(type $t (func (result i32)))",
        "(table 1 funcref) (func $f (type $t) i32.const 42) (elem (i32.const 0) func $f)",
        "(drop (call_indirect (type $t) (i32.const 0)))",
    );
    let plain = sandbox.prepare(&plain, &digest(&plain)).unwrap();
    assert_eq!(
        sandbox.run(&plain, b"x".to_vec(), "plain").await,
        Ok(Vec::new())
    );
    answers_fib(&sandbox, &fib).await;
}

/// The resident memory of this process, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// wasmtime-wasi advisory GHSA-5m8g-xhq4-4h93 (48.0.8 is affected; there is
/// no fixed 48.x of wasmtime-wasi): an output stream queued empty writes
/// without bound. Warren's stdout and stderr are its own capped buffers; a
/// guest that writes empty buffers to both as fast as it can until its
/// deadline, three times over, leaves the host's memory where it was.
#[tokio::test(flavor = "multi_thread")]
async fn flooding_stdout_and_stderr_with_empty_writes_keeps_memory_flat() {
    let limits = Limits {
        timeout: Some(Duration::from_secs(2)),
        ..Limits::default()
    };
    let sandbox = Sandbox::new(limits, None).unwrap();
    let hostile = hostile_wasm();
    let hostile = sandbox.prepare(&hostile, &digest(&hostile)).unwrap();
    let fib_bytes = fib_wasm();
    let fib = sandbox.prepare(&fib_bytes, &digest(&fib_bytes)).unwrap();
    // A first run, so what the sandbox keeps for good is counted before.
    answers_fib(&sandbox, &fib).await;
    let before = resident_bytes();
    for round in 0..3 {
        let outcome = sandbox
            .run(&hostile, b"empty-write-flood".to_vec(), "flood")
            .await;
        match outcome {
            Err(error) => assert_eq!(error.kind, ErrorKind::Timeout, "round {round}: {error}"),
            Ok(reply) => panic!("round {round}: answered {reply:?}"),
        }
    }
    let after = resident_bytes();
    let grown = after.saturating_sub(before);
    eprintln!(
        "resident: {} KiB before, {} KiB after",
        before >> 10,
        after >> 10
    );
    assert!(
        grown < 32 << 20,
        "the host grew by {} MiB ({} → {} MiB) while a guest flooded empty writes",
        grown >> 20,
        before >> 20,
        after >> 20
    );
    answers_fib(&sandbox, &fib).await;
}

/// A procedure that, on every request, checks that 63 separate 4 KiB pages
/// of its memory hold what the module's image says (7 where a data segment
/// put it, else 0), then writes each of them: 64 dirty runs per request,
/// more than the 32 one `PAGEMAP_SCAN` call reports. Replies with how many
/// pages it found dirty, as one byte.
fn dirtier_of_many_runs() -> Vec<u8> {
    let data: String = (2..128)
        .step_by(2)
        .filter(|page| page % 4 == 0)
        .map(|page| format!("(data (i32.const {}) \"\\07\")", page * 4096 + 100))
        .collect();
    procedure_replying(
        "",
        &data,
        r#"(local $p i32) (local $bad i32) (local $at i32)
           (local.set $p (i32.const 2))
           (block $done (loop $next
             (br_if $done (i32.ge_u (local.get $p) (i32.const 128)))
             (local.set $at (i32.add (i32.mul (local.get $p) (i32.const 4096)) (i32.const 100)))
             (if (i32.ne (i32.load8_u (local.get $at))
                         (select (i32.const 7) (i32.const 0)
                                 (i32.eqz (i32.and (local.get $p) (i32.const 3)))))
               (then (local.set $bad (i32.add (local.get $bad) (i32.const 1)))))
             (i32.store8 (local.get $at) (i32.const 0xaa))
             (local.set $p (i32.add (local.get $p) (i32.const 2)))
             (br $next)))
           (i32.store8 (i32.const 3000) (local.get $bad))"#,
        1,
        8,
    )
}

/// The pool resets a memory dirtied in more than 32 places (the vendored
/// pagemap patch resumes the kernel's scan where the unpatched one gave
/// up): every request, in a fresh instance in a reused pool slot, sees its
/// memory exactly as the module's image has it. The same holds with the
/// scan off, which is also what a reset falls back to when the ioctl fails
/// (`pagemap_disabled::reset_with_pagemap`), and what a build against
/// upstream wasmtime uses.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_dirtied_in_more_than_32_places_is_reset_whole() {
    for pagemap_scan in [true, false] {
        let limits = Limits {
            concurrency: Some(1),
            ..Limits::default()
        };
        let options = EngineOptions {
            pagemap_scan,
            ..EngineOptions::default()
        };
        let sandbox = Sandbox::with_options(limits, None, options).unwrap();
        let wasm = dirtier_of_many_runs();
        let component = sandbox.prepare(&wasm, &digest(&wasm)).unwrap();
        for request in 0..20 {
            let reply = sandbox
                .run(&component, Vec::new(), "dirtier")
                .await
                .unwrap();
            assert_eq!(
                reply,
                [0],
                "request {request} (pagemap scan {pagemap_scan}) found pages a previous request wrote"
            );
        }
    }
}

/// `ref.func` (which the vendored funcref patch resolves by index) into a
/// table shared between two instances of two core modules of one
/// component: each instance's functions land in the table as themselves,
/// request after request.
#[tokio::test(flavor = "multi_thread")]
async fn function_references_in_a_table_shared_by_two_modules_resolve_right() {
    let wasm = wat::parse_str(
        r#"(component
            (core module $a
                (table (export "table") 4 funcref)
                (func $one (result i32) i32.const 1)
                (func $two (result i32) i32.const 2)
                (elem declare func $one $two)
                (func (export "fill")
                    (table.set (i32.const 0) (ref.func $one))
                    (table.set (i32.const 1) (ref.func $two))))
            (core instance $ia (instantiate $a))
            (core module $b
                (import "a" "table" (table 4 funcref))
                (import "a" "fill" (func $fill))
                (type $r (func (result i32)))
                (memory (export "memory") 1)
                (func $ten (result i32) i32.const 10)
                (func $twenty (result i32) i32.const 20)
                (elem declare func $ten $twenty)
                (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
                (func (export "handle") (param i32 i32) (result i32)
                    (local $i i32)
                    call $fill
                    (table.set (i32.const 2) (ref.func $ten))
                    (table.set (i32.const 3) (ref.func $twenty))
                    (block $done (loop $next
                        (br_if $done (i32.ge_u (local.get $i) (i32.const 4)))
                        (i32.store8 (i32.add (i32.const 3000) (local.get $i))
                            (call_indirect (type $r) (local.get $i)))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br $next)))
                    (i32.store8 (i32.const 2048) (i32.const 0))
                    (i32.store (i32.const 2052) (i32.const 3000))
                    (i32.store (i32.const 2056) (i32.const 4))
                    i32.const 2048))
            (core instance $ib (instantiate $b
                (with "a" (instance (export "table" (table $ia "table")) (export "fill" (func $ia "fill"))))))
            (type $handle (func (param "request" (list u8)) (result (result (list u8) (error string)))))
            (func $handle (type $handle)
                (canon lift (core func $ib "handle") (memory $ib "memory") (realloc (func $ib "realloc"))))
            (instance $handler (export "handle" (func $handle)))
            (export "warren:procedure/handler@0.1.0" (instance $handler)))"#,
    )
    .unwrap();
    let sandbox = Sandbox::new(Limits::default(), None).unwrap();
    let component = sandbox.prepare(&wasm, &digest(&wasm)).unwrap();
    for request in 0..20 {
        let reply = sandbox
            .run(&component, Vec::new(), "funcref")
            .await
            .unwrap();
        assert_eq!(reply, [1, 2, 10, 20], "request {request}");
    }
}
