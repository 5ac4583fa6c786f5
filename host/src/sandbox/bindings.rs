//! Host-side bindings generated from `wit/procedure.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "procedure",
    exports: { default: async },
});
