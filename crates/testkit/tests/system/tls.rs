//! Trust on every link, on Mosquitto with the shipped mutual-TLS and ACL
//! configuration (`deploy/mosquitto/mosquitto-tls.conf` and `acl`, only
//! ports and paths swapped) and certificates the test makes (`lab::pki`):
//!
//! - readings flow agent -> broker -> hub over mutual TLS, and agent -> hub
//!   over HTTPS with a client certificate and a token from a file;
//! - a gateway that sends as another one is refused and counted, over MQTT
//!   (by the broker's ACL on the other's topic, by the hub on its own) and
//!   over HTTPS (its certificate, or a per-gateway token); the
//!   pre-empted-sequence attack no longer makes the victim's batch a
//!   `duplicate`;
//! - an anonymous client, a certificate from an unknown CA and an expired
//!   one are refused by the broker and by the hub's listener;
//! - certificates rotate under load without a restart, nothing lost or
//!   doubled;
//! - no key, token or password appears in any log.
//!
//! Run by `.ci/run` (`cargo test -p iot-testkit --test system -- --ignored
//! tls`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use iot_tls::ClientTls;
use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

use crate::edge_faults::mosquitto_binary;
use crate::harness::{Process, assert_archive_matches, edge_binary, publish_fleet, read_archive};

const READ_TOKEN: &str = "read-token-5f1d8a";
const GW_B_TOKEN: &str = "gw-b-ingest-token-77c2e0";
const RELAY_TOKEN: &str = "relay-ingest-token-0b9d41";
const LOCAL_PASSWORD: &str = "local-broker-password-93ad";

/// The test's PKI: `lab::pki`'s set plus certificates that must be refused.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Self {
        let dir = dir.join("pki");
        let ca = lab::pki::create(
            &dir,
            &["localhost", "127.0.0.1"],
            &["hub1"],
            &["gw-a", "gw-b"],
            lab::pki::Validity::default(),
        )
        .unwrap();
        // gw-a's name from a CA nobody trusts, and gw-a's expired.
        let rogue = lab::pki::Authority::new("rogue CA").unwrap();
        let leaf = rogue
            .leaf("gw-a", &[], lab::pki::Role::Client, Default::default())
            .unwrap();
        lab::pki::write_leaf(&dir, "rogue-gw-a", &leaf).unwrap();
        // gw-a's, signed by the pipeline's CA but expired two days ago.
        let leaf = ca
            .leaf(
                "gw-a",
                &[],
                lab::pki::Role::Client,
                lab::pki::Validity { days: -2 },
            )
            .unwrap();
        lab::pki::write_leaf(&dir, "expired-gw-a", &leaf).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces `<name>.pem` and `<name>.key` the way an operator's tool
    /// does: each written aside and renamed into place, the key first.
    fn replace(&self, name: &str, leaf: &lab::pki::Leaf) {
        let aside = self.dir.join("aside");
        std::fs::create_dir_all(&aside).unwrap();
        let (cert, key) = lab::pki::write_leaf(&aside, name, leaf).unwrap();
        std::fs::rename(key, self.path(&format!("{name}.key"))).unwrap();
        std::fs::rename(cert, self.path(&format!("{name}.pem"))).unwrap();
    }

    /// Replaces a trust bundle with these CA certificates.
    fn trust(&self, file: &str, cas: &[&str]) {
        let aside = self.dir.join(format!("{file}.new"));
        std::fs::write(&aside, cas.concat()).unwrap();
        std::fs::rename(aside, self.path(file)).unwrap();
    }

    fn client(&self, name: Option<&str>) -> ClientTls {
        ClientTls {
            ca_file: Some(self.path("ca.pem")),
            system_roots: false,
            cert_file: name.map(|n| self.path(&format!("{n}.pem"))),
            key_file: name.map(|n| self.path(&format!("{n}.key"))),
        }
    }

    /// A reqwest client trusting the CA, with `name`'s certificate.
    fn https_client(&self, name: Option<&str>) -> reqwest::Client {
        let ca =
            reqwest::Certificate::from_pem(&std::fs::read(self.path("ca.pem")).unwrap()).unwrap();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
        if let Some(name) = name {
            let mut pem = std::fs::read(self.path(&format!("{name}.pem"))).unwrap();
            pem.extend(std::fs::read(self.path(&format!("{name}.key"))).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }
}

/// The shipped TLS broker configuration with the test's port and paths.
fn tls_broker_config(dir: &Path, port: u16, pki: &Pki) -> PathBuf {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/mosquitto");
    let acl = dir.join("acl");
    std::fs::copy(deploy.join("acl"), &acl).unwrap();
    let data = dir.join("mosquitto-tls-data");
    std::fs::create_dir_all(&data).unwrap();
    let text = std::fs::read_to_string(deploy.join("mosquitto-tls.conf")).unwrap();
    let mut conf: Vec<String> = text
        .lines()
        .map(|l| match l.split_once(' ').map(|(k, _)| k) {
            Some("listener") => format!("listener {port} 127.0.0.1"),
            Some("cafile") => format!("cafile {}", pki.path("trust.pem").display()),
            Some("certfile") => format!("certfile {}", pki.path("broker.pem").display()),
            Some("keyfile") => format!("keyfile {}", pki.path("broker.key").display()),
            Some("acl_file") => format!("acl_file {}", acl.display()),
            Some("persistence_location") => format!("persistence_location {}/", data.display()),
            _ => l.to_owned(),
        })
        .collect();
    for required in [
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ] {
        assert!(
            conf.iter().any(|l| l == required),
            "the shipped config lost `{required}`"
        );
    }
    conf.push(format!("user {}", current_user()));
    conf.push("log_type all".into());
    let path = dir.join("mosquitto-tls.conf");
    std::fs::write(&path, conf.join("\n")).unwrap();
    path
}

fn current_user() -> String {
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "root".into())
}

/// Connects to the TLS broker with `tls` (Err: why it was refused).
async fn mqtt_connect(
    port: u16,
    client_id: &str,
    tls: &ClientTls,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), String> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let config = tls.load().map_err(|e| e.to_string())?;
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 16);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == rumqttc::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("refused: {:?}", ack.code))
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no CONNACK within 5 s".into()));
    connected.map(|()| (client, eventloop))
}

/// Publishes one QoS 1 message and waits for the broker's PUBACK (Mosquitto
/// acknowledges a publish its ACL refuses, and drops it).
async fn publish_once(
    client: &rumqttc::AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    topic: &str,
    payload: Vec<u8>,
) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = eventloop.poll().await {
                return;
            }
        }
    })
    .await
    .expect("PUBACK");
}

async fn metric(client: &reqwest::Client, http: &str, sample: &str) -> u64 {
    let text = client
        .get(format!("https://{http}/metrics"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics"))
}

async fn wait_healthy_https(client: &reqwest::Client, http: &str, log: &Path) {
    for _ in 0..400 {
        if client
            .get(format!("https://{http}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "hub did not become healthy over HTTPS: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Posts an envelope over HTTPS; the status and the answer's body.
async fn post(
    client: &reqwest::Client,
    http: &str,
    token: &str,
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let resp = client
        .post(format!("https://{http}/v1/batches"))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .map_err(|e| schemas::error_chain(&e))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// The whole pipeline on TLS: the cloud broker (the shipped mTLS + ACL
/// configuration), the gateways' local broker (plain, on loopback), a hub
/// (MQTT over mTLS, HTTPS with optional client certificates, tokens) and two
/// agents, gw-a forwarding over MQTT and gw-b over HTTPS. Every `ca-file`
/// names `trust.pem` and the hub's `client-ca-file` names
/// `client-trust.pem` (both start as the pipeline's CA).
struct Stack {
    pki: Pki,
    dir: PathBuf,
    tls_port: u16,
    local_port: u16,
    /// Where devices publish (anonymous listener of the local broker).
    device_port: u16,
    http: String,
    cloud: Option<Process>,
    _local: Process,
    hub: Process,
    agents: Vec<Process>,
    reader: reqwest::Client,
    hub_log: PathBuf,
}

impl Stack {
    async fn start(dir: &Path, pki: Pki) -> Self {
        for trust in ["trust.pem", "client-trust.pem"] {
            if !pki.path(trust).exists() {
                std::fs::copy(pki.path("ca.pem"), pki.path(trust)).unwrap();
            }
        }
        // The cloud broker (mTLS + ACLs) and the gateways' local broker.
        let tls_port = lab::broker::free_port();
        let local_port = lab::broker::free_port();
        let cloud = Process::spawn(
            &mosquitto_binary(),
            &[
                "-c",
                tls_broker_config(dir, tls_port, &pki).to_str().unwrap(),
            ],
            &dir.join("mosquitto-tls.log"),
        );
        // The local broker: agents log in with a password (no anonymous
        // clients there), gw-a over TLS, gw-b over TCP; devices publish on a
        // third listener.
        let device_port = lab::broker::free_port();
        let local_tls_port = lab::broker::free_port();
        let local_dir = dir.join("local");
        std::fs::create_dir_all(local_dir.join("data")).unwrap();
        let passwords = local_dir.join("passwords");
        for (i, gw) in ["gw-a", "gw-b"].iter().enumerate() {
            let mut cmd = std::process::Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let password = format!("{gw}-{LOCAL_PASSWORD}");
            let status = cmd
                .args(["-b", passwords.to_str().unwrap(), gw, &password])
                .status()
                .expect("mosquitto_passwd (Debian's mosquitto package)");
            assert!(status.success());
            std::fs::write(dir.join(format!("{gw}.password")), format!("{password}\n")).unwrap();
        }
        let local_conf = local_dir.join("mosquitto.conf");
        std::fs::write(
            &local_conf,
            format!(
                "per_listener_settings true\nuser {}\npersistence true\npersistence_location {}/\n\
                 max_inflight_messages 100\nmax_queued_messages 1000000\n\
                 listener {local_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 listener {local_tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
                 cafile {}\ncertfile {}\nkeyfile {}\n\
                 listener {device_port} 127.0.0.1\nallow_anonymous true\n",
                current_user(),
                local_dir.join("data").display(),
                passwords.display(),
                passwords.display(),
                pki.path("ca.pem").display(),
                pki.path("broker.pem").display(),
                pki.path("broker.key").display(),
            ),
        )
        .unwrap();
        let local = Process::spawn(
            &mosquitto_binary(),
            &["-c", local_conf.to_str().unwrap()],
            &dir.join("mosquitto-local.log"),
        );
        crate::edge_faults::wait_port(tls_port).await;
        crate::edge_faults::wait_port(local_port).await;
        crate::edge_faults::wait_port(device_port).await;
        crate::edge_faults::wait_port(local_tls_port).await;

        // Secrets from files only.
        let token_file = dir.join("gw-b.token");
        std::fs::write(&token_file, format!("{GW_B_TOKEN}\n")).unwrap();
        let http = format!("127.0.0.1:{}", lab::broker::free_port());
        let p = |n: &str| pki.path(n).display().to_string();
        let hub_toml = dir.join("hub.toml");
        std::fs::write(
        &hub_toml,
        format!(
            "hub-id = \"hub1\"\ndata-dir = {:?}\n\
             [mqtt]\nport = {tls_port}\n\
             [mqtt.tls]\nca-file = {:?}\ncert-file = {:?}\nkey-file = {:?}\n\
             [http]\nlisten = \"{http}\"\n\
             [http.tls]\ncert-file = {:?}\nkey-file = {:?}\nclient-ca-file = {:?}\n\
             [[http.tokens]]\nname = \"reader\"\ntoken = \"{READ_TOKEN}\"\nscopes = [\"read\"]\n\
             [[http.tokens]]\nname = \"gw-b\"\ntoken-file = {:?}\nscopes = [\"ingest\"]\ngateway = \"gw-b\"\n\
             [[http.tokens]]\nname = \"relay\"\ntoken = \"{RELAY_TOKEN}\"\nscopes = [\"ingest\"]\n\
             [scoring]\nmodel-dir = {:?}\nwarmup-readings = 50\n[archive]\nmax-file-age = \"500ms\"\n",
            dir.join("hub").display().to_string(),
            p("trust.pem"),
            p("hub1.pem"),
            p("hub1.key"),
            p("hub1.pem"),
            p("hub1.key"),
            p("client-trust.pem"),
            token_file.display().to_string(),
            iot_testkit::models("novelty"),
        ),
    )
    .unwrap();
        let edge_toml = |gw: &str, root: &str, uplink: &str| {
            let path = dir.join(format!("{gw}.toml"));
            // gw-a reaches its local broker over TLS (server certificate
            // only, and its password), gw-b over TCP.
            let local = if gw == "gw-a" {
                format!(
                    "port = {local_tls_port}\n[mqtt.tls]\nca-file = {:?}\n",
                    p("trust.pem")
                )
            } else {
                format!("port = {local_port}\n")
            };
            // gw-a's batches go to the shared subscription (through the
            // ACL's `iot/batches/<id>` and the hub's `$share/...` read),
            // not to one hub's direct topic.
            let sticky = gw != "gw-a";
            std::fs::write(
            &path,
            format!(
                "gateway-id = \"{gw}\"\n\
                 [[subscriptions]]\nfilter = \"{root}/+/+\"\ntopic-template = \"{root}/{{device}}/{{metric}}\"\n\
                 [mqtt]\nbroker-inflight = 100\nusername = \"{gw}\"\npassword-file = {:?}\n{local}\
                 [batch]\nmax-age = \"100ms\"\n[uplink]\nkind = \"{uplink}\"\n\
                 [uplink.mqtt]\nport = {tls_port}\nsticky = {sticky}\n\
                 [uplink.mqtt.tls]\nca-file = {:?}\ncert-file = {:?}\nkey-file = {:?}\n\
                 [uplink.http]\nurl = \"https://{http}\"\ntoken-file = {:?}\n\
                 [uplink.http.tls]\nca-file = {:?}\ncert-file = {:?}\nkey-file = {:?}\n",
                dir.join(format!("{gw}.password")).display().to_string(),
                p("trust.pem"),
                p(&format!("{gw}.pem")),
                p(&format!("{gw}.key")),
                token_file.display().to_string(),
                p("trust.pem"),
                p(&format!("{gw}.pem")),
                p(&format!("{gw}.key")),
            ),
        )
        .unwrap();
            path
        };
        let (edge_a, edge_b) = (
            edge_toml("gw-a", "site-a", "mqtt"),
            edge_toml("gw-b", "site-b", "http"),
        );
        let hub_bin = iot_testkit::hub_binary();
        let edge_bin = edge_binary();
        for (bin, cfg) in [
            (&hub_bin, &hub_toml),
            (&edge_bin, &edge_a),
            (&edge_bin, &edge_b),
        ] {
            let out = std::process::Command::new(bin)
                .args(["--config", cfg.to_str().unwrap(), "validate"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} validate: {}{}",
                cfg.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let hub_log = dir.join("hub.log");
        let hub = Process::spawn(
            &hub_bin,
            &["--config", hub_toml.to_str().unwrap(), "run"],
            &hub_log,
        );
        let reader = pki.https_client(None);
        wait_healthy_https(&reader, &http, &hub_log).await;
        let agents = [
            Process::spawn(
                &edge_bin,
                &["--config", edge_a.to_str().unwrap(), "run"],
                &dir.join("edge-a.log"),
            ),
            Process::spawn(
                &edge_bin,
                &["--config", edge_b.to_str().unwrap(), "run"],
                &dir.join("edge-b.log"),
            ),
        ];
        tokio::time::sleep(Duration::from_millis(800)).await;

        Self {
            pki,
            dir: dir.to_owned(),
            tls_port,
            local_port,
            device_port,
            http,
            cloud: Some(cloud),
            _local: local,
            hub,
            agents: agents.into(),
            reader,
            hub_log,
        }
    }

    /// SIGKILLs the cloud broker and starts it again (its configuration
    /// re-read: a changed trust.pem is in force).
    async fn restart_cloud_broker(&mut self) {
        drop(self.cloud.take());
        let config = self.dir.join("mosquitto-tls.conf");
        self.cloud = Some(Process::spawn(
            &mosquitto_binary(),
            &["-c", config.to_str().unwrap()],
            &self.dir.join("mosquitto-tls.log"),
        ));
        crate::edge_faults::wait_port(self.tls_port).await;
    }

    /// Stops the agents and the hub gracefully.
    fn stop(self) -> Pki {
        for agent in self.agents {
            assert!(
                agent.terminate().success(),
                "edge agent did not stop cleanly"
            );
        }
        assert!(self.hub.terminate().success(), "hub did not stop cleanly");
        self.pki
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto installed (the test starts it with TLS); run by .ci/run"]
async fn tls_every_link_encrypted_and_each_gateway_bound_to_its_own_data() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());

    let stack = Stack::start(dir.path(), pki).await;
    let Stack {
        tls_port,
        local_port,
        device_port,
        ..
    } = stack;
    let (http, reader, hub_log) = (
        stack.http.clone(),
        stack.reader.clone(),
        stack.hub_log.clone(),
    );
    let pki = &stack.pki;
    // Spies: gw-b's certificate listening to everything a gateway could
    // want to read, and (the control) gw-a's listening to its own answers.
    let (stop_spies, spies_stop) = tokio::sync::watch::channel(false);
    let spy = |name: &'static str, filters: &'static [&'static str]| {
        let tls = pki.client(Some(name));
        let mut stop = spies_stop.clone();
        tokio::spawn(async move {
            let (client, mut eventloop) = mqtt_connect(tls_port, &format!("spy-{name}"), &tls)
                .await
                .expect("a valid certificate connects");
            for f in filters {
                client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
            }
            let mut heard = 0u64;
            loop {
                tokio::select! {
                    event = eventloop.poll() => match event {
                        Ok(Event::Incoming(Packet::Publish(_))) => heard += 1,
                        Ok(_) => {}
                        Err(e) => panic!("spy {name} lost its connection: {e}"),
                    },
                    _ = stop.changed() => return heard,
                }
            }
        })
    };
    let spy_other = spy(
        "gw-b",
        &[
            "iot/acks/gw-a",
            "iot/acks/+",
            "iot/batches/+",
            "iot/hub/+/batches/+",
        ],
    );
    let spy_own = spy("gw-a", &["iot/acks/gw-a"]);

    // Readings flow over both encrypted paths.
    let (a, b) = tokio::join!(
        publish_fleet(device_port, "fleet-a", "site-a", 3, 120, 100),
        publish_fleet(device_port, "fleet-b", "site-b", 3, 120, 100),
    );
    let expected = (a.readings.len() + b.readings.len()) as u64;
    let mut archived = 0;
    for _ in 0..600 {
        archived = metric(&reader, &http, "hub_readings_archived_total").await;
        if archived >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        archived,
        expected,
        "hub archived {archived} of {expected} readings; hub log: {}",
        std::fs::read_to_string(&hub_log).unwrap_or_default()
    );

    stop_spies.send(true).unwrap();
    let (other, own) = (spy_other.await.unwrap(), spy_own.await.unwrap());
    assert!(own > 0, "the control spy heard gw-a's own answers");
    assert_eq!(
        other, 0,
        "gw-b's certificate read none of gw-a's answers or batches"
    );

    // --- MQTT: gw-a's certificate, sending as gw-b.
    let forged = |seq| iot_testkit::hub_process::envelope("gw-b", 4242, seq, 5);
    let (client, mut eventloop) = mqtt_connect(tls_port, "forger", &pki.client(Some("gw-a")))
        .await
        .expect("gw-a's certificate is valid");
    // On gw-b's topic: the broker's ACL drops it (the hub never sees it).
    publish_once(&client, &mut eventloop, "iot/batches/gw-b", forged(1)).await;
    publish_once(
        &client,
        &mut eventloop,
        "iot/hub/hub1/batches/gw-b",
        forged(2),
    )
    .await;
    // On its own topic, naming gw-b: the hub refuses and counts it.
    publish_once(&client, &mut eventloop, "iot/batches/gw-a", forged(3)).await;
    let mut refused_mqtt = 0;
    for _ in 0..100 {
        refused_mqtt = metric(
            &reader,
            &http,
            "hub_batches_forbidden_total{transport=\"mqtt\"}",
        )
        .await;
        if refused_mqtt >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        refused_mqtt, 1,
        "exactly the batch on gw-a's own topic reaches the hub and is refused"
    );
    let _ = client.disconnect().await;

    // --- The local broker: a wrong password is refused (the agents' right
    // ones carried the fleets' readings above; that listener takes no
    // anonymous client).
    let mut opts = MqttOptions::new("wrong-password", "127.0.0.1", local_port);
    let wrong = iot_tls::Secret::new("not-the-password");
    iot_mqtt::LinkSecurity::new(
        "test",
        iot_mqtt::LinkSettings {
            username: Some("gw-a"),
            password: Some(&wrong),
            ..Default::default()
        },
    )
    .unwrap()
    .apply(&mut opts);
    let (_c, mut eventloop) = rumqttc::AsyncClient::new(opts, 4);
    let refused = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => break Some(ack.code),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => break Some(code),
            Err(e) => panic!("unexpected: {e}"),
        }
    };
    assert!(
        matches!(
            refused,
            Some(
                rumqttc::ConnectReturnCode::NotAuthorized
                    | rumqttc::ConnectReturnCode::BadUserNamePassword
            )
        ),
        "{refused:?}"
    );

    // --- MQTT: who cannot connect at all.
    assert!(
        mqtt_connect(tls_port, "anon", &pki.client(None))
            .await
            .is_err(),
        "a client without a certificate is refused"
    );
    let rogue = ClientTls {
        cert_file: Some(pki.path("rogue-gw-a.pem")),
        key_file: Some(pki.path("rogue-gw-a.key")),
        ..pki.client(None)
    };
    assert!(
        mqtt_connect(tls_port, "rogue", &rogue).await.is_err(),
        "a certificate from an unknown CA is refused"
    );
    let expired = ClientTls {
        cert_file: Some(pki.path("expired-gw-a.pem")),
        key_file: Some(pki.path("expired-gw-a.key")),
        ..pki.client(None)
    };
    assert!(
        mqtt_connect(tls_port, "expired", &expired).await.is_err(),
        "an expired certificate is refused"
    );

    // --- HTTPS: gw-a's certificate with an unbound ingest token, as gw-b.
    let as_gw_a = pki.https_client(Some("gw-a"));
    let (status, body) = post(&as_gw_a, &http, RELAY_TOKEN, forged(10))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden_gateway"), "{body}");
    // gw-b's own token, without a certificate, as gw-a.
    let no_cert = pki.https_client(None);
    let as_a = iot_testkit::hub_process::envelope("gw-a", 4242, 11, 5);
    let (status, body) = post(&no_cert, &http, GW_B_TOKEN, as_a).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        metric(
            &reader,
            &http,
            "hub_batches_forbidden_total{transport=\"http\"}"
        )
        .await,
        2
    );

    // The pre-empted sequence: the forger's (gw-b, 4242, 20) is refused, so
    // gw-b's real batch with that identity is durable, not a duplicate.
    let victim = pki.https_client(Some("gw-b"));
    let (status, _) = post(&as_gw_a, &http, RELAY_TOKEN, forged(20))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, body) = post(&victim, &http, GW_B_TOKEN, forged(20)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"durable\""),
        "the victim's batch is taken: {body}"
    );

    // HTTPS handshakes the listener refuses: a rogue or expired certificate.
    let bad_client = |name: &str| {
        let mut pem = std::fs::read(pki.path(&format!("{name}.pem"))).unwrap();
        pem.extend(std::fs::read(pki.path(&format!("{name}.key"))).unwrap());
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap())
                    .unwrap(),
            )
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    };
    for name in ["rogue-gw-a", "expired-gw-a"] {
        let refused = post(&bad_client(name), &http, RELAY_TOKEN, forged(30)).await;
        assert!(refused.is_err(), "{name}: {refused:?}");
    }
    assert!(metric(&reader, &http, "hub_http_tls_refused_total").await >= 2);
    // Plain HTTP to the HTTPS listener gets no answer.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{http}/health"))
            .send()
            .await
            .map_or(true, |r| !r.status().is_success())
    );

    let metrics_text = reader
        .get(format!("https://{http}/metrics"))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pki = stack.stop();
    let archive = read_archive(&dir.path().join("hub/archive"));
    let part = |prefix: &str| {
        archive
            .iter()
            .filter(|((d, _, _), _)| d.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_archive_matches(&part("site-a"), &a);
    assert_archive_matches(&part("site-b"), &b);
    // Besides the fleets, only the victim's batch: nothing forged.
    assert_eq!(archive.len() as u64, expected + 5);

    // Secrets hygiene: no key, token or password in any log.
    let mut secrets: Vec<String> = [READ_TOKEN, GW_B_TOKEN, RELAY_TOKEN, LOCAL_PASSWORD]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for key in ["hub1.key", "gw-a.key", "gw-b.key", "broker.key", "ca.key"] {
        let text = std::fs::read_to_string(pki.path(key)).unwrap();
        // Any line of the key's base64 body.
        secrets.extend(
            text.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned),
        );
    }
    for log in ["hub.log", "edge-a.log", "edge-b.log"] {
        let text = std::fs::read_to_string(dir.path().join(log)).unwrap();
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{log} holds a secret");
        }
    }
    for s in &secrets {
        assert!(
            !metrics_text.contains(s.as_str()),
            "/metrics holds a secret"
        );
    }
}

/// Publishes `{root}/{root}-dev<k>/seq` at `rate` messages a second (QoS 1,
/// each waited for) until `stop`; returns the keys the broker acknowledged.
async fn publish_steady(
    port: u16,
    root: &'static str,
    rate: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, String, i64)> {
    let mut opts = MqttOptions::new(format!("steady-{root}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = iot_mqtt::client(opts, 16);
    let start = tokio::time::Instant::now();
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !*stop.borrow() {
        tokio::time::sleep_until(start + Duration::from_micros(n * 1_000_000 / rate)).await;
        let device = format!("{root}-dev{}", n % 4);
        let ts_ms = 1_767_225_600_000 + n as i64;
        let payload = format!(r#"{{"value": {n}, "ts": {ts_ms}}}"#);
        client
            .publish(
                format!("{root}/{device}/seq"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
        let acknowledged = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await
        .unwrap_or(false);
        if acknowledged {
            acked.push((device, "seq".to_owned(), ts_ms * 1000));
        }
        n += 1;
    }
    acked
}

/// Rotation under load: while 200 messages a second flow (100 through each
/// gateway), the hub's certificate, both gateways' client certificates,
/// the broker's certificate and every trust bundle move from the first CA
/// to a second one, and the first stops being trusted. Nothing restarts but
/// the broker; every acknowledged reading is archived exactly once. Each
/// step is proven used: a client trusting only the new CA reaches the hub;
/// once the hub trusts only the new CA for clients, the HTTPS gateway still
/// delivers (so it presents its new certificate); once the broker trusts
/// only the new CA, the MQTT gateway and the hub still connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto installed (the test starts it with TLS); run by .ci/run"]
async fn tls_certificates_rotate_under_load_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    // A CA rollover: the new CA is trusted everywhere before any
    // certificate moves to it.
    let ca2 = lab::pki::Authority::new("pipeline CA 2").unwrap();
    let ca1_pem = std::fs::read_to_string(pki.path("ca.pem")).unwrap();
    pki.trust("trust.pem", &[&ca1_pem, &ca2.ca_pem]);
    pki.trust("client-trust.pem", &[&ca1_pem, &ca2.ca_pem]);
    let mut stack = Stack::start(dir.path(), pki).await;
    let (http, device_port) = (stack.http.clone(), stack.device_port);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publishers = [
        tokio::spawn(publish_steady(device_port, "site-a", 100, stop_rx.clone())),
        tokio::spawn(publish_steady(device_port, "site-b", 100, stop_rx)),
    ];
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. The hub's certificate (HTTPS, and its broker login) from CA 2: new
    // handshakes use it.
    let hosts = ["localhost", "127.0.0.1"];
    let leaf =
        |name: &str, extra: &[&str], role| ca2.leaf(name, extra, role, Default::default()).unwrap();
    stack
        .pki
        .replace("hub1", &leaf("hub1", &hosts, lab::pki::Role::Both));
    let only_ca2 = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca2.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if only_ca2
            .get(format!("https://{http}/health"))
            .send()
            .await
            .is_ok()
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "the hub never served its new certificate");

    // 2. gw-b's client certificate from CA 2; then the hub trusts only CA 2
    // for clients (a CA 1 certificate is refused from then on).
    stack
        .pki
        .replace("gw-b", &leaf("gw-b", &[], lab::pki::Role::Client));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.pki.trust("client-trust.pem", &[&ca2.ca_pem]);
    let old_gw_a = stack.pki.https_client(Some("gw-a"));
    let mut refused = false;
    for _ in 0..100 {
        if old_gw_a
            .get(format!("https://{http}/health"))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the hub kept trusting CA 1 for clients");

    // 3. gw-a's client certificate and the broker's from CA 2; every trust
    // bundle CA 2 only; the broker restarts on it (the hub and the agents
    // reconnect with what their files now hold).
    stack
        .pki
        .replace("gw-a", &leaf("gw-a", &[], lab::pki::Role::Client));
    stack
        .pki
        .replace("broker", &leaf("broker", &hosts, lab::pki::Role::Server));
    stack.pki.trust("trust.pem", &[&ca2.ca_pem]);
    stack.restart_cloud_broker().await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    stop_tx.send(true).unwrap();
    let mut acked = Vec::new();
    for p in publishers {
        acked.extend(p.await.unwrap());
    }
    assert!(acked.len() > 1000, "{} readings acknowledged", acked.len());
    let root = dir.path().join("hub/archive");
    let mut archive = read_archive(&root);
    for _ in 0..120 {
        if acked.iter().all(|k| archive.contains_key(k)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        archive = read_archive(&root);
    }
    // Nothing restarted but the broker.
    assert!(
        stack.hub.0.try_wait().unwrap().is_none(),
        "the hub restarted"
    );
    for agent in &mut stack.agents {
        assert!(agent.0.try_wait().unwrap().is_none(), "an agent restarted");
    }
    let hub_log = std::fs::read_to_string(&stack.hub_log).unwrap();
    assert!(hub_log.contains("reloaded from changed files"), "{hub_log}");
    // Judged before the stop: an agent that cannot reach the hub would
    // wait out its drain.
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !archive.contains_key(*k))
        .take(5)
        .collect();
    let doubled: Vec<_> = archive
        .iter()
        .filter(|(_, rows)| rows.len() > 1)
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "missing e.g. {missing:?}, doubled e.g. {doubled:?}"
    );
    assert_eq!(
        archive.len(),
        acked.len(),
        "nothing archived that was not published"
    );
    stack.stop();
    assert_eq!(
        read_archive(&root).len(),
        acked.len(),
        "nothing more after the stop"
    );
}
