//! Remote deploys: signed modules arriving on the deploy stream.
//!
//! The contract (stream name, headers, what is signed, the answer) is in
//! `warren_protocol::deploy`. This module decides whether to accept a
//! deploy and applies it: check name, size, digest and signature against
//! the host's [`DeployPolicy`], compile off the async runtime, save it into
//! the modules folder (so a restart serves it too), and only then swap it in
//! (make-before-break, like a file change). A deploy is all or nothing: a
//! refused one is neither served nor stored. Each accepted deploy is also
//! kept ([`versions`]), so that a later deploy can name it instead of
//! carrying it (`warren rollback`).
//!
//! The broker is untrusted transport. Per name, a deploy must carry a
//! higher sequence than the newest one this host accepted (the sequence is
//! signed), so an old signed deploy put back onto the stream cannot roll a
//! procedure back; the very deploy it accepted seen again (a copy a host
//! published to keep it in the stream, see [`keeper`]) changes nothing. The
//! newest accepted deploy is saved with the module ([`record`]) and read
//! back before the stream, so this holds across restarts and however much
//! of the stream was lost. [`stream`] acts only on messages a deploying
//! broker user published (their broker-checked `user_id`), reads the
//! deploys a [`batch::Batch`] at a time, and answers the deployers.
//!
//! # Files
//!
//! Each uses only those above it in this list (no file uses one that uses
//! it):
//! - `policy`: which deploys a host accepts ([`DeployPolicy`]);
//! - [`record`]: the signed record of the newest deploy of a name, kept
//!   beside its module;
//! - [`versions`]: the last versions of each procedure, kept for rollback;
//! - `checks`: a deploy as received and every check before compiling;
//! - `parts`: a deploy published in parts, joined again;
//! - `replay`: the order rule (a replay refused, a copy recognised);
//! - `deployer`: the [`Deployer`], which checks, compiles, keeps, saves and
//!   serves;
//! - `batch`: deploys read together, the newest of each name applied;
//! - `keeper`: keeping each procedure's newest deploy in the stream;
//! - `answers`: a settled deploy's log line and its deployer's answer;
//! - [`stream`]: the deploy stream on the broker, read and kept.

mod answers;
mod batch;
mod checks;
mod deployer;
mod keeper;
mod parts;
mod policy;
pub mod record;
mod replay;
pub mod stream;
pub mod versions;

pub use deployer::{Deployer, default_host_id};
pub use policy::DeployPolicy;
