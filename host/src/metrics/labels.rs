//! The label sets of the metrics that have labels, and the bound on how
//! many callers get a label of their own.

use prometheus_client::encoding::EncodeLabelSet;

/// Labels of `warren_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    /// The procedure that answered, or the one asked for when none did.
    pub(super) procedure: String,
    /// `ok` or `error`.
    pub(super) status: &'static str,
    /// The error kind, empty on success.
    pub(super) kind: &'static str,
}

/// Labels of `warren_caller_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CallerLabels {
    /// The caller (broker user), one of the first [`MAX_CALLER_LABELS`]
    /// seen, or `other`.
    pub(super) caller: String,
    /// `ok`, `error` (the procedure or the host failed it), `forbidden`
    /// or `rate-limited`.
    pub(super) outcome: &'static str,
}

/// How many callers get a label of their own in the per-caller metrics;
/// the rest are counted as `other`, so a host called by many users keeps a
/// bounded number of series.
pub const MAX_CALLER_LABELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProcedureLabels {
    pub(super) procedure: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProcedureInfoLabels {
    pub(super) procedure: String,
    pub(super) digest: String,
}

/// Labels of `warren_http_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HttpRefusedLabels {
    /// `not-allowed`, `userinfo`, `forbidden-address`, `too-many-calls` or
    /// `too-many-bytes` (`sandbox::http::refusal::Refusal`).
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DeployLabels {
    /// `accepted` or `refused`.
    pub(super) result: &'static str,
}
