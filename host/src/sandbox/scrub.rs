//! A procedure's secret values, kept out of what leaves its sandbox as
//! text: error replies (a trap quotes the guest's last stderr line, and
//! CPython's `ValueError: invalid literal for int(): 's3cr3t'` quotes the
//! value), the guest output the host logs, and outbound HTTP log lines.
//!
//! Each occurrence of a secret value, as written or as Rust's `{:?}` writes
//! it (quotes and backslashes escaped), becomes [`REDACTED`]. Occurrences
//! that overlap are replaced together, so no part of either shows; in text
//! that was cut short (output past `--max-output-bytes`), an ending that
//! begins a secret is replaced too. Other encodings of a value (base64, URL
//! or JSON escapes, a value split across lines) are not recognised: a
//! procedure can always put its secrets in its reply if it wants to; this is
//! against the accidental leak of an exception message.
//!
//! Costs nothing for a procedure without secrets ([`Scrubber::is_empty`]),
//! and runs only on error replies and on output being logged.

use std::borrow::Cow;

/// What each secret value is replaced by.
pub const REDACTED: &str = "[secret]";

/// A procedure's secret values, ready to be found in text.
#[derive(Default)]
pub(super) struct Scrubber {
    /// Each value, and its `{:?}` form where that differs; none empty.
    needles: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        write!(f, "Scrubber({} forms)", self.needles.len())
    }
}

impl Scrubber {
    /// A scrubber for these secret values (empty ones are ignored).
    pub(super) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut needles = Vec::new();
        for value in values.into_iter().filter(|value| !value.is_empty()) {
            needles.push(value.to_owned());
            let escaped = value.escape_debug().to_string();
            if escaped != value {
                needles.push(escaped);
            }
        }
        needles.sort();
        needles.dedup();
        Scrubber { needles }
    }

    /// Whether there is nothing to scrub (the procedure has no secrets).
    pub(super) fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret value in it replaced by [`REDACTED`].
    pub(super) fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.replace(text, false)
    }

    /// [`Scrubber::scrub`] for text cut short at an arbitrary point: an
    /// ending that is the beginning of a secret value is replaced too.
    pub(super) fn scrub_cut<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.replace(text, true)
    }

    /// [`Scrubber::scrub`], in place.
    pub(super) fn scrub_owned(&self, text: String) -> String {
        match self.scrub(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(scrubbed) => scrubbed,
        }
    }

    fn replace<'t>(&self, text: &'t str, cut: bool) -> Cow<'t, str> {
        if self.needles.is_empty() {
            return Cow::Borrowed(text);
        }
        // Byte ranges to replace: every occurrence of every form, overlapping
        // ones included, then merged.
        let mut ranges = Vec::new();
        for needle in &self.needles {
            let mut from = 0;
            while let Some(found) = text[from..].find(needle.as_str()) {
                let at = from + found;
                ranges.push((at, at + needle.len()));
                from = at + text[at..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if cut {
            // A cut inside a multi-byte character leaves U+FFFD after the
            // secret's beginning (from a lossy conversion).
            let end = text.trim_end_matches(char::REPLACEMENT_CHARACTER).len();
            let kept = &text[..end];
            let longest = self
                .needles
                .iter()
                .flat_map(|needle| needle.char_indices().skip(1).map(|(at, _)| &needle[..at]))
                .filter(|prefix| kept.ends_with(prefix))
                .map(str::len)
                .max();
            if let Some(len) = longest {
                ranges.push((end - len, text.len()));
            }
        }
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        ranges.sort_unstable();
        let mut scrubbed = String::with_capacity(text.len());
        let mut written = 0;
        let mut ranges = ranges.into_iter().peekable();
        while let Some((start, mut end)) = ranges.next() {
            while let Some(&(next_start, next_end)) = ranges.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                ranges.next();
            }
            scrubbed.push_str(&text[written..start]);
            scrubbed.push_str(REDACTED);
            written = end;
        }
        scrubbed.push_str(&text[written..]);
        Cow::Owned(scrubbed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_and_the_debug_form_are_replaced() {
        let scrubber = Scrubber::new(["s3cr3t", "", "with \"quotes\""]);
        assert_eq!(
            scrubber.scrub(
                "ValueError: invalid literal for int() with base 10: 's3cr3t' (s3cr3ts3cr3t)"
            ),
            "ValueError: invalid literal for int() with base 10: '[secret]' ([secret])"
        );
        assert_eq!(
            scrubber.scrub(r#"invalid digit in "with \"quotes\"""#),
            r#"invalid digit in "[secret]""#
        );
        assert!(matches!(scrubber.scrub("nothing here"), Cow::Borrowed(_)));
        assert!(!format!("{scrubber:?}").contains("s3cr3t"));
        let none = Scrubber::new([]);
        assert!(none.is_empty());
        assert_eq!(none.scrub("s3cr3t"), "s3cr3t");
    }

    #[test]
    fn overlapping_secrets_are_replaced_whole() {
        let scrubber = Scrubber::new(["abcd", "cdef", "aa"]);
        assert_eq!(scrubber.scrub("xabcdefx"), "x[secret]x");
        assert_eq!(scrubber.scrub("aaa"), "[secret]");
        assert_eq!(
            Scrubber::new(["pässwörd"]).scrub("é pässwörd é"),
            "é [secret] é"
        );
    }

    #[test]
    fn text_cut_short_loses_a_secrets_beginning_too() {
        let scrubber = Scrubber::new(["tr0ub4dor"]);
        assert_eq!(scrubber.scrub_cut("key=tr0ub"), "key=[secret]");
        assert_eq!(scrubber.scrub("key=tr0ub"), "key=tr0ub");
        assert_eq!(scrubber.scrub_cut("key=tr0ub4dor"), "key=[secret]");
        assert_eq!(scrubber.scrub_cut("key=x"), "key=x");
        let accented = Scrubber::new(["pässwörd"]);
        assert_eq!(accented.scrub_cut("key=p\u{fffd}"), "key=[secret]");
    }
}
