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
    /// The access key every call is signed with: the test credentials, or on a server
    /// with IAM authentication enforced the admin key made while it was open.
    key: (String, String),
}

/// The IAM user whose access key signs every call to a server with IAM authentication
/// enforced ([`TestEnv::aws_iam_enforced`](crate::TestEnv::aws_iam_enforced)).
pub const ADMIN_USER: &str = "capstan-testenv-admin";

/// Unauthenticated actions a server with IAM authentication enforced allows: the three
/// that make its admin (CreateUser, CreateAccessKey, PutUserPolicy).
const BOOTSTRAP_ACTIONS: u32 = 3;

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

    /// The credentials every call is signed with: static test credentials (any key is
    /// accepted), or with IAM authentication enforced, the admin's access key.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(&self.key.0, &self.key.1, None, None, "capstan-testenv")
    }

    /// The access key id and secret of [`Aws::credentials`] (a ClusterConnection's
    /// credentials Secret holds them).
    pub fn access_key(&self) -> (&str, &str) {
        (&self.key.0, &self.key.1)
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
/// With `iam_enforced`, moto checks every request's signature and IAM policies
/// (`INITIAL_NO_AUTH_ACTION_COUNT`) once the admin user [`ADMIN_USER`], its access key
/// and an allow-all policy exist; the server's calls are signed with that key.
pub(crate) async fn start(ctx: &Ctx<'_>, iam_enforced: bool) -> Result<Aws> {
    let python = paths::venv_python()?;
    let launcher = paths::tests_env_dir().join("moto_launcher.py");
    if !launcher.is_file() {
        return Err(Error::other(
            "starting moto",
            format!("{} is missing", launcher.display()),
        ));
    }
    let dir = ctx
        .sup
        .service_dir(if iam_enforced { "moto-iam" } else { "moto" })?;
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
        if iam_enforced {
            cmd.env(
                "INITIAL_NO_AUTH_ACTION_COUNT",
                BOOTSTRAP_ACTIONS.to_string(),
            );
        }
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
        let mut aws = Aws {
            endpoint_url,
            port,
            log,
            key: (
                TEST_ACCESS_KEY_ID.to_owned(),
                TEST_SECRET_ACCESS_KEY.to_owned(),
            ),
        };
        if iam_enforced {
            aws.key = bootstrap_admin(&aws).await?;
        }
        ctx.record(
            if iam_enforced { "moto-iam" } else { "moto" },
            started.elapsed(),
        );
        Ok(aws)
    })
    .await
}

/// Makes the admin of a server with IAM authentication enforced, in the unauthenticated
/// actions it allows: the user, its access key and an inline policy allowing everything.
async fn bootstrap_admin(aws: &Aws) -> Result<(String, String)> {
    let iam = aws_sdk_iam::Client::new(&aws.sdk_config().await);
    let err = |what: &str, e: String| Error::other(format!("moto IAM bootstrap: {what}"), e);
    iam.create_user()
        .user_name(ADMIN_USER)
        .send()
        .await
        .map_err(|e| err("CreateUser", format!("{e:?}")))?;
    let key = iam
        .create_access_key()
        .user_name(ADMIN_USER)
        .send()
        .await
        .map_err(|e| err("CreateAccessKey", format!("{e:?}")))?;
    let key = key
        .access_key()
        .ok_or_else(|| err("CreateAccessKey", "no key in the answer".into()))?;
    let policy =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    iam.put_user_policy()
        .user_name(ADMIN_USER)
        .policy_name("everything")
        .policy_document(policy)
        .send()
        .await
        .map_err(|e| err("PutUserPolicy", format!("{e:?}")))?;
    Ok((
        key.access_key_id().to_owned(),
        key.secret_access_key().to_owned(),
    ))
}
