//! The test kit of the system tests: what a test needs to run the product
//! as users do, with real brokers, processes, sockets and files, and to
//! check what came out.
//!
//! - [`hub_process`]: a hub as a separate process (configuration writer,
//!   start with a file-descriptor limit, graceful stop, kill -9, health
//!   wait), HTTP helpers and batch envelopes to post; the heavy-test guard.
//! - [`harness`]: a device fleet publisher with a known set of readings,
//!   spikes and malformed messages; a TCP relay that can cut a link; child
//!   processes that die with the test; the archive oracle (every published
//!   reading archived exactly once, spikes flagged).
//!
//! The system tests themselves are this crate's one integration-test binary
//! (`tests/system`); they drive the hub, the agent and the lab's embedded
//! broker together, which is why they live outside those crates.

use std::path::PathBuf;

pub mod harness;
pub mod hub_process;

/// The repository's model `name` (`novelty`, `univariate-forecast`, ...):
/// the test kit's hubs are configured with it explicitly, wherever the
/// target directory is.
pub fn models(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name)
}

/// `HubConfig::for_dir` with the repository's default model.
pub fn hub_config(hub_id: &str, data_dir: &std::path::Path) -> inference_hub::config::HubConfig {
    let mut cfg =
        inference_hub::config::HubConfig::for_dir_with_model(hub_id, data_dir, &models("novelty"));
    // Named, not found from where the test binary runs (a target directory
    // outside the checkout has no models next to it).
    cfg.scoring.records_model_dir = Some(models("state-monitor"));
    cfg
}

/// `target/<profile>/<name>`: a workspace binary next to the test binary's
/// directory, built by `cargo build -p <package>` (`cargo test --workspace`
/// builds it too).
pub fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p {package}` first",
        bin.display()
    );
    bin
}

/// The hub binary (`cargo build -p inference-hub`).
pub fn hub_binary() -> PathBuf {
    workspace_binary("inference-hub", "inference-hub")
}

/// The edge agent binary (`cargo build -p edge-agent`).
pub fn edge_binary() -> PathBuf {
    workspace_binary("edge-agent", "edge-agent")
}
