//! Teardown: `capstan-testenv up` runs every service as a child process; after SIGTERM
//! (graceful) and, separately, SIGKILL (nothing of it runs any more: only the watchdog
//! can clean up) none of the service processes remains, their ports are closed and the
//! temporary directory is gone.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Two full environments at once would only slow each other down on a small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Up {
    child: Child,
    state: tempfile::TempDir,
    pids: Vec<u32>,
    ports: Vec<u16>,
    dir: PathBuf,
}

fn log_of(state: &Path) -> String {
    std::fs::read_to_string(state.join("up.log")).unwrap_or_default()
}

/// The direct children of a process (PostgreSQL's backends put themselves in process
/// groups of their own: the teardown must catch them too).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// Alive: exists and is not a zombie (this machine's init may never reap orphans; a
/// zombie holds no port, file or memory).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            state != "Z"
        }
        Err(_) => false,
    }
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn start_up() -> Up {
    let state = tempfile::tempdir().expect("state dir");
    let log = std::fs::File::create(state.path().join("up.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_capstan-testenv"))
        .arg("up")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--services=k8s,aws,vault,postgres,mariadb")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn capstan-testenv up");
    let mut up = Up {
        child,
        state,
        pids: Vec::new(),
        ports: Vec::new(),
        dir: PathBuf::new(),
    };
    let start = Instant::now();
    while !up.state.path().join("env").exists() {
        if let Ok(Some(status)) = up.child.try_wait() {
            panic!(
                "capstan-testenv up exited ({status}) before it was ready:\n{}",
                log_of(up.state.path())
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "capstan-testenv up not ready after 300 s:\n{}",
            log_of(up.state.path())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let services: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(up.state.path().join("services.json")).expect("services.json"),
    )
    .expect("services.json is JSON");
    up.dir = PathBuf::from(services["dir"].as_str().expect("dir"));
    for p in services["processes"].as_array().expect("processes") {
        let pid = u32::try_from(p["pid"].as_u64().expect("pid")).expect("pid");
        up.pids.push(pid);
        up.pids.extend(children(pid));
        for port in p["ports"].as_array().expect("ports") {
            up.ports
                .push(u16::try_from(port.as_u64().expect("port")).expect("port"));
        }
    }
    eprintln!("{}", log_of(up.state.path()));
    let names: Vec<&str> = services["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["service"].as_str())
        .collect();
    for service in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "moto",
        "openbao",
        "postgres",
        "mariadb",
    ] {
        assert!(names.contains(&service), "{service} not in {names:?}");
    }
    for &pid in &up.pids {
        assert!(alive(pid), "service process {pid} is not running");
    }
    for &port in &up.ports {
        assert!(port_open(port), "nothing listens on 127.0.0.1:{port}");
    }
    assert!(up.dir.is_dir());
    up
}

/// Polls until nothing of the environment remains, or panics saying what is left.
fn assert_all_gone(up: &Up, within: Duration) {
    let start = Instant::now();
    loop {
        let pids: Vec<u32> = up.pids.iter().copied().filter(|&p| alive(p)).collect();
        let ports: Vec<u16> = up.ports.iter().copied().filter(|&p| port_open(p)).collect();
        let dir = up.dir.exists();
        if pids.is_empty() && ports.is_empty() && !dir {
            eprintln!(
                "torn down {:.2} s after the signal",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            start.elapsed() < within,
            "after {within:?}: processes still alive {pids:?}, ports still open {ports:?}, \
             temporary directory {} still there: {dir}",
            up.dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_every_service_and_removes_the_directory() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut up = start_up();
    let pid = Pid::from_raw(i32::try_from(up.child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = up.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still running 60 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "exit status {status}: {}",
        log_of(up.state.path())
    );
    // Graceful: everything is gone by the time it exits.
    assert_all_gone(&up, Duration::ZERO);
    assert!(
        !up.state.path().join("env").exists(),
        "stale env file left behind"
    );
}

#[test]
fn sigkill_leaves_the_watchdog_to_tear_down() {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut up = start_up();
    up.child.kill().expect("SIGKILL");
    up.child.wait().expect("wait");
    assert_all_gone(&up, Duration::from_secs(30));
}
