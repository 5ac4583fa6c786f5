//! The limiter that enforces a request's memory limit. What one request
//! may use is [`Limits`], warren-protocol's one type for the host's flags,
//! manifests and the sandbox, re-exported here because the sandbox runs
//! requests under it.

pub use warren_protocol::limits::Limits;
pub use warren_protocol::values::format_bytes;

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
