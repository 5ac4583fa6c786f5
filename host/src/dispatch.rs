//! One request, from body to reply, with no AMQP in sight.
//!
//! The AMQP layer hands over a [`Call`]: the requested procedure name, who
//! is calling (a broker user, or no identity), the body and when its
//! caller stops waiting. The [`Dispatcher`] refuses requests without
//! identity if the host does (`--refuse-anonymous`), picks the
//! procedure, checks that the caller may call it and is within its quotas
//! (the procedure's and the host's), checks the size, waits for a slot,
//! skips the request if its caller has given up by then, runs the sandbox
//! and returns a [`Verdict`]: the [`Reply`] the AMQP layer turns into a
//! message (a refusal over quota possibly held until the caller's turn),
//! or no reply at all. Keeping this apart from the broker keeps every rule
//! about *what* is answered in one small place.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use warren_protocol::{ErrorKind, RpcError};

use crate::callers::{
    AmbiguousNames, Caller, HeldReply, QuotaBook, Refusal, ReplyHolder, may_call,
};
use crate::metrics::Metrics;
use crate::modules::Serving;
use crate::sandbox::Sandbox;

/// One request, as dispatch sees it: no AMQP.
#[derive(Debug)]
pub struct Call {
    /// Its `x-procedure` header: none (the default procedure), a name, or
    /// why the header could not be read.
    pub procedure: Result<Option<String>, String>,
    /// The broker user that published it (`user_id`), if it says.
    pub user_id: Option<String>,
    pub body: Vec<u8>,
    /// When its caller stops waiting (`x-deadline`), if it says.
    pub deadline: Option<SystemTime>,
    /// What identifies it in the logs (its correlation id).
    pub label: String,
}

/// What to send back for one request: the reply's content, before it is a
/// message.
#[derive(Debug)]
pub struct Reply {
    /// The procedure that answered, or the one asked for if none could.
    pub procedure: Option<String>,
    /// Digest of the module that ran, when one did (or would have).
    pub digest: Option<String>,
    /// The reply body, or why there is none.
    pub result: Result<Vec<u8>, RpcError>,
}

/// What dispatch decided for one request.
#[derive(Debug)]
pub enum Verdict {
    /// It ran, or was refused: send this back.
    Reply(Reply),
    /// Refused over quota, the reply held back until the caller's turn to
    /// try again: ack the request now and send this at `held.until`.
    Held(Reply, HeldReply),
    /// It was not started: its caller had stopped waiting (`x-deadline`)
    /// this long before a slot was free. There is no one to answer.
    CallerGone {
        /// The procedure it asked for, or would have run.
        procedure: Option<String>,
        /// How long past the caller's deadline it was.
        late: Duration,
    },
}

/// Routes requests to procedures and runs them.
pub struct Dispatcher {
    serving: Arc<Serving>,
    sandbox: Arc<Sandbox>,
    metrics: Arc<Metrics>,
    /// Each caller's use of this host (`--caller-rate`, `--caller-share`).
    host_quota: Arc<QuotaBook>,
    /// Refusals held until their caller's turn (`--caller-hold`).
    holder: ReplyHolder,
    /// Whether every request without `user_id` is refused
    /// (`--refuse-anonymous`).
    refuse_anonymous: bool,
    /// Broker users named like no identity, warned about once.
    ambiguous: AmbiguousNames,
}

impl Dispatcher {
    /// A dispatcher over `serving` (which knows the default procedure),
    /// counting every request's outcome and duration in `metrics`, each
    /// caller held to `host_quota` across procedures and a refusal held
    /// for at most `hold` until its caller's turn, and every request
    /// without `user_id` refused if `refuse_anonymous`.
    pub fn new(
        serving: Arc<Serving>,
        sandbox: Arc<Sandbox>,
        metrics: Arc<Metrics>,
        host_quota: Arc<QuotaBook>,
        hold: Duration,
        refuse_anonymous: bool,
    ) -> Self {
        let holder = ReplyHolder::new(hold, metrics.refusals_held());
        Dispatcher {
            serving,
            sandbox,
            metrics,
            host_quota,
            holder,
            refuse_anonymous,
            ambiguous: AmbiguousNames::default(),
        }
    }

    /// The metrics requests are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Decides one request: its reply, or none if its caller stops
    /// waiting before it can start.
    pub async fn handle(&self, call: Call) -> Verdict {
        let Call {
            procedure: requested,
            user_id,
            body,
            deadline,
            label,
        } = call;
        let caller = Caller::from_user_id(user_id.as_deref());
        let requested = requested.as_ref().map(Option::as_deref);
        let timer = self.metrics.request_started();
        if let Some(why) = self.ambiguous.first_time(caller) {
            tracing::warn!("{why}");
        }
        let verdict = match requested {
            // Before anything else: such a host tells them nothing more.
            _ if self.refuse_anonymous && caller == Caller::Unidentified => Verdict::Reply(Reply {
                procedure: requested.ok().flatten().map(str::to_owned),
                digest: None,
                result: Err(RpcError::new(
                    ErrorKind::Forbidden,
                    "this host refuses requests without user_id (--refuse-anonymous): set \
                         the request's user_id property to the broker user the caller logs in \
                         as (the broker checks it; Warren's client sets it)",
                )),
            }),
            Ok(requested) => {
                self.choose_and_run(requested, caller, body, &label, deadline)
                    .await
            }
            Err(unreadable) => Verdict::Reply(Reply {
                procedure: None,
                digest: None,
                result: Err(RpcError::new(ErrorKind::NoProcedure, unreadable.clone())),
            }),
        };
        match &verdict {
            Verdict::Reply(reply) | Verdict::Held(reply, _) => {
                let kind = reply.result.as_ref().err().map(|error| error.kind);
                timer.finish(reply.procedure.as_deref(), caller.label(), kind);
            }
            Verdict::CallerGone { procedure, .. } => {
                self.metrics.caller_gone(procedure.as_deref());
            }
        }
        verdict
    }

    async fn choose_and_run(
        &self,
        requested: Option<&str>,
        caller: Caller<'_>,
        body: Vec<u8>,
        label: &str,
        deadline: Option<SystemTime>,
    ) -> Verdict {
        let chosen = match requested {
            Some(name) => self.serving.get(name).ok_or_else(|| {
                if self.serving.is_loading(name) {
                    format!(
                        "procedure {name:?} is being loaded on this host (its module is being \
                         compiled); try again in a few seconds"
                    )
                } else {
                    format!(
                        "no procedure named {name:?} on this host{}",
                        self.serving.describe()
                    )
                }
            }),
            None => self.serving.default_procedure(),
        };
        let procedure = match chosen {
            Ok(procedure) => procedure,
            Err(message) => {
                return Verdict::Reply(Reply {
                    procedure: requested.map(str::to_owned),
                    digest: None,
                    result: Err(RpcError::new(ErrorKind::NoProcedure, message)),
                });
            }
        };
        let content = |result| Reply {
            procedure: Some(procedure.name.clone()),
            digest: Some(procedure.digest.clone()),
            result,
        };
        let reply = |result| Verdict::Reply(content(result));
        let over_quota = |refusal: Refusal| match self.holder.refuse(refusal, deadline) {
            (error, Some(held)) => Verdict::Held(content(Err(error)), held),
            (error, None) => reply(Err(error)),
        };
        let (callers, anonymous) = procedure.callers();
        if !may_call(callers, anonymous, caller) {
            let message = match caller {
                Caller::User(_) => format!(
                    "{caller} may not call procedure {:?}: its manifest's callers do not list \
                     it (a caller is the broker user that published the request; ask the \
                     procedure's owner to add it)",
                    procedure.name
                ),
                Caller::Unidentified => format!(
                    "a request without user_id may not call procedure {:?}: its manifest lets \
                     in only the broker users its callers list, and no name or pattern stands \
                     for no identity; set the request's user_id property to the broker user the \
                     caller logs in as (Warren's client does), or ask the procedure's owner for \
                     callers-anonymous = true",
                    procedure.name
                ),
            };
            return reply(Err(RpcError::new(ErrorKind::Forbidden, message)));
        }
        // Held until the request is answered: what counts against each
        // caller's share of the slots.
        let _procedure_place = match procedure.quota.admit(caller, Some(&procedure.name)) {
            Ok(held) => held,
            Err(refusal) => return over_quota(refusal),
        };
        let _host_place = match self.host_quota.admit(caller, None) {
            Ok(held) => held,
            Err(refusal) => return over_quota(refusal),
        };
        let max_request_bytes = self.sandbox.limits().request();
        if body.len() > max_request_bytes {
            return reply(Err(RpcError::new(
                ErrorKind::RequestTooLarge,
                format!(
                    "the request is {} bytes; this host accepts at most {} (--max-request-bytes)",
                    body.len(),
                    max_request_bytes
                ),
            )));
        }
        let slot = match self.sandbox.slot(&procedure.component).await {
            Ok(slot) => slot,
            Err(error) => return reply(Err(error)),
        };
        if let Some(late) = deadline.and_then(|at| SystemTime::now().duration_since(at).ok()) {
            return Verdict::CallerGone {
                procedure: Some(procedure.name.clone()),
                late,
            };
        }
        reply(
            self.sandbox
                .run_in(slot, &procedure.component, body, label)
                .await,
        )
    }
}
