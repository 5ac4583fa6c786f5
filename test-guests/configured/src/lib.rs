//! A procedure that reads its configuration, for the grants tests: the
//! request body names what to read.
//!
//! | body | answer |
//! |---|---|
//! | `get KEY` | the value of `KEY` from `wasi:config/store`, or `(none)` |
//! | `keys` | every key it can read, sorted, comma-separated |
//! | `panic KEY` | a trap: it panics with the value of `KEY` in the message, as a parser would (`invalid digit in "VALUE"`) |
//! | anything else | a `procedure-error` |

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "wit",
        world: "configured",
        generate_all,
    });

    use wasi::config::store;

    struct Configured;

    impl exports::warren::procedure::handler::Guest for Configured {
        fn handle(request: Vec<u8>) -> Result<Vec<u8>, String> {
            let request = String::from_utf8(request).map_err(|e| e.to_string())?;
            if let Some(key) = request.strip_prefix("get ") {
                return match store::get(key) {
                    Ok(Some(value)) => Ok(value.into_bytes()),
                    Ok(None) => Ok(b"(none)".to_vec()),
                    Err(error) => Err(format!("{error:?}")),
                };
            }
            if let Some(key) = request.strip_prefix("panic ") {
                let value = store::get(key).ok().flatten().unwrap_or_default();
                panic!("cannot parse {key}: invalid digit in {value:?}");
            }
            if request == "keys" {
                let mut keys: Vec<String> = store::get_all()
                    .map_err(|error| format!("{error:?}"))?
                    .into_iter()
                    .map(|(key, _)| key)
                    .collect();
                keys.sort();
                return Ok(keys.join(",").into_bytes());
            }
            Err(format!("unknown request {request:?}"))
        }
    }

    export!(Configured);
}
