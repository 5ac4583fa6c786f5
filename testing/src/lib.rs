//! What Warren's end-to-end tests share, once: hosts started in process or
//! as processes on queues of their own, the components they serve, calls
//! as tests make them, and helpers for the real broker the tests talk to
//! (never a mock of it).
//!
//! Every host gets a queue named with a fresh uuid and a temporary modules
//! folder, so tests run in parallel and leftovers from earlier runs cannot
//! interfere. The tests themselves live with what they test: the host's
//! behaviour in `host/tests/`, the command line's and the library's in
//! `client/tests/`; `testing/README.md` says which file covers what.

pub mod broker;
pub mod calls;
pub mod deploys;
pub mod fixtures;
pub mod host;
pub mod http;
pub mod users;

pub use broker::*;
pub use calls::*;
pub use deploys::*;
pub use fixtures::*;
pub use host::*;
pub use http::*;
pub use users::*;
pub use warren_host::HostConfig;
