//! One module per `iot-lab` subcommand: its arguments (clap) and what it
//! runs and prints; the work itself is in the `lab` library.

pub(crate) mod bench;
pub(crate) mod bench_archive_query;
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

/// The hub configuration at `path` (with the hub's environment overrides).
pub(crate) fn hub_config(
    path: &std::path::Path,
) -> anyhow::Result<inference_hub::config::HubConfig> {
    schemas::settings::load::<inference_hub::config::HubConfig>(
        Some(path),
        inference_hub::config::ENV_PREFIX,
        std::env::vars(),
    )
    .map_err(|problems| anyhow::anyhow!("{}: {problems}", path.display()))
}

/// The archive the hub configuration at `path` names (its bucket with
/// `[archive.s3]`), as the hub's API reads it.
pub(crate) fn configured_archive(
    path: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<inference_hub::archive::reader::ArchiveReader>> {
    let config = hub_config(path)?;
    Ok(inference_hub::archive::reader::ArchiveReader::open(
        &config.archive_root(),
        config.archive.s3.as_ref(),
    )?)
}
