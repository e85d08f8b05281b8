//! Declarative pre-filtering: which readings the agent forwards.
//!
//! Rules come from the `[[rules]]` tables of the configuration. A reading is
//! governed by the **first** rule whose `device` and `metric` patterns match
//! it (`*` matches any run of characters, `?` one character; an absent
//! pattern matches everything); a reading no rule matches is forwarded as is.
//! Within a rule the checks run in this fixed order, and the first that drops
//! the reading decides the reason:
//!
//! 1. **validation**: `min` / `max` range, and timestamp sanity
//!    (`max-future`, `max-past` relative to the agent's clock);
//! 2. **duplicates** (`dedup = true`): the same device, metric and timestamp
//!    as one of the series' recent readings;
//! 3. **rate limit** (`rate-limit`, readings per second per device, all its
//!    metrics together; a token bucket with one second of burst);
//! 4. **deadband** (`deadband`): forwarded only if it differs from the last
//!    forwarded value by more than the deadband, or if `max-silence` has
//!    passed since the last forwarded reading (the heartbeat);
//!    **or downsampling** (`downsample = { window = "10s", aggregate =
//!    "mean" }`): tumbling windows aligned on event time (`floor(ts /
//!    window)`), one reading per series and window, stamped with the window's
//!    start, whose value is the `mean`, `min`, `max`, `last` (latest
//!    timestamp) or `count` of what the window absorbed. A window closes when
//!    its series sends a reading of a later window, or by the clock
//!    ([`Filter::flush`]) two window lengths after it opened; a reading for a
//!    window that already closed is dropped as `late`.
//!
//! Every drop is counted per rule and reason (`edge_filter_dropped_total`),
//! absorbed readings and emitted aggregates too. A message whose readings are
//! all dropped or absorbed is acknowledged at once: dropping is a decision,
//! not a failure. An aggregate travels with the message that closed its
//! window (or on its own when the clock closed it). The one thing a crash of
//! the agent loses by design is the open windows: readings absorbed into them
//! were acknowledged (holding their messages for a whole window would stall
//! the broker's in-flight window), so use downsampling where a partial window
//! after a power cut is acceptable. State is per series and bounded (see
//! `MAX_SERIES`); the series seen least recently is forgotten first, its open
//! window emitted.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use schemas::Reading;
use schemas::settings::ConfigProblem;

/// Series whose filter state is kept at most.
pub const MAX_SERIES: usize = 100_000;
/// Recent timestamps remembered per series for duplicate suppression.
const DEDUP_MEMORY: usize = 64;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct RuleConfig {
    /// Name used in metrics and the dry-run report.
    pub name: String,
    pub device: Option<String>,
    pub metric: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    #[serde(with = "schemas::settings::opt_duration")]
    pub max_future: Option<Duration>,
    #[serde(with = "schemas::settings::opt_duration")]
    pub max_past: Option<Duration>,
    pub dedup: bool,
    /// Readings per second per device (all its metrics together).
    pub rate_limit: Option<f64>,
    pub deadband: Option<f64>,
    #[serde(with = "schemas::settings::opt_duration")]
    pub max_silence: Option<Duration>,
    pub downsample: Option<Downsample>,
}

/// A tumbling downsampling window.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Downsample {
    #[serde(with = "schemas::settings::duration")]
    pub window: Duration,
    pub aggregate: Aggregate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregate {
    Mean,
    Min,
    Max,
    Last,
    Count,
}

/// An open window of one series.
#[derive(Debug, Clone, Copy)]
struct OpenWindow {
    start_us: i64,
    opened_wall_us: i64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: (i64, f64),
}

impl OpenWindow {
    fn new(start_us: i64, r: &Reading, now_us: i64) -> Self {
        Self {
            start_us,
            opened_wall_us: now_us,
            count: 1,
            sum: r.value,
            min: r.value,
            max: r.value,
            last: (r.ts_us, r.value),
        }
    }

    fn add(&mut self, r: &Reading) {
        self.count += 1;
        self.sum += r.value;
        self.min = self.min.min(r.value);
        self.max = self.max.max(r.value);
        if r.ts_us >= self.last.0 {
            self.last = (r.ts_us, r.value);
        }
    }

    fn value(&self, aggregate: Aggregate) -> f64 {
        match aggregate {
            Aggregate::Mean => self.sum / self.count as f64,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Last => self.last.1,
            Aggregate::Count => self.count as f64,
        }
    }
}

/// Why a reading was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    BelowMin,
    AboveMax,
    FutureTimestamp,
    StaleTimestamp,
    Duplicate,
    RateLimited,
    WithinDeadband,
    /// For a downsampling window that already closed.
    Late,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::BelowMin,
        DropReason::AboveMax,
        DropReason::FutureTimestamp,
        DropReason::StaleTimestamp,
        DropReason::Duplicate,
        DropReason::RateLimited,
        DropReason::WithinDeadband,
        DropReason::Late,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BelowMin => "below_min",
            DropReason::AboveMax => "above_max",
            DropReason::FutureTimestamp => "future_timestamp",
            DropReason::StaleTimestamp => "stale_timestamp",
            DropReason::Duplicate => "duplicate",
            DropReason::RateLimited => "rate_limited",
            DropReason::WithinDeadband => "within_deadband",
            DropReason::Late => "late",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("listed")
    }

    /// Validation failures are the device's fault (dead-letter material);
    /// the others are the operator's policy.
    pub fn is_invalid(self) -> bool {
        matches!(
            self,
            DropReason::BelowMin
                | DropReason::AboveMax
                | DropReason::FutureTimestamp
                | DropReason::StaleTimestamp
        )
    }
}

/// Forgets the least recently used entry (bounded state).
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    touched: impl Fn(&V) -> u64,
) -> Option<(K, V)> {
    let key = map
        .iter()
        .min_by_key(|(_, v)| touched(v))
        .map(|(k, _)| k.clone())?;
    map.remove_entry(&key)
}

/// `*` and `?` glob match.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

pub fn validate_rules(rules: &[RuleConfig], problems: &mut Vec<ConfigProblem>) {
    for (i, r) in rules.iter().enumerate() {
        let at = |k: &str| format!("rules[{i}].{k}");
        if r.name.is_empty() {
            problems.push(ConfigProblem::new(
                at("name"),
                "every rule needs a name (it labels the metrics)",
            ));
        }
        if rules[..i].iter().any(|o| o.name == r.name) && !r.name.is_empty() {
            problems.push(ConfigProblem::new(at("name"), "rule names must be unique"));
        }
        if let (Some(lo), Some(hi)) = (r.min, r.max)
            && lo > hi
        {
            problems.push(ConfigProblem::new(at("min"), "min is greater than max"));
        }
        for (key, v) in [
            ("min", r.min),
            ("max", r.max),
            ("deadband", r.deadband),
            ("rate-limit", r.rate_limit),
        ] {
            if v.is_some_and(|x| !x.is_finite()) {
                problems.push(ConfigProblem::new(at(key), "must be a finite number"));
            }
        }
        if r.deadband.is_some_and(|d| d < 0.0) {
            problems.push(ConfigProblem::new(at("deadband"), "must not be negative"));
        }
        if r.rate_limit.is_some_and(|x| x <= 0.0) {
            problems.push(ConfigProblem::new(at("rate-limit"), "must be positive"));
        }
        if let Some(d) = &r.downsample {
            if r.deadband.is_some() {
                problems.push(ConfigProblem::new(
                    at("downsample"),
                    "cannot be combined with a deadband in one rule",
                ));
            }
            if d.window < Duration::from_millis(1) || d.window > Duration::from_secs(24 * 3600) {
                problems.push(ConfigProblem::new(
                    at("downsample.window"),
                    "must be 1ms..=24h",
                ));
            }
        }
        if r.max_silence.is_some() && r.deadband.is_none() {
            problems.push(ConfigProblem::new(
                at("max-silence"),
                "only applies together with a deadband",
            ));
        }
    }
}

#[derive(Debug, Default)]
struct SeriesState {
    recent_ts: VecDeque<i64>,
    last_sent: Option<(f64, i64)>,
    window: Option<OpenWindow>,
    /// The unit of the series' newest reading (carried by its aggregates).
    unit: Option<std::sync::Arc<str>>,
    /// Start of the newest window that closed.
    last_closed_us: Option<i64>,
    last_touch: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last_refill_us: i64,
    last_touch: u64,
}

/// Counters of one rule: kept, and dropped per reason.
#[derive(Debug, Default, Clone)]
pub struct RuleCounts {
    pub kept: u64,
    pub dropped: [u64; DropReason::ALL.len()],
    /// Readings absorbed into downsampling windows.
    pub absorbed: u64,
    /// Aggregates emitted by closed windows.
    pub aggregates: u64,
}

impl RuleCounts {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }
}

/// The rules plus their per-series state.
#[derive(Debug, Default)]
pub struct Filter {
    rules: Vec<RuleConfig>,
    series: HashMap<(usize, String, String), SeriesState>,
    buckets: HashMap<(usize, String), Bucket>,
    counts: Vec<RuleCounts>,
    clock: u64,
    /// Aggregates of windows closed during the current call.
    emitted: Vec<Reading>,
}

/// What a rule decided about one reading.
enum Verdict {
    Keep,
    Drop(DropReason),
    Absorbed,
}

impl Filter {
    pub fn new(rules: Vec<RuleConfig>) -> Self {
        let counts = vec![RuleCounts::default(); rules.len()];
        Self {
            rules,
            series: HashMap::new(),
            buckets: HashMap::new(),
            counts,
            clock: 0,
            emitted: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[RuleConfig] {
        &self.rules
    }

    pub fn counts(&self) -> &[RuleCounts] {
        &self.counts
    }

    /// Keeps the readings that pass, and appends the aggregates of the
    /// downsampling windows they closed; returns the drops as (rule, reason).
    pub fn apply(&mut self, readings: &mut Vec<Reading>, now_us: i64) -> Vec<(usize, DropReason)> {
        let mut drops = Vec::new();
        if self.rules.is_empty() {
            return drops;
        }
        readings.retain(|r| match self.check(r, now_us) {
            None => true,
            Some(drop) => {
                if let Some(drop) = drop {
                    drops.push(drop);
                }
                false
            }
        });
        readings.append(&mut self.emitted);
        drops
    }

    /// Closes downsampling windows opened two window lengths ago or more
    /// (by the agent's clock) and returns their aggregates; `now_us =
    /// i64::MAX` closes every window (the end of a dry run).
    pub fn flush(&mut self, now_us: i64) -> Vec<Reading> {
        let rules = &self.rules;
        let counts = &mut self.counts;
        let mut out = Vec::new();
        for ((idx, device, metric), state) in self.series.iter_mut() {
            let Some(ds) = rules[*idx].downsample else {
                continue;
            };
            let window_us = ds.window.as_micros() as i64;
            if let Some(w) = state.window
                && now_us.saturating_sub(w.opened_wall_us) >= 2 * window_us
            {
                state.window = None;
                state.last_closed_us = Some(w.start_us);
                counts[*idx].aggregates += 1;
                out.push(Reading {
                    device: device.clone(),
                    metric: metric.clone(),
                    ts_us: w.start_us,
                    value: w.value(ds.aggregate),
                    unit: state.unit.clone(),
                });
            }
        }
        out
    }

    /// Whether any rule downsamples (the caller then calls [`Filter::flush`]
    /// on a timer).
    pub fn downsamples(&self) -> bool {
        self.rules.iter().any(|r| r.downsample.is_some())
    }

    /// `None`: keep; `Some(None)`: absorbed; `Some(Some(drop))`: dropped.
    #[allow(clippy::option_option)]
    fn check(&mut self, r: &Reading, now_us: i64) -> Option<Option<(usize, DropReason)>> {
        let idx = self.rules.iter().position(|rule| {
            rule.device
                .as_deref()
                .is_none_or(|p| glob_match(p, &r.device))
                && rule
                    .metric
                    .as_deref()
                    .is_none_or(|p| glob_match(p, &r.metric))
        })?;
        match self.verdict(idx, r, now_us) {
            Verdict::Keep => {
                self.counts[idx].kept += 1;
                None
            }
            Verdict::Drop(reason) => {
                self.counts[idx].dropped[reason.index()] += 1;
                Some(Some((idx, reason)))
            }
            Verdict::Absorbed => {
                self.counts[idx].absorbed += 1;
                Some(None)
            }
        }
    }

    fn verdict(&mut self, idx: usize, r: &Reading, now_us: i64) -> Verdict {
        let rule = &self.rules[idx];
        if rule.min.is_some_and(|lo| r.value < lo) {
            return Verdict::Drop(DropReason::BelowMin);
        }
        if rule.max.is_some_and(|hi| r.value > hi) {
            return Verdict::Drop(DropReason::AboveMax);
        }
        if rule
            .max_future
            .is_some_and(|d| r.ts_us > now_us.saturating_add(d.as_micros() as i64))
        {
            return Verdict::Drop(DropReason::FutureTimestamp);
        }
        if rule
            .max_past
            .is_some_and(|d| r.ts_us < now_us.saturating_sub(d.as_micros() as i64))
        {
            return Verdict::Drop(DropReason::StaleTimestamp);
        }
        let (dedup, rate, deadband, silence, downsample) = (
            rule.dedup,
            rule.rate_limit,
            rule.deadband,
            rule.max_silence,
            rule.downsample,
        );
        if !dedup && rate.is_none() && deadband.is_none() && downsample.is_none() {
            return Verdict::Keep;
        }
        self.clock += 1;
        let clock = self.clock;
        let series_key = (idx, r.device.clone(), r.metric.clone());
        let stateful = dedup || deadband.is_some() || downsample.is_some();
        if stateful
            && self.series.len() >= MAX_SERIES
            && !self.series.contains_key(&series_key)
            && let Some(((old_idx, device, metric), old)) =
                evict_oldest(&mut self.series, |s| s.last_touch)
            && let (Some(w), Some(ds)) = (old.window, self.rules[old_idx].downsample)
        {
            // The forgotten series' open window is emitted, not lost.
            self.counts[old_idx].aggregates += 1;
            self.emitted.push(Reading {
                device,
                metric,
                ts_us: w.start_us,
                value: w.value(ds.aggregate),
                unit: old.unit,
            });
        }
        let mut state = stateful.then(|| {
            let state = self.series.entry(series_key).or_default();
            state.last_touch = clock;
            if r.unit.is_some() {
                state.unit.clone_from(&r.unit);
            }
            state
        });
        // 2. duplicates
        if dedup && let Some(state) = state.as_deref_mut() {
            if state.recent_ts.contains(&r.ts_us) {
                return Verdict::Drop(DropReason::Duplicate);
            }
            if state.recent_ts.len() == DEDUP_MEMORY {
                state.recent_ts.pop_front();
            }
            state.recent_ts.push_back(r.ts_us);
        }
        // 3. rate limit (a token is spent only if the reading is forwarded)
        let mut bucket = None;
        if let Some(per_second) = rate {
            let device_key = (idx, r.device.clone());
            if self.buckets.len() >= MAX_SERIES && !self.buckets.contains_key(&device_key) {
                evict_oldest(&mut self.buckets, |b| b.last_touch);
            }
            let b = self.buckets.entry(device_key).or_insert(Bucket {
                tokens: per_second.max(1.0),
                last_refill_us: now_us,
                last_touch: clock,
            });
            b.last_touch = clock;
            let elapsed = (now_us - b.last_refill_us).max(0) as f64 / 1e6;
            b.tokens = (b.tokens + elapsed * per_second).min(per_second.max(1.0));
            b.last_refill_us = now_us;
            if b.tokens < 1.0 {
                return Verdict::Drop(DropReason::RateLimited);
            }
            bucket = Some(b);
        }
        // 4. deadband with heartbeat, or downsampling
        if let (Some(band), Some(state)) = (deadband, state.as_deref_mut()) {
            if let Some((last_value, last_ts)) = state.last_sent {
                let heartbeat_due = silence
                    .is_some_and(|s| r.ts_us.saturating_sub(last_ts) >= s.as_micros() as i64);
                if (r.value - last_value).abs() <= band && !heartbeat_due {
                    return Verdict::Drop(DropReason::WithinDeadband);
                }
            }
            state.last_sent = Some((r.value, r.ts_us));
        }
        if let (Some(ds), Some(state)) = (downsample, state) {
            let window_us = ds.window.as_micros() as i64;
            let start_us = r.ts_us.div_euclid(window_us) * window_us;
            match &mut state.window {
                Some(w) if w.start_us == start_us => w.add(r),
                Some(w) if w.start_us < start_us => {
                    let closed = *w;
                    self.emitted.push(Reading {
                        device: r.device.clone(),
                        metric: r.metric.clone(),
                        ts_us: closed.start_us,
                        value: closed.value(ds.aggregate),
                        unit: state.unit.clone(),
                    });
                    self.counts[idx].aggregates += 1;
                    state.last_closed_us = Some(closed.start_us);
                    *w = OpenWindow::new(start_us, r, now_us);
                }
                Some(_) => return Verdict::Drop(DropReason::Late),
                None if state.last_closed_us.is_some_and(|c| start_us <= c) => {
                    return Verdict::Drop(DropReason::Late);
                }
                None => state.window = Some(OpenWindow::new(start_us, r, now_us)),
            }
            if let Some(b) = bucket {
                b.tokens -= 1.0;
            }
            return Verdict::Absorbed;
        }
        if let Some(b) = bucket {
            b.tokens -= 1.0;
        }
        Verdict::Keep
    }

    /// (rule name, counters) of every rule, for the stats.
    pub fn named_counts(&self) -> Vec<(String, RuleCounts)> {
        self.rules
            .iter()
            .map(|r| r.name.clone())
            .zip(self.counts.iter().cloned())
            .collect()
    }
}

/// The per-rule counters, labelled by rule (names from the configuration:
/// `iot_metrics` escapes them).
pub fn add_metrics(counts: &[(String, RuleCounts)], samples: &mut iot_metrics::Samples) {
    for (name, c) in counts {
        samples.labelled_counter(
            "edge_filter_kept_total",
            "Readings a rule forwarded.",
            &[("rule", name)],
            c.kept,
        );
    }
    for (name, c) in counts {
        samples.labelled_counter(
            "edge_filter_downsampled_total",
            "Readings absorbed into downsampling windows.",
            &[("rule", name)],
            c.absorbed,
        );
    }
    for (name, c) in counts {
        samples.labelled_counter(
            "edge_filter_aggregates_total",
            "Aggregates emitted by closed downsampling windows.",
            &[("rule", name)],
            c.aggregates,
        );
    }
    for (name, c) in counts {
        for reason in DropReason::ALL {
            samples.labelled_counter(
                "edge_filter_dropped_total",
                "Readings a rule dropped, by reason.",
                &[("rule", name), ("reason", reason.as_str())],
                c.dropped(reason),
            );
        }
    }
}

#[cfg(test)]
mod tests;
