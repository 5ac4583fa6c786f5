//! A [`Batch`] of deploys read together, and what became of each one
//! ([`SettledDeploy`]).

use std::collections::HashMap;
use std::time::Instant;

use warren_protocol::deploy::{DeployAnswer, DeployHeaders};

use super::checks::{DeployRequest, Verified};
use super::deployer::{Deployer, Kept};
use super::replay::Order;
use warren_protocol::digest;

/// What became of one deploy of a [`Batch`].
#[derive(Debug)]
pub struct SettledDeploy<T> {
    /// What the caller of [`Batch::add`] tagged the deploy with.
    pub tag: T,
    /// The procedure it was for, if it named one.
    pub name: Option<String>,
    /// The answer for its deployer.
    pub answer: DeployAnswer,
    /// It was the deploy this host had already accepted (a copy a host
    /// re-published, or the same message again): nothing was done.
    pub copy: bool,
    /// It passed every check before compiling, so it replaced the newest
    /// deploy of its name, whether or not it was then served.
    pub verified: bool,
}

/// Deploys read together (a starting host's history, or a burst of live
/// ones), checked one by one as they arrive and applied at the end.
///
/// Per name, only the newest deploy that passed every check waits to be
/// compiled; an older one is answered as superseded, and its bytes dropped,
/// when a newer one arrives. So a replayed history costs one compile per
/// name and holds at most one module per name in memory, however long it
/// is, and a refused deploy at its end never hides a good one before it.
pub struct Batch<'d, T> {
    deployer: &'d Deployer,
    /// Per name, the newest deploy that passed the checks, not yet applied.
    waiting: HashMap<String, Waiting<T>>,
    settled: Vec<(usize, SettledDeploy<T>)>,
    /// How many deploys were added: each one's place, to answer in order.
    added: usize,
}

struct Waiting<T> {
    place: usize,
    tag: T,
    verified: Verified,
    module: Vec<u8>,
    received: Instant,
}

impl<T> Batch<'_, T> {
    /// Checks one deploy (name, size, digest, signature, order) and keeps
    /// it if it is the newest of its name so far. `tag` comes back with its
    /// answer from [`Batch::finish`].
    pub fn add(&mut self, mut request: DeployRequest, tag: T) {
        let received = Instant::now();
        let place = self.added;
        self.added += 1;
        let deployer = self.deployer;
        // A deploy of a kept version gets its module here, then is checked
        // like any other.
        let attached = deployer.attach_kept(&mut request);
        let (digest, checked) = match attached {
            Ok(Kept::Copy) => (
                request.headers.digest.clone().unwrap_or_default(),
                Ok(Order::Copy),
            ),
            Ok(Kept::Carried | Kept::Attached) => {
                let digest = digest(&request.module);
                let checked = deployer.check(&request, &digest);
                (digest, checked)
            }
            // A rollback to a version this host does not keep (one that
            // started after it, replaying the stream): what came before it
            // in the history is what was rolled back from, so none of it
            // is applied; the rollback's copy, published again with its
            // module by a host that keeps it, follows in the stream.
            Ok(Kept::Missing(reason)) => {
                if let Some(name) = &request.headers.name
                    && let Some(older) = self.waiting.remove(name)
                {
                    self.supersede(older);
                }
                (String::new(), Err(reason))
            }
            // Not the digest of an empty body: there was no module to check.
            Err(reason) => (String::new(), Err(reason)),
        };
        let (answer, copy) = match checked {
            Ok(Order::New(verified)) => {
                let waiting = Waiting {
                    place,
                    tag,
                    verified: *verified,
                    module: request.module,
                    received,
                };
                if let Some(older) = self.waiting.insert(waiting.verified.name.clone(), waiting) {
                    self.supersede(older);
                }
                return;
            }
            Ok(Order::Copy) => (deployer.acceptance(digest, received), true),
            Err(reason) => (deployer.refusal(digest, reason, received), false),
        };
        let name = request.headers.name;
        self.settled.push((
            place,
            SettledDeploy {
                tag,
                name,
                answer,
                copy,
                verified: false,
            },
        ));
    }

    /// Answers a deploy that was refused before it could be checked (its
    /// parts could not be joined, see `parts`).
    pub fn refuse(&mut self, headers: DeployHeaders, reason: String, tag: T) {
        let place = self.added;
        self.added += 1;
        // The claimed digest is not repeated: nothing checked it.
        let answer = self.deployer.refusal(String::new(), reason, Instant::now());
        self.settled.push((
            place,
            SettledDeploy {
                tag,
                name: headers.name,
                answer,
                copy: false,
                verified: false,
            },
        ));
    }

    /// The largest module this host accepts (`--max-module-bytes`).
    pub fn max_module_bytes(&self) -> usize {
        self.deployer.policy().max_module_bytes
    }

    /// Whether a message whose `user_id` is `user` is to be read at all
    /// ([`super::policy::DeployPolicy::publishers`]).
    pub fn admits_publisher(&self, user: Option<&str>) -> bool {
        self.deployer.policy().admits_publisher(user)
    }

    /// Whether a claim whose `user_id` is `user` came from a host.
    pub fn admits_claim(&self, user: Option<&str>) -> bool {
        self.deployer.policy().admits_claim(user)
    }

    /// Counts a message skipped because no deploying user published it.
    pub fn skipped_publisher(&self) {
        self.deployer.folder().metrics().deploy_message_skipped();
    }

    /// Answers a deploy that a newer one of its name replaced before it
    /// was applied, and drops its bytes.
    fn supersede(&mut self, older: Waiting<T>) {
        let name = older.verified.name;
        let reason = format!("superseded by a newer deploy of {name} in the deploy history");
        let answer = self
            .deployer
            .refusal(older.verified.digest, reason, older.received);
        self.settled.push((
            older.place,
            SettledDeploy {
                tag: older.tag,
                name: Some(name),
                answer,
                copy: false,
                verified: true,
            },
        ));
    }

    /// Compiles, saves and serves the newest deploy of each name, and
    /// returns every deploy's answer, in the order they were added.
    pub async fn finish(mut self) -> Vec<SettledDeploy<T>> {
        let mut waiting: Vec<Waiting<T>> = self.waiting.into_values().collect();
        waiting.sort_by_key(|w| w.place);
        for w in waiting {
            let answer = match self.deployer.install(&w.verified, w.module).await {
                Ok(()) => self
                    .deployer
                    .acceptance(w.verified.digest.clone(), w.received),
                Err(error) => {
                    self.deployer.not_served(&w.verified.name);
                    self.deployer.refusal(
                        w.verified.digest.clone(),
                        format!("{error:#}"),
                        w.received,
                    )
                }
            };
            self.settled.push((
                w.place,
                SettledDeploy {
                    tag: w.tag,
                    name: Some(w.verified.name),
                    answer,
                    copy: false,
                    verified: true,
                },
            ));
        }
        self.settled.sort_by_key(|(place, _)| *place);
        let metrics = self.deployer.folder().metrics();
        self.settled
            .into_iter()
            .map(|(_, settled)| {
                if !settled.copy {
                    metrics.deploy_answered(settled.answer.accepted);
                }
                settled
            })
            .collect()
    }
}

impl Deployer {
    /// Starts a batch of deploys (see [`Batch`]).
    pub fn batch<T>(&self) -> Batch<'_, T> {
        Batch {
            deployer: self,
            waiting: HashMap::new(),
            settled: Vec::new(),
            added: 0,
        }
    }
}
