//! The deploy stream on the broker: read deploys, apply them through the
//! [`crate::deploy::deployer::Deployer`], answer each deployer.
//!
//! A host reads the stream in two phases on every connection:
//! - **catching up**: it appends a sync marker and applies everything
//!   before the marker as one batch, before it takes any request, so a
//!   request never meets a host that has not yet applied a deploy it could
//!   know about. Per name, only the newest good deploy of the batch is
//!   compiled.
//! - **following**: it applies deploys as they come, a burst at a time.
//!
//! Every message is acked as soon as it is read (on a stream an ack only
//! asks for more), and a batch holds at most one module per name
//! ([`crate::deploy::batch::Batch`]), so a history of any length is read in
//! bounded memory. While following, it also keeps the newest deploy of each
//! procedure in the stream ([`crate::deploy::keeper`]), publishing it again
//! before the stream's retention would drop it.
//!
//! It remembers the offset it has read up to ([`StreamState`]), so after a
//! reconnect it resumes there instead of replaying the whole history again.
//!
//! # Files
//!
//! Each uses only those above it in this list:
//! - `message`: one message read, what it is and what it costs;
//! - `state`: what a host knows of the stream across connections (the
//!   offset it has read up to, the keeper's counts);
//! - `retention`: whether a stream that already exists keeps enough;
//! - `connection`: the stream opened on one connection, and publishing to
//!   it;
//! - `take`: one message taken off the stream into a batch;
//! - `settle`: a settled batch logged, answered and counted;
//! - `republish`: deploys the stream would drop, claimed and published
//!   again;
//! - `catch_up` and `follow`: the two phases.

mod catch_up;
mod connection;
mod follow;
mod message;
mod republish;
mod retention;
mod settle;
mod state;
mod take;

pub use connection::DeployStream;
pub use republish::REPUBLISH_JITTER;
pub use retention::RetentionRefused;
pub use state::StreamState;
