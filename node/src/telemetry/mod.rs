//! Telemetry primitives: the process-wide counters deep layers bump ([`metrics`]), the answer
//! counters behind `X-Cache` hit ratios ([`answers`]), and the exposition that renders `/metrics` by
//! pulling from the sources registered at start-up ([`exposition`]).
//!
//! Nothing here imports a layer above: a subsystem that has state worth exporting implements
//! [`MetricSource`] and the composition root registers it.

pub mod answers;
pub mod daily;
pub mod exposition;
pub mod metrics;

pub use answers::{AnswerCounters, AnswerMetric};
pub use exposition::{Exposition, MetricSource, Samples};
pub use metrics::{ByteSource, Reroute, metrics};
