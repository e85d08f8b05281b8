//! The hub crate's one integration-test binary: end-to-end runs of the whole
//! pipeline on real brokers, real sockets and real files.

mod crash;
mod e2e;
mod edge_faults;
mod guarantees;
mod harness;
mod hostile;
mod hub_process;
mod mosquitto;
mod s3;
