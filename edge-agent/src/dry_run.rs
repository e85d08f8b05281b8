//! `edge-agent dry-run`: what the configured decoders and rules would do to a
//! recording of gateway messages, without a broker or a hub.
//!
//! Input: JSON Lines, one message per line:
//! `{"topic": "sensors/pump-1/temp", "payload": <any JSON>}` (the payload is
//! re-serialised and decoded as the device's bytes), or
//! `{"topic": ..., "payload_text": "..."}` for raw text, or
//! `{"topic": ..., "payload_hex": "..."}` for binary payloads (Sparkplug B).
//! Messages are processed in file order with the agent's clock at `now` (the
//! time of the run), exactly through [`MessageDecoder`] and [`Filter`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::io::BufRead;

use crate::config::EdgeConfig;
use crate::filter::{DropReason, Filter};
use crate::ingest::MessageDecoder;

/// What a dry run counted.
#[derive(Debug, Default)]
pub struct DryRunReport {
    pub messages: u64,
    pub unreadable_lines: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub decoded_readings: u64,
    pub forwarded_readings: u64,
    /// Per rule: name, kept, dropped by reason, absorbed into windows,
    /// aggregates emitted.
    pub rules: Vec<RuleReport>,
}

#[derive(Debug, Default)]
pub struct RuleReport {
    pub name: String,
    pub kept: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    pub absorbed: u64,
    pub aggregates: u64,
}

pub fn run(cfg: &EdgeConfig, input: impl BufRead) -> std::io::Result<DryRunReport> {
    let mut decoder =
        MessageDecoder::new(&cfg.subscriptions).with_max_message_bytes(cfg.mqtt.max_packet_size);
    let mut filter = Filter::new(cfg.rules.clone());
    let mut report = DryRunReport::default();
    let now = chrono::Utc::now().timestamp_micros();
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Some((topic, payload)) = parse_line(&line) else {
            report.unreadable_lines += 1;
            continue;
        };
        report.messages += 1;
        match decoder.decode(&topic, &payload, now) {
            Ok(mut decoded) => {
                report.decoded_readings += decoded.readings.len() as u64;
                filter.apply(&mut decoded.readings, now);
                report.forwarded_readings += decoded.readings.len() as u64;
            }
            Err(reason) => *report.rejected.entry(reason.as_str()).or_default() += 1,
        }
    }
    // The recording is over: every open downsampling window closes.
    report.forwarded_readings += filter.flush(i64::MAX).len() as u64;
    for (name, counts) in filter.named_counts() {
        let dropped = DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), counts.dropped(*r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        report.rules.push(RuleReport {
            name,
            kept: counts.kept,
            dropped,
            absorbed: counts.absorbed,
            aggregates: counts.aggregates,
        });
    }
    Ok(report)
}

fn parse_line(line: &str) -> Option<(String, Vec<u8>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let topic = v.get("topic")?.as_str()?.to_owned();
    let payload = if let Some(text) = v.get("payload_text") {
        text.as_str()?.as_bytes().to_vec()
    } else if let Some(hex) = v.get("payload_hex") {
        let hex = hex.as_str()?;
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()?
    } else {
        serde_json::to_vec(v.get("payload")?).ok()?
    };
    Some((topic, payload))
}

impl DryRunReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "messages                {:>10}", self.messages);
        if self.unreadable_lines > 0 {
            let _ = writeln!(out, "unreadable input lines  {:>10}", self.unreadable_lines);
        }
        for (reason, n) in &self.rejected {
            let _ = writeln!(out, "  rejected: {reason:<16}{n:>8}");
        }
        let _ = writeln!(out, "readings decoded        {:>10}", self.decoded_readings);
        for rule in &self.rules {
            let _ = writeln!(out, "rule {:<18} kept {:>10}", rule.name, rule.kept);
            for (reason, n) in &rule.dropped {
                let _ = writeln!(out, "  dropped: {reason:<17}{n:>8}");
            }
            if rule.absorbed > 0 {
                let _ = writeln!(
                    out,
                    "  downsampled: {:>8} readings into {} aggregates",
                    rule.absorbed, rule.aggregates
                );
            }
        }
        let _ = writeln!(
            out,
            "readings forwarded      {:>10}",
            self.forwarded_readings
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::RuleConfig;

    #[test]
    fn counts_what_each_rule_keeps_and_drops() {
        let mut cfg = EdgeConfig::for_gateway("dry", 1883);
        cfg.rules = vec![RuleConfig {
            name: "range".into(),
            max: Some(50.0),
            ..RuleConfig::default()
        }];
        let input = concat!(
            "{\"topic\":\"sensors/a/t\",\"payload\":{\"value\":10,\"ts\":1700000000}}\n",
            "{\"topic\":\"sensors/a/t\",\"payload\":{\"value\":99,\"ts\":1700000001}}\n",
            "{\"topic\":\"sensors/a/t\",\"payload_text\":\"{oops\"}\n",
            "not json at all\n",
        );
        let report = run(&cfg, input.as_bytes()).unwrap();
        assert_eq!((report.messages, report.unreadable_lines), (3, 1));
        assert_eq!(report.rejected.get("invalid_json"), Some(&1));
        assert_eq!((report.decoded_readings, report.forwarded_readings), (2, 1));
        assert_eq!(report.rules[0].kept, 1);
        assert_eq!(report.rules[0].dropped.get("above_max"), Some(&1));
        assert!(report.render().contains("dropped: above_max"));
    }

    #[test]
    fn downsampled_windows_are_closed_at_the_end_of_the_recording() {
        let mut cfg = EdgeConfig::for_gateway("dry", 1883);
        cfg.rules = vec![RuleConfig {
            name: "minutely".into(),
            downsample: Some(crate::filter::Downsample {
                window: std::time::Duration::from_secs(60),
                aggregate: crate::filter::Aggregate::Mean,
            }),
            ..RuleConfig::default()
        }];
        let input: String = (0..150)
            .map(|i| {
                format!(
                    "{{\"topic\":\"sensors/a/t\",\"payload\":{{\"value\":{i},\"ts\":{}}}}}\n",
                    1_700_000_080 + i
                )
            })
            .collect();
        let report = run(&cfg, input.as_bytes()).unwrap();
        // 150 seconds starting at :40 touch 4 minute windows.
        assert_eq!(report.forwarded_readings, 4);
        assert_eq!(
            (report.rules[0].absorbed, report.rules[0].aggregates),
            (150, 4)
        );
        assert!(report.render().contains("150 readings into 4 aggregates"));
    }
}
