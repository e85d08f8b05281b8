//! The binaries as installed, not as built: copied out of the checkout
//! (into `<prefix>/bin`, the models into `<prefix>/share/inference-hub/
//! models`), run from elsewhere, they find their models from where they run,
//! never from the machine they were built on; without the models beside
//! them they say which key to set.
//!
//! Run by `.ci/run` (`cargo test -p iot-testkit --test system -- --ignored
//! installed`; needs `cargo build -p inference-hub -p lab`).

use std::path::Path;
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `<prefix>/bin/{inference-hub,iot-lab}`, and the models when asked.
fn install(prefix: &Path, with_models: bool) {
    let bin = prefix.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (name, package) in [("inference-hub", "inference-hub"), ("iot-lab", "lab")] {
        std::fs::copy(iot_testkit::workspace_binary(name, package), bin.join(name)).unwrap();
    }
    if with_models {
        copy_dir(
            &iot_testkit::models("novelty").join(".."),
            &prefix.join("share/inference-hub/models"),
        );
    }
}

#[test]
#[ignore = "needs the hub and lab binaries (cargo build -p inference-hub -p lab); run by .ci/run"]
fn installed_binaries_find_their_models_and_the_demo_runs_from_a_copy() {
    let root = tempfile::tempdir().unwrap();
    let prefix = root.path().join("opt");
    install(&prefix, true);
    // Run from a directory that is neither the checkout nor the prefix.
    let cwd = root.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    let hub_toml = cwd.join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "hub-id = \"installed\"\ndata-dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n",
            cwd.join("data").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(prefix.join("bin/inference-hub"))
        .args(["--config", hub_toml.to_str().unwrap(), "validate"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate without scoring.model-dir: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let demo = Command::new(prefix.join("bin/iot-lab"))
        .args([
            "demo",
            "--duration",
            "8s",
            "--rate",
            "20",
            "--data-dir",
            cwd.join("demo").to_str().unwrap(),
            "--datasets",
            cwd.join("no-datasets").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&demo.stdout),
        String::from_utf8_lossy(&demo.stderr)
    );
    assert!(demo.status.success(), "the demo from a copy: {said}");
    let archived = iot_testkit::harness::read_archive(&cwd.join("demo/hub/archive"));
    assert!(
        archived.len() > 100,
        "{} readings archived: {said}",
        archived.len()
    );

    // The same binaries without their models: the hub does not fall back
    // to the checkout it was built in; it names the key to set.
    let bare = root.path().join("bare");
    install(&bare, false);
    let out = Command::new(bare.join("bin/inference-hub"))
        .args(["--config", hub_toml.to_str().unwrap(), "validate"])
        .current_dir(&cwd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("scoring.model-dir"), "{stderr}");
}
