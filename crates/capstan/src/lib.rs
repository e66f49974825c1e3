//! The Capstan manager. Thin on purpose: build the client, wait for the CRDs, start
//! the admin server, take part in leader election, run the enabled controllers while
//! leading, and stop cleanly on SIGTERM or SIGINT. `main.rs` only parses arguments;
//! the rest is a library so that integration tests can call its parts.

pub mod admin;
pub mod cli;
pub mod connections;
pub mod crds;
pub mod kube_metrics;
pub mod leader;
pub mod process_metrics;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use capstan_core::budget::{BudgetMetrics, Budgets};
use capstan_core::clock::SystemClock;
use capstan_core::runtime::{AwsSettings, Readiness, Runtime};
use tokio_util::sync::CancellationToken;

use crate::cli::{ControllerName, RunArgs};

/// `capstan run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, &args.log_level)?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let namespaces: Vec<String> = args
        .namespaces
        .iter()
        .filter(|n| !n.is_empty())
        .cloned()
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = GIT_COMMIT,
        identity = %identity,
        namespaces = ?namespaces,
        controllers = ?args.controllers,
        leader_elect = args.leader_elect,
        "starting"
    );

    // Every metric is registered before the registry is shared with the admin server.
    // The root holds the standard `process_*` series; Capstan's own are `capstan_*`.
    let mut root = prometheus_client::registry::Registry::default();
    root.register_collector(Box::new(process_metrics::ProcessCollector));
    let registry = root.sub_registry_with_prefix("capstan");
    register_build_info(registry);
    let kube_metrics = kube_metrics::KubeRequestMetrics::register(registry);
    let config = kube_config(&args).await?;
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| anyhow::anyhow!("building the Kubernetes client: {e}"))?
        .with_layer(&kube_metrics.layer())
        .build();
    crds::wait_established(
        &client,
        &crds::needed(&args.controllers),
        Duration::from_secs(args.crd_wait),
    )
    .await?;

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    let readiness = Readiness::default();
    // Registered before the admin server starts, so that /readyz is never answered
    // before leadership is known.
    let leadership_known = readiness.register("leadership");
    let rates = capstan_aws::budget::rates_with(&args.aws_budget)
        .map_err(|e| anyhow::anyhow!("--aws-budget: {e}"))?;
    tracing::info!(budgets = ?rates, "AWS request budgets (requests per second per account and region)");
    let budgets = Budgets::new(rates, BudgetMetrics::register(registry));
    // Per-object series: fed by every controller's watch, exported by the leader only.
    let objects = Arc::new(capstan_core::object_metrics::ObjectMetrics::default());
    let runtime = Runtime {
        client: client.clone(),
        namespaces,
        concurrency: args.concurrency,
        instance: identity.clone(),
        own_namespace: args.own_namespace.clone(),
        service_account_token_file: args.service_account_token_file.clone(),
        clock: Arc::new(SystemClock),
        readiness: readiness.clone(),
        aws: AwsSettings {
            no_retries: args.aws_no_retries,
            budgets: Arc::new(budgets),
        },
        objects: objects.clone(),
    };

    let controllers = Controllers::register(&args, registry)?;
    registry.register_collector(Box::new(objects.clone()));
    registry.register_collector(Box::new(admin::ReadyCollector(readiness.clone())));
    let leading = leader::LeaderGauge::register(registry, objects.clone());
    let (bound, admin) = admin::serve(
        args.metrics_addr,
        args.health_addr,
        Arc::new(root),
        readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    match bound.health {
        None => {
            tracing::info!(addr = %bound.metrics, "admin server listening (/metrics, /healthz, /readyz)")
        }
        Some(health) => {
            tracing::info!(addr = %bound.metrics, "metrics server listening (/metrics)");
            tracing::info!(addr = %health, "probe server listening (/healthz, /readyz)");
        }
    }

    let run_controllers = {
        let runtime = runtime.clone();
        move |token: CancellationToken| controllers.clone().run(runtime.clone(), token)
    };
    if args.leader_elect {
        let lease_ns = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| args.own_namespace.clone());
        let params = leader::Params {
            lease_name: args.lease_name.clone(),
            namespace: lease_ns,
            identity,
            duration: args.lease_duration,
            grace: args.lease_grace,
        };
        leader::run(
            client,
            params,
            leadership_known,
            leading,
            shutdown.clone(),
            run_controllers,
        )
        .await?;
    } else {
        leadership_known.set(true);
        leading.set(true);
        run_controllers(shutdown.clone()).await;
    }
    shutdown.cancel();
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// The git commit the binary was built from (`build.rs`: `CAPSTAN_GIT_COMMIT`, else
/// `git rev-parse HEAD`, else `unknown`).
pub const GIT_COMMIT: &str = env!("CAPSTAN_GIT_COMMIT");

/// `capstan version`'s line: the crate version and the commit.
pub fn version_line() -> String {
    format!(
        "capstan {} (commit {GIT_COMMIT})",
        env!("CARGO_PKG_VERSION")
    )
}

/// `capstan_build_info{version, commit} 1`, as every Prometheus exporter has.
fn register_build_info(registry: &mut prometheus_client::registry::Registry) {
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    let info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    info.get_or_create(&vec![
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", GIT_COMMIT),
    ])
    .set(1);
    registry.register(
        "build_info",
        "Capstan's version and the git commit it was built from",
        info,
    );
}

/// The Kubernetes client configuration: `--kubeconfig` and `--context` as kubectl reads
/// them; without either, the Pod's service account or the default kubeconfig.
async fn kube_config(args: &RunArgs) -> anyhow::Result<kube::Config> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading --kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| match &args.context {
                    Some(c) => {
                        anyhow::anyhow!("--kubeconfig {} --context {c}: {e}", path.display())
                    }
                    None => anyhow::anyhow!("--kubeconfig {}: {e}", path.display()),
                })?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| anyhow::anyhow!("--context {context}: {e}"))?,
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("finding the Kubernetes configuration: {e}"))?,
    };
    Ok(config)
}

/// The enabled controllers and their metrics.
#[derive(Clone)]
struct Controllers {
    connection: Option<capstan_core::metrics::ControllerMetrics>,
    secret_rotation: Option<capstan_secret_rotation::controller::Metrics>,
    service_scaling: Option<capstan_service_scaling::controller::Metrics>,
    pipeline: Option<capstan_pipeline::controller::Metrics>,
    service_scaling_settings: capstan_service_scaling::cleanup::Settings,
    secret_rotation_settings: capstan_secret_rotation::controller::Settings,
    pipeline_settings: capstan_pipeline::controller::Settings,
}

impl Controllers {
    fn register(
        args: &RunArgs,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<Self> {
        let on = |c: ControllerName| args.controllers.contains(&c);
        let http_allow = capstan_pipeline::http_check::AllowList::parse(&args.http_check_allow)
            .map_err(|e| anyhow::anyhow!("--http-check-allow: {e}"))?;
        Ok(Self {
            connection: on(ControllerName::Connection)
                .then(|| connections::register_metrics(registry)),
            secret_rotation: on(ControllerName::SecretRotation)
                .then(|| capstan_secret_rotation::controller::Metrics::register(registry)),
            service_scaling: on(ControllerName::ServiceScaling)
                .then(|| capstan_service_scaling::controller::Metrics::register(registry)),
            pipeline: on(ControllerName::Pipeline)
                .then(|| capstan_pipeline::controller::Metrics::register(registry)),
            service_scaling_settings: capstan_service_scaling::cleanup::Settings {
                cleanup_timeout: Duration::from_secs(args.scaling_cleanup_timeout),
            },
            secret_rotation_settings: capstan_secret_rotation::controller::Settings {
                stuck_after: Duration::from_secs(args.rotation_stuck_after),
            },
            pipeline_settings: capstan_pipeline::controller::Settings {
                approval_policy: args.approval_policy.clone().filter(|p| !p.is_empty()),
                http_allow,
            },
        })
    }

    /// Runs every enabled controller until `token` is cancelled.
    async fn run(self, rt: Runtime, token: CancellationToken) {
        let connection = async {
            if let Some(m) = self.connection {
                connections::run(rt.clone(), m, token.clone()).await;
            }
        };
        let secret_rotation = async {
            if let Some(m) = self.secret_rotation {
                capstan_secret_rotation::controller::run_with(
                    rt.clone(),
                    m,
                    self.secret_rotation_settings,
                    token.clone(),
                )
                .await;
            }
        };
        let service_scaling = async {
            if let Some(m) = self.service_scaling {
                capstan_service_scaling::controller::run_with(
                    rt.clone(),
                    m,
                    self.service_scaling_settings,
                    token.clone(),
                )
                .await;
            }
        };
        let pipeline = async {
            if let Some(m) = self.pipeline {
                capstan_pipeline::controller::run_with(
                    rt.clone(),
                    m,
                    self.pipeline_settings,
                    token.clone(),
                )
                .await;
            }
        };
        tokio::join!(connection, secret_rotation, service_scaling, pipeline);
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// The host name plus a suffix unique to this process, when no pod name is given.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "capstan".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}-{}-{nanos:x}", std::process::id())
}
