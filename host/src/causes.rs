//! Errors in log lines: one line per error, each cause said once; and the
//! error that says a person must act.

/// A setup the broker refused for a reason a person must fix, found by
/// this host rather than reported by the broker (the request queue
/// declared in the other mode, explained). The session stops retrying
/// fast when it sees one (`session::needs_a_person`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupRefused(pub String);

/// Shows an error and its causes on one line, like `{:#}`, but without a
/// cause that only repeats what was said (lapin's IO errors show their
/// cause and then have it as their source: "Connection refused (os error
/// 111): Connection refused (os error 111)").
pub struct Causes<'a>(pub &'a anyhow::Error);

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = String::new();
        for cause in self.0.chain() {
            let text = cause.to_string();
            if said.ends_with(&text) {
                continue;
            }
            if !said.is_empty() {
                said.push_str(": ");
            }
            said.push_str(&text);
        }
        f.write_str(&said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = anyhow::Error::from(lapin::Error::from(refused))
            .context("connecting to the broker at amqp://127.0.0.1");
        let shown = Causes(&error).to_string();
        assert_eq!(shown.matches("refused").count(), 1, "{shown}");
        assert!(shown.starts_with("connecting to the broker"), "{shown}");
    }
}
