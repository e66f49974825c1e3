//! A private PostgreSQL server from Debian's packages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::error::{Error, Result};
use crate::paths;
use crate::process::{random_alnum, wait_ready, with_port_retry, write_private};

/// The superuser of the private server.
pub const ADMIN_USER: &str = "postgres";

/// A running PostgreSQL server (see [`TestEnv::postgres`](crate::TestEnv::postgres)):
/// listening on 127.0.0.1 only, superuser `postgres` with a random password and SCRAM
/// authentication, fsync off.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    password: String,
    log: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    pid: u32,
    log_statements: AtomicBool,
}

impl Postgres {
    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser, `postgres`.
    pub fn admin_user(&self) -> &'static str {
        ADMIN_USER
    }

    /// The superuser's password (random per environment, letters and digits only).
    pub fn admin_password(&self) -> &str {
        &self.password
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> String {
        self.url_for_db("postgres")
    }

    /// The superuser's URL for another database.
    pub fn url_for_db(&self, db: &str) -> String {
        format!(
            "postgres://{ADMIN_USER}:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    /// The server log: everything the server writes, including statements when statement
    /// logging is on. Tests grep it for secrets that must not leak.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The PostgreSQL bin directory in use (`psql` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether every statement is logged (`log_statement = 'all'`).
    pub fn logs_statements(&self) -> bool {
        self.log_statements.load(Ordering::SeqCst)
    }

    /// Turns on `log_statement = 'all'` (for the whole server, which every test of the
    /// binary shares) and waits until the server has reloaded its configuration. Also on
    /// from the start with `CAPSTAN_TESTENV_LOG_STATEMENTS=1`.
    pub async fn enable_statement_logging(&self) -> Result<()> {
        if self.log_statements.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let conf = self.data_dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| Error::other(format!("opening {}", conf.display()), e))?;
        writeln!(f, "log_statement = 'all'")
            .map_err(|e| Error::other(format!("writing {}", conf.display()), e))?;
        drop(f);
        let marker = "parameter \"log_statement\" changed to \"all\"";
        let pid = nix::unistd::Pid::from_raw(self.pid.cast_signed());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
            .map_err(|e| Error::other("sending SIGHUP to postgres", e))?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains(marker) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::service(
            "postgres",
            "statement logging did not turn on within 10 s of SIGHUP",
            &self.log,
        ))
    }
}

/// Runs `cmd` as the postgres system user when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path, user: Option<&nix::unistd::User>) -> Command {
    match user {
        Some(u) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .arg("--")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<Postgres> {
    let bin_dir = paths::postgres_bin_dir()?;
    let started = Instant::now();
    let dir = ctx.sup.service_dir("postgres")?;
    let user = if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .map_err(|e| Error::other("looking up the postgres user", e))?
            .ok_or_else(|| Error::Missing {
                what: "the postgres system user".to_owned(),
                detail: "PostgreSQL refuses to run as root and there is no postgres user"
                    .to_owned(),
                install: paths::INSTALL_HINT.to_owned(),
            })?;
        Some(user)
    } else {
        None
    };
    let chown = |p: &Path| -> Result<()> {
        if let Some(u) = &user {
            std::os::unix::fs::chown(p, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                .map_err(|e| Error::other(format!("chown postgres {}", p.display()), e))?;
        }
        Ok(())
    };
    chown(&dir)?;
    let password = random_alnum(32);
    let pwfile = dir.join("pwfile");
    write_private(&pwfile, password.as_bytes())?;
    chown(&pwfile)?;
    let data_dir = dir.join("data");
    let socket_dir = dir.join("socket");
    std::fs::create_dir_all(&socket_dir)
        .map_err(|e| Error::other(format!("creating {}", socket_dir.display()), e))?;
    chown(&socket_dir)?;

    let mut initdb = as_postgres(&bin_dir.join("initdb"), user.as_ref());
    initdb
        .arg("-D")
        .arg(&data_dir)
        .arg("--auth=scram-sha-256")
        .arg(format!("--username={ADMIN_USER}"))
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["--encoding=UTF8", "--locale=C", "--no-sync"])
        .current_dir(&dir);
    ctx.sup
        .run_to_completion(
            "postgres (initdb)",
            &mut initdb,
            &dir.join("initdb.log"),
            ctx.timeout(Duration::from_secs(60)),
        )
        .await?;
    let _ = std::fs::remove_file(&pwfile);

    // Settings in postgresql.conf (not -c) so that they can change on reload.
    let conf = data_dir.join("postgresql.conf");
    let mut settings = String::from(
        "\n# capstan-testenv\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
         max_connections = 200\n",
    );
    if ctx.opts.log_statements {
        settings.push_str("log_statement = 'all'\n");
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(|e| Error::other(format!("writing {}", conf.display()), e))?;
    let init_done = started.elapsed();

    let pg = with_port_retry(|| async {
        let port = ctx.sup.free_port()?;
        let log = dir.join("postgres.log");
        let mut cmd = as_postgres(&bin_dir.join("postgres"), user.as_ref());
        cmd.arg("-D")
            .arg(&data_dir)
            .arg("-c")
            .arg("listen_addresses=127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .current_dir(&dir);
        let spawned = ctx.sup.spawn("postgres", &mut cmd, &log, &[port])?;
        let isready = bin_dir.join("pg_isready");
        wait_ready(
            ctx.sup,
            &spawned,
            ctx.timeout(Duration::from_secs(30)),
            "pg_isready",
            || pg_isready(&isready, port),
        )
        .await?;
        Ok(Postgres {
            port,
            password: password.clone(),
            log,
            data_dir: data_dir.clone(),
            socket_dir: socket_dir.clone(),
            bin_dir: bin_dir.clone(),
            pid: spawned.pid,
            log_statements: AtomicBool::new(ctx.opts.log_statements),
        })
    })
    .await?;
    tracing::debug!("initdb took {init_done:?}");
    ctx.record("postgres", started.elapsed());
    Ok(pg)
}

async fn pg_isready(isready: &Path, port: u16) -> std::result::Result<(), String> {
    let out = tokio::process::Command::new(isready)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "2"])
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", isready.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}
