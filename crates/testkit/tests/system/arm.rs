//! The gateways' builds run, not just start: the aarch64 (static, musl) and
//! armv7 (static, gnueabihf) agents, built with the `gateway` profile, run
//! under qemu-user with no ARM library, take readings from Mosquitto on
//! loopback, spool them and forward them to a native hub; the archive holds
//! every reading once. Both reach the broker by name (`localhost`), which a
//! static binary must resolve without the build machine's libraries.
//!
//! Run by `.ci/run` after the cross builds (`cargo test -p iot-testkit
//! --test system -- --ignored arm_`).

use std::path::PathBuf;
use std::time::Duration;

use crate::edge_faults::{mosquitto_binary, wait_port, write_mosquitto_config};
use crate::harness::{Process, assert_archive_matches, publish_fleet, read_archive};

/// `target/<triple>/gateway/edge-agent`, beside this test's target directory.
fn cross_agent(triple: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    let bin = target.join(triple).join("gateway/edge-agent");
    assert!(
        bin.is_file(),
        "{} is missing: cargo build --profile gateway -p edge-agent --target {triple}",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cross-built agents, qemu-user and Mosquitto; run by .ci/run"]
async fn arm_agents_under_qemu_forward_every_reading_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = lab::broker::free_port();
    let conf = write_mosquitto_config(&dir.path().join("broker"), port);
    let _broker = Process::spawn(
        &mosquitto_binary(),
        &["-c", conf.to_str().unwrap()],
        &dir.path().join("mosquitto.log"),
    );
    wait_port(port).await;
    let http = format!("127.0.0.1:{}", lab::broker::free_port());
    let hub_toml = dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "hub-id = \"arm\"\ndata-dir = {:?}\n[mqtt]\nport = {port}\n[http]\nlisten = \"{http}\"\n\
             [scoring]\nmodel-dir = {:?}\nwarmup-readings = 50\n[archive]\nmax-file-age = \"1s\"\n",
            dir.path().join("hub").display().to_string(),
            iot_testkit::models("novelty"),
        ),
    )
    .unwrap();
    let hub = Process::spawn(
        &iot_testkit::hub_binary(),
        &["--config", hub_toml.to_str().unwrap(), "run"],
        &dir.path().join("hub.log"),
    );
    let client = iot_testkit::hub_process::client();
    iot_testkit::hub_process::wait_healthy(&client, &http).await;

    // (name, qemu, the agent); both reach the broker as `localhost`.
    let agents = [
        (
            "aarch64",
            "qemu-aarch64-static",
            cross_agent("aarch64-unknown-linux-musl"),
        ),
        (
            "armv7",
            "qemu-arm-static",
            cross_agent("armv7-unknown-linux-gnueabihf"),
        ),
    ];
    let host = "localhost";
    let mut running = Vec::new();
    for (name, qemu, bin) in &agents {
        let toml = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                "gateway-id = \"gw-{name}\"\n[mqtt]\nhost = \"{host}\"\nport = {port}\nbroker-inflight = 100\n\
                 [[subscriptions]]\nfilter = \"site-{name}/+/+\"\ntopic-template = \"site-{name}/{{device}}/{{metric}}\"\n\
                 [batch]\nmax-age = \"200ms\"\n[uplink.mqtt]\nhost = \"{host}\"\nport = {port}\n\
                 [spool]\ndir = {:?}\n",
                dir.path().join(format!("spool-{name}")).display().to_string()
            ),
        )
        .unwrap();
        running.push(Process::spawn(
            &PathBuf::from(qemu),
            &[
                bin.to_str().unwrap(),
                "--config",
                toml.to_str().unwrap(),
                "run",
            ],
            &dir.path().join(format!("{name}.log")),
        ));
    }
    // The emulated agents start slowly; give them time to subscribe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = tokio::join!(
        publish_fleet(port, "fleet-aarch64", "site-aarch64", 3, 100, 80),
        publish_fleet(port, "fleet-armv7", "site-armv7", 3, 100, 80),
    );
    let expected = (a.readings.len() + b.readings.len()) as u64;
    let mut archived = 0;
    for _ in 0..600 {
        archived = lab::bench::scrape(&client, &http, "hub_readings_archived_total")
            .await
            .unwrap_or(0);
        if archived >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = || {
        ["aarch64.log", "armv7.log", "hub.log"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(archived, expected, "{}", logs());
    for agent in running {
        assert!(
            agent.terminate().success(),
            "an emulated agent did not stop cleanly: {}",
            logs()
        );
    }
    assert!(hub.terminate().success());
    let archive = read_archive(&dir.path().join("hub/archive"));
    let part = |prefix: &str| {
        archive
            .iter()
            .filter(|((d, _, _), _)| d.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_archive_matches(&part("site-aarch64"), &a);
    assert_archive_matches(&part("site-armv7"), &b);
    assert_eq!(archive.len() as u64, expected);
}
