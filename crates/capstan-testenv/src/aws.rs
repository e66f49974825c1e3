//! moto, the AWS emulator, from the project's venv.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

use crate::Ctx;
use crate::error::{Error, Result};
use crate::paths;
use crate::process::{http_ok, probe_client, wait_ready, with_port_retry};

/// The access key id of the test credentials (moto accepts any).
pub const TEST_ACCESS_KEY_ID: &str = "testing";
/// The secret access key of the test credentials.
pub const TEST_SECRET_ACCESS_KEY: &str = "testing";
/// The region the SDK configuration uses.
pub const TEST_REGION: &str = "us-east-1";
/// The account id moto reports for any credentials.
pub const TEST_ACCOUNT_ID: &str = "123456789012";

/// A running moto server (see [`TestEnv::aws`](crate::TestEnv::aws)).
///
/// One server is shared by every test of a test binary: give AWS resources unique names
/// (e.g. with the test's namespace in them).
#[derive(Debug)]
pub struct Aws {
    endpoint_url: String,
    port: u16,
    log: PathBuf,
}

impl Aws {
    /// The endpoint for every AWS service, `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The region of [`Aws::sdk_config`], `us-east-1`.
    pub fn region(&self) -> &'static str {
        TEST_REGION
    }

    /// Static test credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
            None,
            None,
            "capstan-testenv",
        )
    }

    /// The moto log (requests, and tracebacks of calls moto fails on).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// An SDK configuration pointed at moto: static test credentials, `us-east-1`, and
    /// retries off. Off because moto answers calls it does not implement with an HTML 500,
    /// which the SDK would otherwise retry for seconds before the test sees the error. The
    /// host's AWS environment variables and profile files are ignored.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .empty_test_environment()
            .endpoint_url(&self.endpoint_url)
            .region(Region::new(TEST_REGION))
            .credentials_provider(self.credentials())
            .retry_config(RetryConfig::disabled())
            .load()
            .await
    }

    /// [`Aws::sdk_config`] with the credentials of role `capstan-test` in `account`,
    /// assumed through STS: moto serves requests signed with them from that account's
    /// backends (its multi-account model), as a ClusterConnection's `roleArn` does.
    pub async fn sdk_config_in_account(&self, account: &str) -> SdkConfig {
        let base = self.sdk_config().await;
        let provider = aws_config::sts::AssumeRoleProvider::builder(Self::role_in(account))
            .session_name("capstan-testenv")
            .region(Region::new(TEST_REGION))
            .configure(&base)
            .build()
            .await;
        base.into_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(provider),
            )
            .build()
    }

    /// The role [`Aws::sdk_config_in_account`] assumes in `account`.
    pub fn role_in(account: &str) -> String {
        format!("arn:aws:iam::{account}:role/capstan-test")
    }

    /// Resets every moto backend (all AWS state). Every test of the binary shares the
    /// server: use only when no other test can be using it.
    pub async fn reset(&self) -> Result<()> {
        let client = probe_client()
            .build()
            .map_err(|e| Error::other("building an HTTP client", e))?;
        let url = format!("{}/moto-api/reset", self.endpoint_url);
        let resp = client
            .post(&url)
            .send()
            .await
            .map_err(|e| Error::other(format!("POST {url}"), e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Error::other(format!("POST {url}"), resp.status()))
        }
    }
}

/// Starts moto through `tests/env/moto_launcher.py`, which loads `tests/env/moto_ext/`.
pub(crate) async fn start(ctx: &Ctx<'_>) -> Result<Aws> {
    let python = paths::venv_python()?;
    let launcher = paths::tests_env_dir().join("moto_launcher.py");
    if !launcher.is_file() {
        return Err(Error::other(
            "starting moto",
            format!("{} is missing", launcher.display()),
        ));
    }
    let dir = ctx.sup.service_dir("moto")?;
    with_port_retry(|| async {
        let started = Instant::now();
        let port = ctx.sup.free_port()?;
        let log = dir.join("moto.log");
        let mut cmd = Command::new(&python);
        cmd.arg(&launcher)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .current_dir(&dir)
            .env("PYTHONUNBUFFERED", "1")
            .env("HOME", &dir);
        let spawned = ctx.sup.spawn("moto", &mut cmd, &log, &[port])?;
        let http = probe_client()
            .build()
            .map_err(|e| Error::other("building an HTTP client", e))?;
        let endpoint_url = format!("http://127.0.0.1:{port}");
        let probe = format!("{endpoint_url}/moto-api/data.json");
        wait_ready(
            ctx.sup,
            &spawned,
            ctx.timeout(Duration::from_secs(60)),
            "GET /moto-api/data.json",
            || http_ok(&http, &probe, None),
        )
        .await?;
        ctx.record("moto", started.elapsed());
        Ok(Aws {
            endpoint_url,
            port,
            log,
        })
    })
    .await
}
