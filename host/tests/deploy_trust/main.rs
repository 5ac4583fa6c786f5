//! The broker as untrusted transport for deploys, with real broker users
//! holding the permissions SECURITY.md gives hosts, deployers and callers:
//! a caller cannot get a deploy-stream message acted on, answered or
//! counted; an old signed deploy put back after the stream lost the newer
//! one cannot roll a restarted host back; replays are not answered and
//! refusals do not repeat what a publisher wrote; one host publishes each
//! keeper copy; a stream that keeps too little is refused.
//!
//! One test binary in several files (each binary links wasmtime):
//! `publishers` (what those who may write into the stream cannot get
//! done), `stream` (the stream itself: keeper copies, retention, deleted or
//! lost) and `support`, what they share (the users' permissions, a flood,
//! the stream by hand).

mod publishers;
mod stream;
mod support;
