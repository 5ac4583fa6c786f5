//! The whole path over the real broker: client → queue → host → fib
//! component → reply, including every error reply and hot swapping.
//!
//! One test binary in several files (each binary links wasmtime):
//! `replies` (calls through the client and what they get back), `wire`
//! (requests and queues by hand over AMQP: the wire contract) and `swaps`
//! (modules replaced, broken or removed under a running host).

mod replies;
mod swaps;
mod wire;
