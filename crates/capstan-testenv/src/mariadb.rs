//! A private MariaDB server from Debian's packages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::paths;
use crate::process::{random_alnum, wait_ready, with_port_retry, write_private};

/// The administrator of the private server.
pub const ADMIN_USER: &str = "root";

/// A running MariaDB server (see [`TestEnv::mariadb`](crate::TestEnv::mariadb)):
/// listening on 127.0.0.1 only, `root` with a random password (from any host, and on the
/// Unix socket), no binary log, InnoDB without flushes.
#[derive(Debug)]
pub struct MariaDb {
    port: u16,
    password: String,
    log: PathBuf,
    socket: PathBuf,
    data_dir: PathBuf,
}

impl MariaDb {
    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The administrator, `root`.
    pub fn admin_user(&self) -> &'static str {
        ADMIN_USER
    }

    /// The administrator's password (random per environment, letters and digits only).
    pub fn admin_password(&self) -> &str {
        &self.password
    }

    /// `mysql://root:<password>@127.0.0.1:<port>/`.
    pub fn admin_url(&self) -> String {
        format!(
            "mysql://{ADMIN_USER}:{}@127.0.0.1:{}/",
            self.password, self.port
        )
    }

    /// The server's error log (and, with `CAPSTAN_TESTENV_LOG_STATEMENTS=1`, the general
    /// query log is `general.log` next to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The general query log, written only with `CAPSTAN_TESTENV_LOG_STATEMENTS=1`.
    pub fn general_log_path(&self) -> PathBuf {
        self.log.with_file_name("general.log")
    }

    /// The Unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn program(name: &str) -> Result<PathBuf> {
    paths::find_program(name).ok_or_else(|| Error::Missing {
        what: name.to_owned(),
        detail: "not on PATH nor in /usr/sbin (Debian package mariadb-server)".to_owned(),
        install: paths::INSTALL_HINT.to_owned(),
    })
}

pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<MariaDb> {
    let mariadbd = program("mariadbd")?;
    let install_db = program("mariadb-install-db")?;
    let started = Instant::now();
    let dir = ctx.sup.service_dir("mariadb")?;
    let data_dir = dir.join("data");
    let is_root = nix::unistd::geteuid().is_root();

    let mut install = Command::new(&install_db);
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data_dir.display()))
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .current_dir(&dir);
    if is_root {
        install.arg("--user=root");
    }
    ctx.sup
        .run_to_completion(
            "mariadb (mariadb-install-db)",
            &mut install,
            &dir.join("install-db.log"),
            ctx.timeout(Duration::from_secs(60)),
        )
        .await?;

    // The root password is set by an init file at the first start: mariadb-install-db
    // creates root@localhost with socket authentication only.
    let password = random_alnum(32);
    let init = dir.join("init.sql");
    write_private(
        &init,
        format!(
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password \
             USING PASSWORD('{password}') OR unix_socket;\n\
             CREATE OR REPLACE USER 'root'@'%' IDENTIFIED BY '{password}';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;\n"
        )
        .as_bytes(),
    )?;
    let socket = dir.join("mysqld.sock");
    let log = dir.join("mariadb.log");

    let db = with_port_retry(|| async {
        let port = ctx.sup.free_port()?;
        let mut cmd = Command::new(&mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .arg(format!("--init-file={}", init.display()))
            .arg("--skip-name-resolve")
            .arg("--skip-log-bin")
            .arg("--character-set-server=utf8mb4")
            .arg("--innodb-buffer-pool-size=32M")
            .arg("--innodb-flush-log-at-trx-commit=0")
            .arg("--innodb-doublewrite=0")
            .current_dir(&dir);
        if is_root {
            cmd.arg("--user=root");
        }
        if ctx.opts.log_statements {
            cmd.arg("--general-log=1").arg(format!(
                "--general-log-file={}",
                dir.join("general.log").display()
            ));
        }
        let spawned = ctx.sup.spawn("mariadb", &mut cmd, &log, &[port])?;
        wait_ready(
            ctx.sup,
            &spawned,
            ctx.timeout(Duration::from_secs(60)),
            "the MySQL protocol greeting on the TCP port",
            || greeting(port),
        )
        .await?;
        Ok(MariaDb {
            port,
            password: password.clone(),
            log: log.clone(),
            socket: socket.clone(),
            data_dir: data_dir.clone(),
        })
    })
    .await?;
    ctx.record("mariadb", started.elapsed());
    Ok(db)
}

/// Ready when the server sends a protocol-10 handshake (it accepts connections only
/// after the init file ran).
async fn greeting(port: u16) -> std::result::Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut header = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut header))
        .await
        .map_err(|_| "no greeting within 2 s".to_owned())?
        .map_err(|e| format!("reading the greeting: {e}"))?;
    // 3-byte length, 1-byte sequence, then the protocol version (10) or 0xff for an error.
    if header[4] == 10 {
        Ok(())
    } else {
        Err(format!("unexpected greeting byte {:#x}", header[4]))
    }
}
