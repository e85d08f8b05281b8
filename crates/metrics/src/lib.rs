//! The `/metrics` text of the edge agent and the hub.
//!
//! Both keep their counters as atomics updated on the hot paths; at scrape
//! time they list the current values here ([`Samples`]), and
//! `prometheus-client` encodes them: OpenMetrics text, one `HELP` and one
//! `TYPE` per family, label values escaped (rule names come from the
//! operator's configuration), `# EOF` at the end. A counter's family is its
//! name without `_total`; its samples keep the `_total` name.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The media type of [`Samples::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Counter(u64),
    Seconds(f64),
    Gauge(i64),
}

/// One family: its name, help and samples (labels, value).
#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    samples: Vec<(Vec<(String, String)>, Value)>,
}

/// The metrics of one scrape, in the order they are added; samples of one
/// family must be added one after the other.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    families: Vec<Family>,
}

impl Samples {
    /// A counter named `name` (ending in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.labelled_counter(name, help, &[], value)
    }

    /// A counter sample with labels.
    pub fn labelled_counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) -> &mut Self {
        let family = name.strip_suffix("_total").unwrap_or(name);
        self.push(family, help, labels, Value::Counter(value))
    }

    /// A counter of seconds (fractional), with labels.
    pub fn labelled_seconds(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        seconds: f64,
    ) -> &mut Self {
        let family = name.strip_suffix("_total").unwrap_or(name);
        self.push(family, help, labels, Value::Seconds(seconds))
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.push(name, help, &[], Value::Gauge(value))
    }

    fn push(
        &mut self,
        family: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: Value,
    ) -> &mut Self {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self.families.last_mut() {
            Some(f) if f.name == family => f.samples.push((labels, value)),
            _ => self.families.push(Family {
                name: family.to_owned(),
                help: help.to_owned(),
                samples: vec![(labels, value)],
            }),
        }
        self
    }

    /// The OpenMetrics text of these samples.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            let kind = match f.samples.first().map(|(_, v)| *v) {
                Some(Value::Gauge(_)) => MetricType::Gauge,
                _ => MetricType::Counter,
            };
            let mut metric = encoder.encode_descriptor(&f.name, &f.help, None, kind)?;
            for (labels, value) in &f.samples {
                let encode = |e: prometheus_client::encoding::MetricEncoder<'_>| match *value {
                    Value::Counter(v) => ConstCounter::new(v).encode(e),
                    Value::Seconds(v) => ConstCounter::new(v).encode(e),
                    Value::Gauge(v) => ConstGauge::new(v).encode(e),
                };
                if labels.is_empty() {
                    encode(metric.encode_family(&Vec::<(String, String)>::new())?)?;
                } else {
                    encode(metric.encode_family(labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut s = Samples::default();
        s.counter("hub_batches_total", "Batches.", 3)
            .labelled_counter(
                "edge_dropped_total",
                "Dropped.",
                &[("rule", "a\"b\\c\nd")],
                2,
            )
            .labelled_counter("edge_dropped_total", "Dropped.", &[("rule", "x")], 1)
            .labelled_seconds(
                "hub_busy_seconds_total",
                "Busy.",
                &[("stage", "score")],
                1.5,
            )
            .gauge("hub_series", "Series.", 7);
        let text = s.render();
        assert!(text.contains("# TYPE hub_batches counter\n"), "{text}");
        assert!(text.contains("\nhub_batches_total 3\n"), "{text}");
        assert!(
            text.contains("hub_busy_seconds_total{stage=\"score\"} 1.5\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE edge_dropped counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(r#"edge_dropped_total{rule="a\"b\\c\nd"} 2"#),
            "{text}"
        );
        assert!(text.contains("\nhub_series 7\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
