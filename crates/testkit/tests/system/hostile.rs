//! Clients that lie, flood or send too much, against the agent and the hub
//! on a real broker.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use edge_agent::Agent;
use edge_agent::config::UplinkKind;
use rumqttc::{Event, MqttOptions, Packet, QoS};

use crate::e2e::agent_config;
use crate::harness::{
    assert_archive_matches, publish_fleet, read_archive, start_embedded_broker, wait_until,
};
use crate::hub_process::{HubProcessConfig, client, envelope, post, terminate, wait_healthy};

/// A client that reads every batch on the broker and answers each with
/// forged acknowledgements: one naming other content, one naming none.
fn start_forger(port: u16) -> tokio::task::JoinHandle<()> {
    let mut opts = MqttOptions::new("forger", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut eventloop) = iot_mqtt::client(opts, 100);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe("iot/batches/+", QoS::AtMostOnce)
                        .await
                        .unwrap();
                    client
                        .subscribe("iot/hub/+/batches/+", QoS::AtMostOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok((_, h)) = schemas::envelope::peek_header(
                        &p.payload,
                        &schemas::DecodeLimits::default(),
                    ) else {
                        continue;
                    };
                    let crc = schemas::envelope::content_crc(&p.payload).unwrap();
                    let topic = format!("iot/acks/{}", h.gateway);
                    for body in [
                        serde_json::json!({"gateway": h.gateway, "incarnation": h.incarnation,
                            "seq": h.seq, "crc32c": crc.wrapping_add(1), "status": "durable"}),
                        serde_json::json!({"gateway": h.gateway, "incarnation": h.incarnation,
                            "seq": h.seq, "status": "durable"}),
                        serde_json::json!({"gateway": h.gateway, "incarnation": h.incarnation,
                            "seq": h.seq, "crc32c": crc ^ 0x8000_0000,
                            "status": "rejected", "reason": "forged"}),
                    ] {
                        let _ = client
                            .publish(topic.clone(), QoS::AtLeastOnce, false, body.to_string())
                            .await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_acknowledgements_release_nothing_from_the_spool() {
    let port = start_embedded_broker().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(
        "gw-forged",
        "plant-x",
        port,
        UplinkKind::Mqtt,
        "127.0.0.1:9".parse().unwrap(),
    );
    cfg.uplink.ack_timeout = Duration::from_millis(300);
    cfg.uplink.retry_max = Duration::from_millis(300);
    cfg.spool.dir = Some(spool_dir.path().to_path_buf());
    let agent = Agent::start(cfg, Duration::from_secs(10)).await.unwrap();
    let forger = start_forger(port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let published = publish_fleet(port, "fleet-x", "plant-x", 3, 40, 1000).await;
    let stats = Arc::clone(&agent.stats);
    assert!(
        wait_until(Duration::from_secs(20), || stats.acks_ignored.load(Relaxed)
            >= 30)
        .await,
        "forged answers seen: {}",
        stats.acks_ignored.load(Relaxed)
    );
    assert_eq!(
        stats.readings_delivered.load(Relaxed),
        0,
        "forged answers delivered nothing"
    );
    assert_eq!(stats.batches_acked.load(Relaxed), 0);
    assert_eq!(stats.batches_rejected_by_hub.load(Relaxed), 0);
    assert!(
        stats.spool_records.load(Relaxed) > 0,
        "the spool still holds the batches"
    );

    // A real hub then gets every reading, exactly once, while the forger
    // keeps answering.
    let dir = tempfile::tempdir().unwrap();
    let mut hub_cfg = iot_testkit::hub_config("forged", dir.path());
    hub_cfg.mqtt.port = port;
    let hub = inference_hub::start(hub_cfg).await.unwrap();
    let expected = published.readings.len() as u64;
    let hub_stats = Arc::clone(&hub.stats);
    assert!(
        wait_until(Duration::from_secs(60), || hub_stats
            .readings_archived
            .load(Relaxed)
            >= expected)
        .await,
        "archived {} of {expected}",
        hub_stats.readings_archived.load(Relaxed)
    );
    forger.abort();
    agent.shutdown().await;
    let root = hub.archive_root.clone();
    hub.shutdown().await;
    assert_archive_matches(&read_archive(&root), &published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_cannot_take_the_hub_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The test opens more connections than a default process may.
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit.current = limit.maximum;
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, limit);

    let dir = tempfile::tempdir().unwrap();
    let cfg = HubProcessConfig::write(
        dir.path(),
        "flooded",
        dir.path().join("hub"),
        "http.header-read-timeout = \"2s\"\nhttp.request-timeout = \"3s\"\narchive.max-file-age = \"200ms\"",
    );
    let client = client();
    let hub = cfg.start_with_file_limit(1024);
    wait_healthy(&client, &cfg.http).await;

    // A client that sends its headers and then trickles its body is cut at
    // the request timeout.
    let mut slow = tokio::net::TcpStream::connect(&cfg.http).await.unwrap();
    slow.write_all(b"POST /v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Length: 100000\r\n\r\nIOTB")
        .await
        .unwrap();
    let slow_started = std::time::Instant::now();

    // 1100 clients that send half a request and then nothing.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        let connect = tokio::net::TcpStream::connect(&cfg.http);
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await
        {
            let _ = stream
                .write_all(b"POST /v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Le")
                .await;
            idle.push(stream);
        }
    }
    // Meanwhile gateways' batches are still taken and archived.
    let started = std::time::Instant::now();
    for seq in 1..=20 {
        let status = post(&client, &cfg.http, envelope("gw-flood", 1, seq, 20)).await;
        assert_eq!(
            status.as_deref(),
            Some("durable"),
            "batch {seq}: {}",
            cfg.log_text()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let health = client
        .get(format!("http://{}/health", cfg.http))
        .send()
        .await
        .unwrap();
    assert!(
        health.status().is_success(),
        "{}",
        health.text().await.unwrap()
    );

    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut answer)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 504"),
        "a slow body is answered 504: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(slow_started.elapsed() < Duration::from_secs(15));

    // The half-sent requests were cut at the header-read timeout.
    let first = idle.first_mut().unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "an idle client was never disconnected"
    );
    drop(idle);
    let metrics = client
        .get(format!("http://{}/metrics", cfg.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let timeouts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hub_http_timeouts_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(timeouts >= 500, "timeouts: {timeouts}");
    terminate(hub, &cfg);
    assert!(
        !cfg.log_text().contains("Too many open files"),
        "{}",
        cfg.log_text()
    );
    let archived = crate::guarantees::archived(&cfg.data.join("archive"));
    assert_eq!(archived.len(), 20, "every acknowledged batch is archived");
}

/// Publishes `payload` once at QoS 1 (or retained), waiting for the broker.
async fn publish_raw(port: u16, topic: &str, payload: Vec<u8>, retain: bool) {
    let mut opts = MqttOptions::new(format!("raw-{}", fastrand::u32(..)), "127.0.0.1", port);
    opts.set_max_packet_size(32 << 20, 32 << 20);
    let (client, mut eventloop) = iot_mqtt::client(opts, 10);
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("publish failed: {other:?}"),
        }
    }
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_device_message_is_dead_lettered_and_the_gateway_goes_on() {
    let port = start_embedded_broker().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hub_cfg = iot_testkit::hub_config("oversized", &dir.path().join("hub"));
    hub_cfg.mqtt.port = port;
    let hub = inference_hub::start(hub_cfg).await.unwrap();
    let dead_letters = dir.path().join("dead.jsonl");
    let mut cfg = agent_config("gw-big", "plant-big", port, UplinkKind::Mqtt, hub.http_addr);
    cfg.spool.dir = Some(dir.path().join("spool"));
    cfg.dead_letter.file = Some(dead_letters.clone());
    let mut after = cfg.subscriptions[0].clone();
    after.filter = "plant-after/+/+".into();
    after.topic_template = "plant-after/{device}/{metric}".into();
    cfg.subscriptions.push(after);
    let agent = Agent::start(cfg, Duration::from_secs(10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut published = publish_fleet(port, "fleet-a", "plant-big", 2, 30, 1000).await;
    // 300 KB on a device topic: past the agent's 256 KiB message limit.
    let big = format!("{{\"value\": 1.0, \"note\": \"{}\"}}", "x".repeat(300_000));
    publish_raw(
        port,
        "plant-big/plant-big-dev0/temp",
        big.into_bytes(),
        false,
    )
    .await;
    // A 100 KB retained "announcement" on the membership topic.
    let fake = format!(
        "{{\"hub\": \"evil\", \"pad\": \"{}\"}}",
        "y".repeat(100_000)
    );
    publish_raw(port, "iot/hubs/evil", fake.into_bytes(), true).await;
    let later = publish_fleet(port, "fleet-b", "plant-after", 2, 30, 2000).await;
    let later_keys: Vec<_> = later.readings.keys().cloned().collect();
    published.readings.extend(later.readings);
    published.malformed += later.malformed;
    let expected = published.readings.len() as u64;
    let hub_stats = Arc::clone(&hub.stats);
    assert!(
        wait_until(Duration::from_secs(30), || hub_stats
            .readings_archived
            .load(Relaxed)
            >= expected)
        .await,
        "archived {} of {expected}: the gateway is wedged (broker connects {}, uplink)",
        hub_stats.readings_archived.load(Relaxed),
        agent.stats.broker_connects.load(Relaxed)
    );
    let stats = Arc::clone(&agent.stats);
    assert_eq!(stats.rejected(edge_agent::decode::Rejection::TooLarge), 1);
    assert!(stats.announcements_ignored.load(Relaxed) >= 1);
    assert!(
        stats.broker_connects.load(Relaxed) <= 3,
        "reconnected {} times",
        stats.broker_connects.load(Relaxed)
    );
    agent.shutdown().await;
    let letters = std::fs::read_to_string(&dead_letters).unwrap();
    let too_large: Vec<&str> = letters
        .lines()
        .filter(|l| l.contains("\"too_large\""))
        .collect();
    assert_eq!(too_large.len(), 1, "{letters}");
    assert!(too_large[0].contains("\"size\":3000") && too_large[0].len() < 10_000);
    let root = hub.archive_root.clone();
    hub.shutdown().await;
    let archived = read_archive(&root);
    assert!(
        later_keys.iter().all(|k| archived.contains_key(k)),
        "readings after the big message are archived"
    );
    assert_archive_matches(&archived, &published);
}
