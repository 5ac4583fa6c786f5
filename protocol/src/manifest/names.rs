//! Name patterns: who a manifest's `callers` let in.

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters (`billing-*`).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| name_matches(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_patterns_match_a_run_of_characters() {
        assert!(name_matches("billing-*", "billing-eu"));
        assert!(name_matches("billing-*", "billing-"));
        assert!(!name_matches("billing-*", "bill"));
        assert!(name_matches("alice", "alice"));
        assert!(!name_matches("alice", "alice2"));
        assert!(name_matches("*", "anyone"));
        assert!(name_matches("a*z", "abcz"));
    }
}
