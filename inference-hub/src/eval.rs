//! Detection quality on labelled recordings.
//!
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring rules (windows,
//!   probation, sigmoid weighting, per-profile threshold optimisation,
//!   normalisation).

pub mod nab;
