//! Who may call what, against the real broker with real users
//! (`rabbitmqctl add_user`, removed afterwards): the broker refuses a
//! forged `user_id`; a manifest's `callers` refuses everyone else with
//! `forbidden`; quotas answer `rate-limited` with when to retry, per
//! caller; a request without a `user_id` (the seed's client) has no
//! identity, which no `callers` pattern matches: it is served where there
//! are no `callers` or the manifest says `callers-anonymous = true`,
//! refused everywhere by `--refuse-anonymous`, and counted apart from
//! every user (a user really named `anonymous` included).
//!
//! One test binary in several files (each binary links wasmtime):
//! `identity` (the broker's check of `user_id`, `callers`), `quotas`
//! (`--caller-rate`, held refusals, `--caller-share`), `anonymous`
//! (requests without `user_id`), and `support`, what they share.

mod anonymous;
mod identity;
mod quotas;
mod support;
