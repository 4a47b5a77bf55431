//! `/metrics` in Prometheus' text format (0.0.4): the process-wide counters plus whatever the
//! sources registered at start-up report when scraped (disk use, gossip, Raft, rsync, the limits'
//! tables). A subsystem exports its state by implementing [`MetricSource`]; this module never
//! imports one.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Exposition::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Something with state worth exporting, read at every scrape.
pub trait MetricSource: Send + Sync + 'static {
    fn collect(&self, samples: &mut Samples<'_>) -> fmt::Result;
}

impl<T: MetricSource> MetricSource for std::sync::Arc<T> {
    fn collect(&self, samples: &mut Samples<'_>) -> fmt::Result {
        self.as_ref().collect(samples)
    }
}

/// Writes the samples of one scrape. Names are the exported ones without a counter's `_total`,
/// which the format adds.
pub struct Samples<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Samples<'_> {
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> fmt::Result {
        let gauge = ConstGauge::new(value);
        gauge.encode(self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let counter = ConstCounter::new(value);
        counter.encode(self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
    }

    /// A gauge with one label: a sample per `(label value, value)`.
    pub fn gauges(&mut self, name: &str, help: &str, label: &str, values: &[(&str, i64)]) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (label_value, value) in values {
            ConstGauge::new(*value).encode(family.encode_family(&[(label, *label_value)])?)?;
        }
        Ok(())
    }

    /// A counter with one label: a sample per `(label value, value)`.
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (label_value, value) in values {
            ConstCounter::new(*value).encode(family.encode_family(&[(label, *label_value)])?)?;
        }
        Ok(())
    }
}

/// Adapts a [`MetricSource`] to `prometheus-client`'s collector.
struct SourceCollector(Box<dyn MetricSource>);

impl fmt::Debug for SourceCollector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        self.0.collect(&mut Samples { encoder })
    }
}

/// Every metric of one node; built once at start-up, rendered at each scrape.
pub struct Exposition {
    registry: Registry,
}

impl Default for Exposition {
    fn default() -> Self {
        Exposition::new()
    }
}

impl Exposition {
    /// An exposition of the process-wide counters.
    pub fn new() -> Exposition {
        let mut registry = Registry::default();
        super::metrics().register(&mut registry);
        Exposition { registry }
    }

    /// Adds a source read at every scrape.
    pub fn add_source(&mut self, source: impl MetricSource) {
        self.registry.register_collector(Box::new(SourceCollector(Box::new(source))));
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; a source that fails ends the text early.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl MetricSource for Fixed {
        fn collect(&self, samples: &mut Samples<'_>) -> fmt::Result {
            samples.gauge("hfm_x", "A gauge", 3)?;
            samples.counters("hfm_y", "A counter", "route", &[("a\"b\\c", 2)])
        }
    }

    #[test]
    fn sources_are_read_at_render_and_labels_are_escaped() {
        let mut exposition = Exposition::new();
        exposition.add_source(Fixed);
        let text = exposition.render();
        assert!(text.lines().any(|line| line == "hfm_x 3"), "{text}");
        assert!(text.lines().any(|line| line == "hfm_y_total{route=\"a\\\"b\\\\c\"} 2"), "{text}");
        assert!(text.lines().any(|line| line.starts_with("hfm_evictions_total ")), "the process-wide counters are in: {text}");
    }
}
