//! What makes a file a Warren procedure: a WebAssembly component that
//! exports the `warren:procedure/handler` interface of `wit/procedure.wit`.
//!
//! Hosts check it when they load a module (with the compiler's detail);
//! `warren deploy` checks it before publishing, so a file no host can
//! serve never goes into the deploy stream, where every host would read and
//! refuse it again on every start.

/// The interface every procedure exports, as named in a component.
pub const HANDLER_INTERFACE: &str = "warren:procedure/handler@0.1.0";

/// Largest module a host accepts from a deploy by default
/// (`warren-host --max-module-bytes`).
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 64 << 20;

/// The WebAssembly proposals a procedure may use: those the toolchains
/// Warren supports emit (Rust for `wasm32-wasip2`, componentize-py,
/// componentize-js; `wasmparser` found the Rust, Python and JavaScript fibs
/// to need component-model, reference-types, bulk-memory, extended-const
/// and the 1.0 proposals, and Rust's target enables multi-value too), and no
/// more. Hosts compile with exactly these and refuse a module that uses any
/// other (SIMD, threads, GC, function references, tail calls, exceptions,
/// memory64, multi-memory, component-model async, …): each proposal turned
/// on is more of wasmtime that untrusted code can reach.
pub const PROCEDURE_FEATURES: WasmFeatures = WasmFeatures::MUTABLE_GLOBAL
    .union(WasmFeatures::SATURATING_FLOAT_TO_INT)
    .union(WasmFeatures::SIGN_EXTENSION)
    .union(WasmFeatures::FLOATS)
    .union(WasmFeatures::MULTI_VALUE)
    .union(WasmFeatures::REFERENCE_TYPES)
    .union(WasmFeatures::BULK_MEMORY)
    .union(WasmFeatures::EXTENDED_CONST)
    .union(WasmFeatures::COMPONENT_MODEL);

pub use wasmparser::WasmFeatures;

/// Checks that `wasm` is valid WebAssembly using only
/// [`PROCEDURE_FEATURES`]. A module that is valid but uses another proposal
/// is refused with the validator's words, which name the proposal.
pub fn check_features(wasm: &[u8]) -> Result<(), String> {
    let error =
        match wasmparser::Validator::new_with_features(PROCEDURE_FEATURES).validate_all(wasm) {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
    if wasmparser::Validator::new_with_features(WasmFeatures::all())
        .validate_all(wasm)
        .is_ok()
    {
        Err(format!(
            "it uses a WebAssembly proposal Warren does not enable ({}); Warren runs \
             procedures with the proposals {}: build it without the others (for Rust, \
             without extra `target-feature`s such as +simd128)",
            error.message(),
            enabled_proposals()
        ))
    } else {
        Err(format!("not a valid WebAssembly component: {error}"))
    }
}

/// The proposals in [`PROCEDURE_FEATURES`], for messages and docs.
pub fn enabled_proposals() -> String {
    PROCEDURE_FEATURES
        .iter_names()
        .map(|(name, _)| name.to_ascii_lowercase().replace('_', "-"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `wasm` is a valid component exporting [`HANDLER_INTERFACE`]
/// and using only [`PROCEDURE_FEATURES`]; the error says what it is instead
/// and what to do.
pub fn check_procedure_component(wasm: &[u8]) -> Result<(), String> {
    check_is_component(wasm)?;
    check_features(wasm)?;
    if exports_handler(wasm) {
        Ok(())
    } else {
        Err(format!(
            "the component does not export `{HANDLER_INTERFACE}`: build it against the WIT \
             contract in wit/ (`warren new` writes a project that does)"
        ))
    }
}

/// Refuses bytes that are not a component, with a reason a person can act on.
pub fn check_is_component(wasm: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8; 4] = b"\0asm";
    if wasm.is_empty() {
        return Err("the file is empty".to_owned());
    }
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Err("not a WebAssembly file (no \\0asm header)".to_owned());
    }
    // Bytes 4..8: version and layer. Core modules are version 1, layer 0.
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(
            "this is a core WebAssembly module, not a component: build for \
                    wasm32-wasip2 (or wrap it with `wasm-tools component new`)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether the outermost component exports the handler instance.
fn exports_handler(wasm: &[u8]) -> bool {
    use wasmparser::{ComponentExternalKind, Payload};
    // Nested modules and components come inline, between their own
    // Version and End: only depth 1 is the outermost component.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::Version { .. }) => depth += 1,
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(Payload::ComponentExportSection(exports)) if depth == 1 => {
                for export in exports.into_iter().flatten() {
                    if export.kind == ComponentExternalKind::Instance
                        && export.name.name == HANDLER_INTERFACE
                    {
                        return true;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_procedures_say_what_they_are() {
        let said = |bytes: &[u8]| check_procedure_component(bytes).unwrap_err();
        assert!(said(b"").contains("empty"));
        assert!(said(b"garbage!").contains("no \\0asm header"));
        assert!(said(b"\0asm\x01\0\0\0").contains("core WebAssembly module"));
        let component_without_handler = b"\0asm\x0d\0\x01\0";
        assert!(said(component_without_handler).contains(HANDLER_INTERFACE));
        assert!(said(b"\0asm\x0d\0\x01\0\xff").contains("not a valid WebAssembly component"));
    }

    #[test]
    fn a_proposal_warren_does_not_enable_is_named() {
        let simd =
            wat::parse_str("(component (core module (func (result v128) v128.const i64x2 0 0)))")
                .unwrap();
        let why = check_features(&simd).unwrap_err();
        assert!(why.contains("SIMD"), "{why}");
        assert!(why.contains("does not enable"), "{why}");
        assert!(
            why.contains("reference-types"),
            "lists what is enabled: {why}"
        );
        let plain =
            wat::parse_str("(component (core module (func (result i32) i32.const 1)))").unwrap();
        assert_eq!(check_features(&plain), Ok(()));
    }
}
