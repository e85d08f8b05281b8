//! Both binaries under a service manager (systemd `Type=notify`,
//! `WatchdogSec=`, as in `deploy/systemd`): each says `READY=1` once it
//! serves, keeps sending `WATCHDOG=1` well within the watchdog period, and
//! says `STOPPING=1` on SIGTERM before exiting 0. The manager's side is a
//! Unix datagram socket named by `NOTIFY_SOCKET`, as systemd provides it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The watchdog period given to the process; it must ping within it.
const WATCHDOG: Duration = Duration::from_millis(600);

fn start_under_manager(bin: &Path, config: &Path, socket: &Path) -> Child {
    Command::new(bin)
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The notifications received until `until` says stop or `deadline` passes,
/// each with the time it arrived.
fn receive(
    socket: &UnixDatagram,
    deadline: Duration,
    until: impl Fn(&[(Instant, String)]) -> bool,
) -> Vec<(Instant, String)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < deadline && !until(&got) {
        if let Ok(n) = socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                got.push((Instant::now(), line.to_owned()));
            }
        }
    }
    got
}

fn check_lifecycle(name: &str, bin: &Path, config: &Path, dir: &Path) {
    let path = dir.join(format!("{name}.notify"));
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut child = start_under_manager(bin, config, &path);

    let started = receive(&socket, Duration::from_secs(60), |got| {
        got.iter().filter(|(_, m)| m == "WATCHDOG=1").count() >= 5
    });
    let messages: Vec<&str> = started.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages.first(),
        Some(&"READY=1"),
        "{name}: READY=1 comes first, got {messages:?}"
    );
    let pings: Vec<Instant> = started
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 5, "{name}: watchdog pings {messages:?}");
    for pair in pings.windows(2) {
        assert!(
            pair[1] - pair[0] < WATCHDOG,
            "{name}: {:?} between pings, the watchdog period is {WATCHDOG:?}",
            pair[1] - pair[0]
        );
    }

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let stopping = receive(&socket, Duration::from_secs(30), |got| {
        got.iter().any(|(_, m)| m == "STOPPING=1")
    });
    assert!(
        stopping.iter().any(|(_, m)| m == "STOPPING=1"),
        "{name}: no STOPPING=1 after SIGTERM"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{name} exited with {status} on SIGTERM");
}

#[test]
#[ignore = "needs the edge-agent and inference-hub binaries (cargo build -p edge-agent -p inference-hub); run by .ci/run"]
fn both_binaries_tell_the_service_manager_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let closed_port = lab::broker::free_port();
    let hub_toml = dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "hub-id = \"notify\"\ndata-dir = {:?}\n[mqtt]\nenabled = false\n[http]\nlisten = \"127.0.0.1:0\"\n[scoring]\nmodel-dir = {:?}\n",
            dir.path().join("hub").display().to_string(),
            iot_testkit::models("novelty"),
        ),
    )
    .unwrap();
    check_lifecycle("hub", &iot_testkit::hub_binary(), &hub_toml, dir.path());

    // The agent is ready once its spool is open, whether or not its broker
    // is up yet (it keeps reconnecting): here nobody listens on the port.
    let edge_toml = dir.path().join("edge.toml");
    std::fs::write(
        &edge_toml,
        format!(
            "gateway-id = \"gw-notify\"\n[mqtt]\nport = {closed_port}\n[uplink.mqtt]\nport = {closed_port}\n[spool]\ndir = {:?}\n",
            dir.path().join("spool").display().to_string(),
        ),
    )
    .unwrap();
    check_lifecycle("agent", &iot_testkit::edge_binary(), &edge_toml, dir.path());
}
