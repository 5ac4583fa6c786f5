//! The `fib` procedure: the seed's fibonacci as a Warren component.
//!
//! The request body is an ASCII decimal integer `n` (surrounding whitespace
//! allowed, `0..=93`); the reply is `fib(n)` in decimal. The algorithm is the
//! seed server's naive recursion on purpose, so that a request costs the same
//! work here as in `rpc_server.py` and benchmarks compare like with like.
//!
//! The logic is plain Rust ([`reply`]) so it is unit-tested natively; the
//! component glue exists only when built for `wasm32`.

/// The largest `n` whose `fib(n)` fits in a `u64`.
pub const MAX_N: u64 = 93;

/// Fibonacci by naive recursion, exactly as the seed server computes it.
pub fn fib(n: u64) -> u64 {
    match n {
        0 => 0,
        1 => 1,
        _ => fib(n - 1) + fib(n - 2),
    }
}

/// Parses a request body into `n`, or says what is wrong with it.
pub fn parse_request(body: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("request is not UTF-8 text ({e}); send a decimal integer like 30"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err("request is empty; send a decimal integer like 30".into());
    }
    let digits = text.strip_prefix('+').unwrap_or(text);
    let negative = digits.starts_with('-') && digits.len() > 1;
    if negative && digits[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text} is negative; fib is defined here for 0..={MAX_N}"
        ));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{:?} is not a decimal integer; send digits only, like 30",
            truncate(text, 64)
        ));
    }
    match digits.parse::<u64>() {
        Ok(n) if n <= MAX_N => Ok(n),
        _ => Err(format!(
            "{} is above {MAX_N}: fib({}) does not fit in 64 bits",
            truncate(text, 64),
            MAX_N + 1
        )),
    }
}

/// The whole procedure: request body in, reply body or error message out.
pub fn reply(body: &[u8]) -> Result<Vec<u8>, String> {
    let n = parse_request(body)?;
    Ok(fib(n).to_string().into_bytes())
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        path: "../wit",
        world: "procedure",
    });

    struct Fib;

    impl exports::warren::procedure::handler::Guest for Fib {
        fn handle(request: Vec<u8>) -> Result<Vec<u8>, String> {
            super::reply(&request)
        }
    }

    export!(Fib);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_seed_for_small_n() {
        let expected = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55];
        for (n, want) in expected.into_iter().enumerate() {
            assert_eq!(fib(n as u64), want);
        }
        assert_eq!(reply(b"30").unwrap(), b"832040");
    }

    #[test]
    fn accepts_surrounding_whitespace() {
        assert_eq!(parse_request(b"  12\n"), Ok(12));
        assert_eq!(parse_request(b"93"), Ok(93));
    }

    #[test]
    fn explains_each_bad_input() {
        let cases: [(&[u8], &str); 7] = [
            (b"abc", "not a decimal integer"),
            (b"-1", "negative"),
            (b"", "empty"),
            (b"1e3", "not a decimal integer"),
            (b"99999999999999999999", "above 93"),
            (b"94", "above 93"),
            (&[0xff, 0xfe, 0x31], "not UTF-8"),
        ];
        for (body, needle) in cases {
            let err = parse_request(body).unwrap_err();
            assert!(err.contains(needle), "{body:?}: {err}");
        }
    }
}
