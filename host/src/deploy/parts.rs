//! Joining a deploy that arrives in parts (`warren_protocol::deploy::Part`).
//!
//! Parts of one publication are stored next to each other and in order, so
//! the [`Assembler`] expects them so: part 1 starts a deploy, each next part
//! must be the one after, the last one completes it. Anything else (a part
//! whose predecessors the stream no longer holds, a publisher that stopped
//! half way, headers that differ between parts, more bytes than the host
//! accepts) refuses the deploy, once, with the reason; its remaining parts
//! are then skipped quietly. The joined module is checked like any other
//! deploy (digest, signature), which is what catches a damaged part.
//!
//! Memory is bounded: at most [`MAX_OPEN`] deploys are being joined at once
//! (more only when publishers interleave), each at most the host's
//! `--max-module-bytes`.

use std::collections::VecDeque;

use warren_protocol::deploy::{DeployHeaders, Part};

use super::checks::DeployRequest;

/// Deploys being joined at once; the oldest is given up beyond this.
pub const MAX_OPEN: usize = 4;

/// What one message of a deploy stream amounts to.
#[derive(Debug)]
pub enum Joined {
    /// A whole deploy: a one-message deploy, or the last part of one.
    Whole(DeployRequest),
    /// A part; the deploy is not complete yet.
    Partial,
    /// A part of a deploy already refused (said when it was refused).
    Skipped,
    /// The deploy these headers describe cannot be joined, and why.
    Refused(DeployHeaders, String),
}

/// Deploys in parts being joined, oldest first.
#[derive(Debug, Default)]
pub struct Assembler {
    open: VecDeque<Open>,
}

#[derive(Debug)]
struct Open {
    id: String,
    headers: DeployHeaders,
    count: u32,
    /// Parts joined so far (the next expected is `joined + 1`).
    joined: u32,
    module: Vec<u8>,
    /// Refused already: the rest of its parts are skipped.
    refused: bool,
}

impl Assembler {
    /// Takes one deploy message (`part` as read by `Part::read`); at most
    /// `max_bytes` of module are joined per deploy.
    pub fn add(
        &mut self,
        headers: DeployHeaders,
        part: Option<Result<Part, String>>,
        data: Vec<u8>,
        max_bytes: usize,
    ) -> Joined {
        let part = match part {
            None => {
                return Joined::Whole(DeployRequest {
                    headers,
                    module: data,
                });
            }
            Some(Err(reason)) => return Joined::Refused(headers, reason),
            Some(Ok(part)) => part,
        };
        let Some(at) = self.open.iter().position(|open| open.id == part.id) else {
            return self.start(headers, part, data, max_bytes);
        };
        let open = &mut self.open[at];
        let last = part.index == part.count;
        if open.refused {
            if last {
                self.open.remove(at);
            }
            return Joined::Skipped;
        }
        let problem = if part.count != open.count || headers != open.headers {
            Some(format!(
                "part {} of {} does not match the deploy's part 1 (other headers or count)",
                part.index, part.count
            ))
        } else if part.index != open.joined + 1 {
            Some(missing(open.joined + 1, part.index, part.count))
        } else if open.module.len() + data.len() > max_bytes {
            Some(too_large(max_bytes))
        } else {
            None
        };
        if let Some(reason) = problem {
            open.refused = true;
            open.module = Vec::new();
            let headers = open.headers.clone();
            if last {
                self.open.remove(at);
            }
            return Joined::Refused(headers, reason);
        }
        open.module.extend_from_slice(&data);
        open.joined += 1;
        if !last {
            return Joined::Partial;
        }
        let open = self.open.remove(at).expect("found above");
        Joined::Whole(DeployRequest {
            headers: open.headers,
            module: open.module,
        })
    }

    /// A part of a publication not seen before.
    fn start(
        &mut self,
        headers: DeployHeaders,
        part: Part,
        data: Vec<u8>,
        max_bytes: usize,
    ) -> Joined {
        let reason = if part.index != 1 {
            Some(missing(1, part.index, part.count))
        } else if data.len() > max_bytes {
            Some(too_large(max_bytes))
        } else {
            None
        };
        let refused = reason.is_some();
        let single = part.count == 1;
        let outcome = match reason {
            Some(reason) => Joined::Refused(headers.clone(), reason),
            None if single => {
                return Joined::Whole(DeployRequest {
                    headers,
                    module: data,
                });
            }
            None => Joined::Partial,
        };
        if part.index == part.count {
            return outcome; // nothing more of it will come
        }
        let module = if refused { Vec::new() } else { data };
        self.open.push_back(Open {
            id: part.id,
            headers,
            count: part.count,
            joined: 1,
            module,
            refused,
        });
        if self.open.len() > MAX_OPEN {
            // A publisher that stopped half way: its deploy never completes.
            // Its refusal is not reported (no reader waits for it any more).
            if let Some(oldest) = self.open.pop_front() {
                tracing::warn!(
                    procedure = oldest.headers.name.as_deref().unwrap_or_default(),
                    digest = oldest.headers.digest.as_deref().unwrap_or_default(),
                    "gave up joining a deploy in parts: only {} of its {} parts arrived before \
                     {MAX_OPEN} newer deploys began",
                    oldest.joined,
                    oldest.count
                );
            }
        }
        outcome
    }
}

fn missing(expected: u32, got: u32, count: u32) -> String {
    let gap = if got - 1 > expected {
        format!("parts {expected} to {}", got - 1)
    } else {
        format!("part {expected}")
    };
    format!(
        "the deploy came in {count} parts and {gap} of them did not arrive (the stream no longer \
         holds them, or their publisher stopped half way): deploy it again"
    )
}

fn too_large(max_bytes: usize) -> String {
    format!(
        "the module's parts add up to more than {max_bytes} bytes, the most this host accepts (--max-module-bytes)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 100;

    fn headers(name: &str) -> DeployHeaders {
        DeployHeaders {
            name: Some(name.into()),
            digest: Some("sha256:00".into()),
            ..DeployHeaders::default()
        }
    }

    fn part(id: &str, index: u32, count: u32) -> Option<Result<Part, String>> {
        Some(Ok(Part {
            id: id.into(),
            index,
            count,
        }))
    }

    fn whole(joined: Joined) -> Vec<u8> {
        match joined {
            Joined::Whole(request) => request.module,
            other => panic!("expected a whole deploy, got {other:?}"),
        }
    }

    fn refusal(joined: Joined) -> String {
        match joined {
            Joined::Refused(_, reason) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn parts_in_order_are_joined_and_interleaved_publications_kept_apart() {
        let mut parts = Assembler::default();
        let a = headers("a");
        let b = headers("b");
        assert!(matches!(
            parts.add(a.clone(), part("x", 1, 2), b"ab".to_vec(), MAX),
            Joined::Partial
        ));
        assert!(matches!(
            parts.add(b.clone(), part("y", 1, 2), b"12".to_vec(), MAX),
            Joined::Partial
        ));
        assert_eq!(
            whole(parts.add(a, part("x", 2, 2), b"cd".to_vec(), MAX)),
            b"abcd"
        );
        assert_eq!(
            whole(parts.add(b, part("y", 2, 2), b"34".to_vec(), MAX)),
            b"1234"
        );
        assert_eq!(
            whole(parts.add(headers("c"), None, b"one".to_vec(), MAX)),
            b"one"
        );
        assert!(parts.open.is_empty());
    }

    #[test]
    fn a_missing_part_refuses_the_deploy_once() {
        let mut parts = Assembler::default();
        let a = headers("a");
        parts.add(a.clone(), part("x", 1, 4), b"1".to_vec(), MAX);
        let reason = refusal(parts.add(a.clone(), part("x", 3, 4), b"3".to_vec(), MAX));
        assert!(reason.contains("part 2 of them did not arrive"), "{reason}");
        assert!(matches!(
            parts.add(a, part("x", 4, 4), b"4".to_vec(), MAX),
            Joined::Skipped
        ));
        assert!(parts.open.is_empty(), "forgotten after its last part");
    }

    #[test]
    fn a_deploy_whose_first_parts_are_gone_is_refused() {
        let mut parts = Assembler::default();
        let a = headers("a");
        let reason = refusal(parts.add(a.clone(), part("x", 3, 5), b"3".to_vec(), MAX));
        assert!(reason.contains("parts 1 to 2"), "{reason}");
        assert!(matches!(
            parts.add(a.clone(), part("x", 4, 5), vec![], MAX),
            Joined::Skipped
        ));
        assert!(matches!(
            parts.add(a, part("x", 5, 5), vec![], MAX),
            Joined::Skipped
        ));
        assert!(parts.open.is_empty());
    }

    #[test]
    fn parts_that_disagree_or_grow_too_large_are_refused() {
        let mut parts = Assembler::default();
        parts.add(headers("a"), part("x", 1, 2), b"1".to_vec(), MAX);
        let reason = refusal(parts.add(headers("b"), part("x", 2, 2), b"2".to_vec(), MAX));
        assert!(reason.contains("does not match"), "{reason}");
        parts.add(headers("a"), part("y", 1, 2), vec![0; 60], MAX);
        let reason = refusal(parts.add(headers("a"), part("y", 2, 2), vec![0; 60], MAX));
        assert!(reason.contains("more than 100 bytes"), "{reason}");
        let reason = refusal(parts.add(headers("a"), Some(Err("bad".into())), vec![], MAX));
        assert_eq!(reason, "bad");
    }

    #[test]
    fn a_publication_that_never_completes_is_given_up() {
        let mut parts = Assembler::default();
        for id in ["1", "2", "3", "4", "5", "6"] {
            parts.add(headers("a"), part(id, 1, 2), vec![1; 10], MAX);
        }
        assert_eq!(parts.open.len(), MAX_OPEN);
        assert_eq!(parts.open.front().map(|open| open.id.as_str()), Some("3"));
    }
}
