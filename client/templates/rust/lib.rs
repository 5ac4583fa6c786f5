//! The `{{name}}` procedure: a Warren component (see README.md).
//!
//! `handle` gets each request's body and returns the reply body (`Ok`) or
//! a message for a `procedure-error` reply (`Err`). Each request runs in a
//! fresh instance: nothing carries over between requests.

wit_bindgen::generate!({ path: "wit", world: "procedure" });

struct Procedure;

impl exports::warren::procedure::handler::Guest for Procedure {
    fn handle(request: Vec<u8>) -> Result<Vec<u8>, String> {
        if request.is_empty() {
            return Err("empty request; send some bytes to echo".into());
        }
        Ok(request)
    }
}

export!(Procedure);
