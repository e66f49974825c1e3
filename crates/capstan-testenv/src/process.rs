//! Processes of the environment: free ports, spawning services in their own process
//! groups, the watchdog that tears everything down when the owning process dies, and
//! readiness polling.

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The watchdog: a bash process whose stdin is a pipe from the owning process. It reads
/// `pgid N`, `forget N` and `dir PATH` lines; when the pipe closes (the owner exited,
/// panicked, was killed with SIGKILL, or called shutdown) it kills every registered
/// process group and removes the registered directories. It ignores the terminal's
/// signals (and sits in its own process group) so that Ctrl-C on a test run cannot kill it
/// before it has cleaned up. bash rather than sh: dash's `kill` cannot signal a group.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP PIPE QUIT
pgids=()
dirs=()
while IFS= read -r line; do
  case "$line" in
    "pgid "*) pgids+=("${line#pgid }") ;;
    "forget "*)
      p="${line#forget }"
      for i in "${!pgids[@]}"; do
        if [ "${pgids[$i]}" = "$p" ]; then unset 'pgids[i]'; fi
      done ;;
    "dir "*) dirs+=("${line#dir }") ;;
  esac
done
# Alive: exists and is no zombie (a zombie holds nothing; this machine's init may never
# reap orphaned ones).
alive() {
  local stat
  read -r stat < "/proc/$1/stat" 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
# Each group, and the direct children of its leader: some servers (PostgreSQL) put
# every child in a group of its own.
pids=()
for p in "${pgids[@]}"; do
  pids+=("$p")
  for k in $(cat /proc/"$p"/task/*/children 2>/dev/null); do pids+=("$k"); done
done
for p in "${pgids[@]}"; do kill -s KILL -- "-$p" 2>/dev/null; done
for p in "${pids[@]}"; do kill -s KILL -- "$p" 2>/dev/null; done
# Wait (bounded) until they are gone, so that nothing writes into the directories while
# they are removed.
for _ in $(seq 200); do
  any=0
  for p in "${pids[@]}"; do
    if alive "$p"; then
      any=1
      kill -s KILL -- "$p" 2>/dev/null
    fi
  done
  if [ "$any" = 0 ]; then break; fi
  sleep 0.05
done
for d in "${dirs[@]}"; do rm -rf -- "$d"; done
"#;

/// A service process started by the [`Supervisor`].
#[derive(Debug, Clone)]
pub(crate) struct Spawned {
    pub(crate) service: String,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
}

/// A running service process of the environment, as reported by
/// [`TestEnv::processes`](crate::TestEnv::processes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceProcess {
    /// The service, e.g. `kube-apiserver`.
    pub service: String,
    /// Its process id, which is also its process group id.
    pub pid: u32,
    /// The TCP ports on 127.0.0.1 it listens on.
    pub ports: Vec<u16>,
    /// Its log file.
    pub log: PathBuf,
}

#[derive(Debug)]
struct Tracked {
    info: ServiceProcess,
    child: Child,
}

/// Owns the environment's temporary directory, its service processes and its watchdog.
#[derive(Debug)]
pub(crate) struct Supervisor {
    root: PathBuf,
    keep: bool,
    watchdog_stdin: Mutex<Option<ChildStdin>>,
    watchdog: Mutex<Option<Child>>,
    children: Mutex<Vec<Tracked>>,
    ports: Mutex<HashSet<u16>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Supervisor {
    /// Creates the temporary directory and starts the watchdog.
    pub(crate) fn new(keep: bool) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::Builder::new()
            .prefix("capstan-testenv-")
            .tempdir()
            .map_err(|e| Error::other("creating the test environment's temporary directory", e))?
            .keep();
        // PostgreSQL runs as the postgres user and must be able to reach its own
        // subdirectory; nobody else can list this one.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| Error::other(format!("chmod {}", root.display()), e))?;
        let mut watchdog = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::other("starting the watchdog (bash)", e))?;
        let stdin = watchdog.stdin.take();
        let sup = Supervisor {
            root,
            keep,
            watchdog_stdin: Mutex::new(stdin),
            watchdog: Mutex::new(Some(watchdog)),
            children: Mutex::new(Vec::new()),
            ports: Mutex::new(HashSet::new()),
        };
        if keep {
            eprintln!(
                "capstan-testenv: CAPSTAN_TESTENV_KEEP is set: keeping {}",
                sup.root.display()
            );
        } else {
            sup.tell(&format!("dir {}", sup.root.display()));
        }
        Ok(sup)
    }

    /// The environment's temporary directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the temporary directory is kept after teardown.
    pub(crate) fn keeps_dir(&self) -> bool {
        self.keep
    }

    fn tell(&self, line: &str) {
        if let Some(stdin) = lock(&self.watchdog_stdin).as_mut() {
            // A failed write means the watchdog is gone; nothing better to do than go on.
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    /// A fresh subdirectory of the temporary directory for one service.
    pub(crate) fn service_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::other(format!("cleaning {}", dir.display()), e))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::other(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago and that this environment has
    /// not handed out before. The caller passes it to a service; a service that then
    /// finds it taken is restarted with new ports (see [`with_port_retry`]).
    pub(crate) fn free_port(&self) -> Result<u16> {
        for _ in 0..50 {
            let listener = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| Error::other("binding 127.0.0.1:0 to find a free port", e))?;
            let port = listener
                .local_addr()
                .map_err(|e| Error::other("reading a bound port", e))?
                .port();
            drop(listener);
            if lock(&self.ports).insert(port) {
                return Ok(port);
            }
        }
        Err(Error::other(
            "finding a free port",
            "no new port after 50 tries",
        ))
    }

    /// Starts a service in its own process group with stdout and stderr appended to `log`,
    /// and registers the group with the watchdog.
    pub(crate) fn spawn(
        &self,
        service: &str,
        cmd: &mut Command,
        log: &Path,
        ports: &[u16],
    ) -> Result<Spawned> {
        let out = File::create(log)
            .map_err(|e| Error::other(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::other(format!("opening {}", log.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::service(
                    service,
                    format!("could not start {:?}: {e}", cmd.get_program()),
                    log,
                )
            })?;
        let pid = child.id();
        self.tell(&format!("pgid {pid}"));
        let info = ServiceProcess {
            service: service.to_owned(),
            pid,
            ports: ports.to_vec(),
            log: log.to_owned(),
        };
        lock(&self.children).push(Tracked { info, child });
        Ok(Spawned {
            service: service.to_owned(),
            pid,
            log: log.to_owned(),
        })
    }

    /// Runs a short-lived helper command (initdb, mariadb-install-db) to completion with
    /// its output in `log`, in its own process group registered with the watchdog.
    pub(crate) async fn run_to_completion(
        &self,
        service: &str,
        cmd: &mut Command,
        log: &Path,
        timeout: Duration,
    ) -> Result<()> {
        let spawned = self.spawn(service, cmd, log, &[])?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status(spawned.pid) {
                return if status.success() {
                    Ok(())
                } else {
                    Err(Error::service(
                        service,
                        format!("{:?} failed: {status}", cmd.get_program()),
                        log,
                    ))
                };
            }
            if start.elapsed() > timeout {
                self.kill(spawned.pid);
                return Err(Error::service(
                    service,
                    format!("{:?} did not finish within {timeout:?}", cmd.get_program()),
                    log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The exit status of a service process if it has exited (and then forgets it).
    pub(crate) fn exit_status(&self, pid: u32) -> Option<ExitStatus> {
        let mut children = lock(&self.children);
        let pos = children.iter().position(|t| t.info.pid == pid)?;
        match children[pos].child.try_wait() {
            Ok(Some(status)) => {
                children.remove(pos);
                drop(children);
                self.tell(&format!("forget {pid}"));
                Some(status)
            }
            _ => None,
        }
    }

    /// Kills a service's process group (and its leader's children) now and reaps the
    /// leader.
    pub(crate) fn kill(&self, pid: u32) {
        let children = child_pids(pid);
        let pgid = nix::unistd::Pid::from_raw(pid.cast_signed());
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        for child in children {
            let child = nix::unistd::Pid::from_raw(child.cast_signed());
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        }
        let mut children = lock(&self.children);
        if let Some(pos) = children.iter().position(|t| t.info.pid == pid) {
            let mut tracked = children.remove(pos);
            drop(children);
            let _ = tracked.child.wait();
            self.tell(&format!("forget {pid}"));
        }
    }

    /// The service processes running now.
    pub(crate) fn processes(&self) -> Vec<ServiceProcess> {
        lock(&self.children)
            .iter()
            .map(|t| t.info.clone())
            .collect()
    }

    /// Tears everything down now and waits until it is done: closes the watchdog's pipe
    /// (so the watchdog kills every process group and removes the directory), reaps the
    /// service processes and waits for the watchdog. Blocking; idempotent.
    pub(crate) fn shutdown(&self) {
        drop(lock(&self.watchdog_stdin).take());
        let children: Vec<Tracked> = std::mem::take(&mut *lock(&self.children));
        for mut tracked in children {
            let _ = tracked.child.wait();
        }
        if let Some(mut watchdog) = lock(&self.watchdog).take() {
            let _ = watchdog.wait();
        }
    }
}

/// The direct children of a process, from `/proc/<pid>/task/*/children`.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Polls `probe` until it succeeds, the process exits, or `timeout` passes. On failure the
/// process group is killed and the error names the service, what failed and its log.
pub(crate) async fn wait_ready<F, Fut>(
    sup: &Supervisor,
    spawned: &Spawned,
    timeout: Duration,
    what: &str,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<(), String>>,
{
    let start = Instant::now();
    let mut last = String::from("not probed yet");
    loop {
        if let Some(status) = sup.exit_status(spawned.pid) {
            return Err(Error::service(
                &spawned.service,
                format!("exited ({status}) before it was ready ({what}: {last})"),
                &spawned.log,
            ));
        }
        match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if start.elapsed() > timeout {
            sup.kill(spawned.pid);
            return Err(Error::service(
                &spawned.service,
                format!("not ready after {timeout:?}: {what}: {last}"),
                &spawned.log,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `attempt` up to three times while it fails because a chosen port was taken.
pub(crate) async fn with_port_retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if tries < 3 && e.is_port_clash() => {
                tracing::warn!("port clash, retrying with new ports: {e}");
            }
            other => return other,
        }
    }
}

/// A reqwest client for readiness probes: short timeouts, no proxy (the machine's proxy
/// settings must not capture 127.0.0.1).
pub(crate) fn probe_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
}

/// A probe for an HTTP endpoint that must answer 200 (and contain `expect`, if given).
pub(crate) async fn http_ok(
    client: &reqwest::Client,
    url: &str,
    expect: Option<&str>,
) -> std::result::Result<(), String> {
    let resp = client.get(url).send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        let body: String = body.chars().take(300).collect();
        return Err(format!("GET {url}: HTTP {status}: {body}"));
    }
    match expect {
        Some(text) if !body.contains(text) => Err(format!("GET {url}: {body:?} lacks {text:?}")),
        _ => Ok(()),
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A random string of ASCII letters and digits (passwords, tokens, names).
pub(crate) fn random_alnum(len: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// A random string of lowercase letters and digits (names that must be DNS labels).
pub(crate) fn random_lower(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}

/// Writes a file readable only by its owner.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::other(format!("writing {}", path.display()), e))?;
    f.write_all(contents)
        .map_err(|e| Error::other(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn shutdown_kills_process_groups_with_their_children_and_removes_the_dir() {
        let sup = Supervisor::new(false).expect("supervisor");
        let dir = sup.service_dir("sleeper").expect("dir");
        let log = dir.join("sleeper.log");
        // A leader with a child that leaves the group, as PostgreSQL's children do.
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg("setsid sleep 1000 & echo child $!; exec sleep 1000");
        let spawned = sup.spawn("sleeper", &mut cmd, &log, &[]).expect("spawn");
        let start = Instant::now();
        let child = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(pid) = text
                .strip_prefix("child ")
                .and_then(|p| p.trim().parse::<u32>().ok())
            {
                break pid;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no child pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(spawned.pid) && alive(child));
        let root = sup.root().to_owned();
        assert!(root.is_dir());
        sup.shutdown();
        assert!(!alive(spawned.pid), "leader survived");
        assert!(!alive(child), "child in its own group survived");
        assert!(!root.exists(), "{} not removed", root.display());
    }

    #[tokio::test]
    async fn early_exit_is_reported_with_the_log() {
        let sup = Supervisor::new(false).expect("supervisor");
        let dir = sup.service_dir("failing").expect("dir");
        let log = dir.join("failing.log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo 'listen tcp: bind: address already in use' >&2; exit 3");
        let spawned = sup.spawn("failing", &mut cmd, &log, &[]).expect("spawn");
        let err = wait_ready(&sup, &spawned, Duration::from_secs(10), "probe", || async {
            Err::<(), _>("not yet".to_owned())
        })
        .await
        .expect_err("the process exits");
        let text = err.to_string();
        assert!(text.starts_with("failing: exited"), "{text}");
        assert!(text.contains(&log.display().to_string()), "{text}");
        assert!(text.contains("address already in use"), "{text}");
        assert!(err.is_port_clash());
        sup.shutdown();
    }

    #[tokio::test]
    async fn port_clashes_are_retried_other_errors_are_not() {
        let mut calls = 0;
        let res = with_port_retry(|| {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Error::Service {
                        service: "x".to_owned(),
                        message: "exited".to_owned(),
                        log: PathBuf::from("/dev/null"),
                        tail: "bind: Address already in use".to_owned(),
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(res.expect("third try works"), 3);

        let mut calls = 0;
        let res: Result<()> = with_port_retry(|| {
            calls += 1;
            async { Err(Error::other("x", "no such file")) }
        })
        .await;
        assert!(res.is_err());
        assert_eq!(calls, 1);
    }

    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let sup = Supervisor::new(false).expect("supervisor");
        let ports: HashSet<u16> = (0..20).map(|_| sup.free_port().expect("port")).collect();
        assert_eq!(ports.len(), 20);
        sup.shutdown();
    }
}
