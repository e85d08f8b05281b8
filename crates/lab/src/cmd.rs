//! One module per `iot-lab` subcommand: its arguments (clap) and what it
//! runs and prints; the work itself is in the `lab` library.

pub(crate) mod bench;
pub(crate) mod bench_delta;
pub(crate) mod bench_hostile;
pub(crate) mod bench_hub;
pub(crate) mod bench_partition;
pub(crate) mod bench_scoring;
pub(crate) mod demo;
pub(crate) mod eval;
pub(crate) mod pki;
pub(crate) mod replay;
pub(crate) mod rescore;
