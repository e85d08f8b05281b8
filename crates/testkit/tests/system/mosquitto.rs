//! The same end-to-end check with separate processes for the hub and two
//! edge agents, on a real Mosquitto broker. `.ci/run` starts Mosquitto and
//! runs this with `MOSQUITTO_PORT` set (`cargo test -- --ignored`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::{
    Process, assert_archive_matches, assert_spikes_flagged, edge_binary, publish_fleet,
    read_archive,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Mosquitto broker on MOSQUITTO_PORT; run by .ci/run"]
async fn separate_processes_on_mosquitto_archive_every_valid_reading_once() {
    let port: u16 = std::env::var("MOSQUITTO_PORT")
        .expect("MOSQUITTO_PORT must name a running Mosquitto broker")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", lab::broker::free_port());
    let hub_toml = dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "hub-id = \"ci\"\ndata-dir = {:?}\n[mqtt]\nport = {port}\n[http]\nlisten = \"{http}\"\n[scoring]\nmodel-dir = {:?}\nwarmup-readings = 100\n[archive]\nmax-file-age = \"2s\"\n",
            dir.path().join("hub").display().to_string(),
            iot_testkit::models("novelty"),
        ),
    )
    .unwrap();
    let edge_toml = |gw: &str, root: &str, uplink: &str| {
        let path = dir.path().join(format!("{gw}.toml"));
        std::fs::write(
            &path,
            format!(
                "gateway-id = \"{gw}\"\n[mqtt]\nport = {port}\nbroker-inflight = 1000\n[[subscriptions]]\nfilter = \"{root}/+/+\"\ntopic-template = \"{root}/{{device}}/{{metric}}\"\n[batch]\nmax-age = \"100ms\"\n[uplink]\nkind = \"{uplink}\"\n[uplink.mqtt]\nport = {port}\n[uplink.http]\nurl = \"http://{http}\"\n"
            ),
        )
        .unwrap();
        path
    };
    let (edge_a, edge_b) = (
        edge_toml("gw-m1", "site-m1", "mqtt"),
        edge_toml("gw-m2", "site-m2", "http"),
    );

    let hub_bin = iot_testkit::hub_binary();
    let edge_bin = edge_binary();
    for (bin, cfg) in [
        (&hub_bin, &hub_toml),
        (&edge_bin, &edge_a),
        (&edge_bin, &edge_b),
    ] {
        let out = Command::new(bin)
            .args(["--config", cfg.to_str().unwrap(), "validate"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} validate: {}",
            cfg.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hub = Process::spawn(
        &hub_bin,
        &["--config", hub_toml.to_str().unwrap(), "run"],
        &dir.path().join("hub.log"),
    );
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if client
            .get(format!("http://{http}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "hub did not come up: {}",
        std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default()
    );
    let agents = [
        Process::spawn(
            &edge_bin,
            &["--config", edge_a.to_str().unwrap(), "run"],
            &dir.path().join("edge-a.log"),
        ),
        Process::spawn(
            &edge_bin,
            &["--config", edge_b.to_str().unwrap(), "run"],
            &dir.path().join("edge-b.log"),
        ),
    ];
    tokio::time::sleep(Duration::from_millis(800)).await;

    let (a, b) = tokio::join!(
        publish_fleet(port, "ci-fleet-a", "site-m1", 3, 240, 200),
        publish_fleet(port, "ci-fleet-b", "site-m2", 3, 240, 200),
    );
    let expected = (a.readings.len() + b.readings.len()) as u64;
    let mut archived = 0;
    for _ in 0..1200 {
        archived = lab::bench::scrape(&client, &http, "hub_readings_archived_total")
            .await
            .unwrap_or(0);
        if archived >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        archived, expected,
        "hub archived {archived} of {expected} readings"
    );

    for agent in agents {
        assert!(
            agent.terminate().success(),
            "edge agent did not stop cleanly"
        );
    }
    assert!(hub.terminate().success(), "hub did not stop cleanly");
    let archive = read_archive(&dir.path().join("hub/archive"));
    let part = |prefix: &str| {
        archive
            .iter()
            .filter(|((d, _, _), _)| d.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_archive_matches(&part("site-m1"), &a);
    assert_spikes_flagged(&part("site-m1"), &a);
    assert_archive_matches(&part("site-m2"), &b);
    assert_spikes_flagged(&part("site-m2"), &b);
    assert_eq!(archive.len() as u64, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Mosquitto broker on MOSQUITTO_PORT; run by .ci/run"]
async fn mosquitto_a_gateway_that_reconnects_forgets_a_hub_that_left_while_it_was_away() {
    // Mosquitto drops QoS 0 messages for an absent session (the default
    // `queue_qos0_messages false`): the hub's goodbye is lost to the gateway.
    let port: u16 = std::env::var("MOSQUITTO_PORT")
        .expect("MOSQUITTO_PORT must name a running Mosquitto broker")
        .parse()
        .unwrap();
    crate::e2e::gateway_reconnecting_after_its_hub_left(port).await;
}

/// A Sparkplug B edge node from an independent implementation (Eclipse
/// Tahu's payloads via mqtt-spb-wrapper, paho-mqtt) births before the agent
/// listens, then sends alias-only data: the agent asks it for a rebirth,
/// names every later message, and ignores the late will of an older
/// session. Needs `pip install paho-mqtt==1.6.1 mqtt-spb-wrapper==2.1.2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Mosquitto broker on MOSQUITTO_PORT and the Python Sparkplug node's packages; run by .ci/run"]
async fn mosquitto_sparkplug_node_born_before_the_agent_is_asked_to_rebirth() {
    use std::io::{BufRead, Write};
    use std::sync::atomic::Ordering::Relaxed;

    use edge_agent::config::{EdgeConfig, PayloadFormat, Subscription};

    let port: u16 = std::env::var("MOSQUITTO_PORT")
        .expect("MOSQUITTO_PORT must name a running Mosquitto broker")
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut hub_cfg = iot_testkit::hub_config("spb", dir.path());
    hub_cfg.mqtt.port = port;
    hub_cfg.mqtt.topic_prefix = "spbtest".into();
    let hub = inference_hub::start(hub_cfg).await.unwrap();

    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/system/sparkplug/edge_node.py");
    let mut node = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--port",
            &port.to_string(),
            "--group",
            "plant",
            "--node",
            "node1",
            "--count",
            "60",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt and mqtt-spb-wrapper");
    let mut out = std::io::BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "born", "the node did not start");

    // The agent starts after the birth: it has never seen the aliases.
    let mut cfg = EdgeConfig::for_gateway("gw-spb", port);
    cfg.subscriptions = vec![Subscription {
        filter: "spBv1.0/#".into(),
        qos: 0,
        topic_template: "spBv1.0/+/+/{device}".into(),
        format: PayloadFormat::SparkplugB,
    }];
    cfg.batch.max_age = Duration::from_millis(100);
    cfg.uplink.mqtt.topic_prefix = "spbtest".into();
    let agent = edge_agent::Agent::start(cfg, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stdin = node.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let summary = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(node.wait().unwrap().success());
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        summary["rebirths"], 1,
        "one rebirth, and the stale will ignored: {summary}"
    );
    let named: Vec<&serde_json::Value> = summary["sent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["after_rebirth"] == true)
        .collect();
    assert!(named.len() >= 40, "data after the rebirth: {}", named.len());
    let expected = 2 * named.len() as u64;
    let hub_stats = Arc::clone(&hub.stats);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = Arc::clone(&agent.stats);
    assert_eq!(stats.sparkplug_rebirths_requested.load(Relaxed), 1);
    agent.shutdown().await;
    let root = hub.archive_root.clone();
    let archived_now = hub_stats.readings_archived.load(Relaxed);
    hub.shutdown().await;
    let archive = crate::harness::read_archive(&root);
    for s in named {
        let ts = s["ts"].as_i64().unwrap() * 1000;
        let temp = &archive[&("node1".to_owned(), "temp".to_owned(), ts)];
        assert_eq!(temp[0].value, s["temp"].as_f64().unwrap());
        let rpm = &archive[&("node1".to_owned(), "rpm".to_owned(), ts)];
        assert_eq!(rpm[0].value, s["rpm"].as_f64().unwrap());
    }
    assert!(
        archived_now >= expected,
        "{archived_now} of at least {expected}"
    );
}
