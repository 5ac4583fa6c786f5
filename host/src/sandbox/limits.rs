//! What one request may use, and the limiter that enforces its memory.

use std::time::Duration;

pub use warren_protocol::values::format_bytes;

/// The limits every request runs under. Defaults match `warren-host --help`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget of one request, wasm code and host calls alike.
    pub timeout: Duration,
    /// Most linear memory one request's instance may grow to, in bytes.
    pub max_memory: u64,
    /// Largest request body the guest will be given, in bytes.
    pub max_request_bytes: usize,
    /// Largest reply body the host will send, in bytes.
    pub max_reply_bytes: usize,
    /// Most guest stdout (and, separately, stderr) kept per request, in bytes.
    pub max_output_bytes: usize,
    /// Requests that run at once.
    pub concurrency: usize,
    /// Instances started ahead, in all, for procedures slow to start (a
    /// Python or JavaScript one); 0 for none. See `sandbox::spare`.
    pub spare_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            max_memory: 64 << 20,
            max_request_bytes: 4 << 20,
            max_reply_bytes: 4 << 20,
            max_output_bytes: 64 << 10,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            spare_instances: 4,
        }
    }
}

/// Caps linear memory and remembers whether the cap was hit, so that the
/// trap a guest raises when its allocation fails (often a plain
/// `unreachable`) is reported as `memory-limit`, not as a generic trap.
pub(super) struct MemoryLimiter {
    max_memory: u64,
    limit_hit: bool,
}

/// Tables hold function references; a guest has no honest need for millions.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    pub(super) fn new(max_memory: u64) -> Self {
        MemoryLimiter {
            max_memory,
            limit_hit: false,
        }
    }

    /// Whether the guest asked for more memory than allowed.
    pub(super) fn limit_hit(&self) -> bool {
        self.limit_hit
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_memory {
            self.limit_hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
