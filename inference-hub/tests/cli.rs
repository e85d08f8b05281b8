//! The `inference-hub` binary as an operator runs it: `validate` names every
//! problem of a configuration by its key and exits 2; a valid one passes;
//! `run` on a configuration it cannot start says why and exits non-zero.
//! (The system tests that run the hub with the agent and brokers are in
//! `crates/testkit`; they use the binary this test builds.)

use std::process::Command;

fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_inference-hub"))
}

#[test]
fn validate_names_each_problem_by_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hub.toml");
    std::fs::write(
        &cfg,
        "hub-id = 'bad id!'\ndata-dir = '/tmp/x'\n[archive]\nzstd-level = 0\n[scoring]\nmodel-dir = '/nonexistent'\n",
    )
    .unwrap();
    let out = hub()
        .args(["--config", cfg.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for key in ["hub-id", "archive.zstd-level", "scoring.model-dir"] {
        assert!(stderr.contains(key), "{key} missing: {stderr}");
    }
}

#[test]
fn a_valid_configuration_passes_and_one_that_cannot_start_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/novelty");
    let cfg = dir.path().join("hub.toml");
    std::fs::write(
        &cfg,
        format!(
            "hub-id = \"a\"\ndata-dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n[scoring]\nmodel-dir = {:?}\n",
            dir.path().join("data"),
            models
        ),
    )
    .unwrap();
    let out = hub()
        .args(["--config", cfg.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The data directory is a file: the hub cannot start and says so.
    std::fs::write(dir.path().join("data"), b"not a directory").unwrap();
    let out = hub()
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("hub failed to start"), "{stderr}");
}

#[test]
fn validate_names_unreadable_and_mismatched_tls_files_and_secrets_without_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (a, b) = (
        rcgen::generate_simple_self_signed(vec!["hub".into()]).unwrap(),
        rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap(),
    );
    let cert = write("hub.pem", &a.cert.pem());
    let wrong_key = write("other.key", &b.signing_key.serialize_pem());
    let cfg = write(
        "hub.toml",
        &format!(
            "hub-id = \"a\"\ndata-dir = {:?}\n\
             [mqtt]\nusername = \"hub\"\npassword-file = {:?}\n[mqtt.tls]\nca-file = {:?}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[http.tls]\ncert-file = {:?}\nkey-file = {:?}\n",
            dir.path().join("data"),
            dir.path().join("no-such-password"),
            dir.path().join("no-such-ca.pem"),
            cert,
            wrong_key,
        ),
    );
    let out = hub()
        .args(["--config", cfg.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("http.tls") && stderr.contains("does not belong"),
        "{stderr}"
    );
    assert!(stderr.contains("no-such-password"), "{stderr}");
    // Fixed password: the CA file is next.
    std::fs::write(dir.path().join("no-such-password"), "pw\n").unwrap();
    let out = hub()
        .args(["--config", cfg.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-ca.pem"), "{stderr}");
    let key_body = b.signing_key.serialize_pem();
    for line in key_body.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stderr.contains(line), "the key leaked into the output");
    }
}
