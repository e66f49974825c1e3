//! Command-line arguments. Every flag of `capstan run` has an environment fallback
//! (`CAPSTAN_<FLAG>`), so the Helm chart can set them either way.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

/// Capstan: credential rotation, ECS scaling and delivery pipelines, declared in YAML.
#[derive(Debug, Parser)]
#[command(name = "capstan", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers, the admin HTTP server and leader election.
    Run(Box<RunArgs>),
    /// Print every CRD as YAML, or write one file per CRD (what `make generate` does).
    Crd {
        /// Write `<plural>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Print the version.
    Version,
}

/// The controllers `capstan run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControllerName {
    /// ClusterConnection reachability.
    Connection,
    /// SecretRotation.
    SecretRotation,
    /// ServiceScaling.
    ServiceScaling,
    /// Pipeline.
    Pipeline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (the default when stderr is not a terminal).
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Namespaces to watch (comma-separated); all namespaces when empty.
    #[arg(
        long,
        env = "CAPSTAN_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    pub namespaces: Vec<String>,

    /// Controllers to start (comma-separated).
    #[arg(
        long,
        env = "CAPSTAN_CONTROLLERS",
        value_delimiter = ',',
        default_value = "connection,secret-rotation,service-scaling,pipeline"
    )]
    pub controllers: Vec<ControllerName>,

    /// Run leader election on a Lease; only the leader reconciles.
    #[arg(long, env = "CAPSTAN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader election Lease.
    #[arg(long, env = "CAPSTAN_LEASE_NAME", default_value = "capstan-leader")]
    pub lease_name: String,

    /// Namespace of the Lease; defaults to Capstan's own namespace.
    #[arg(long, env = "CAPSTAN_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a lease is valid after its last renewal, in seconds.
    #[arg(long, env = "CAPSTAN_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration: u64,

    /// How long before expiry the holder renews, in seconds.
    #[arg(long, env = "CAPSTAN_LEASE_GRACE", default_value_t = 5)]
    pub lease_grace: u64,

    /// Capstan's own namespace, where connection credential Secrets live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "capstan-system")]
    pub own_namespace: String,

    /// Capstan's service account token, sent to Vault's Kubernetes auth. Read at each
    /// login: kubelet rotates projected tokens.
    #[arg(
        long,
        env = "CAPSTAN_SERVICE_ACCOUNT_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub service_account_token_file: std::path::PathBuf,

    /// This instance's identity (Lease holder, Event reporter); defaults to the pod
    /// name, else the host name plus a random suffix.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Address of the admin HTTP server: /metrics, and /healthz and /readyz unless
    /// `--health-addr` moves them. `HOST:PORT`, or `:PORT` for every interface.
    #[arg(long, env = "CAPSTAN_METRICS_ADDR", default_value = ":8080", value_parser = parse_listen_addr)]
    pub metrics_addr: SocketAddr,

    /// A separate address for the probes (/healthz, /readyz), e.g. to keep them off
    /// the port Prometheus scrapes. Unset: the metrics address serves them too.
    #[arg(long, env = "CAPSTAN_HEALTH_ADDR", value_parser = parse_listen_addr)]
    pub health_addr: Option<SocketAddr>,

    /// The kubeconfig file to use, as kubectl's `--kubeconfig`. Unset: in a Pod, its
    /// service account; elsewhere `KUBECONFIG` or `~/.kube/config`.
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// The kubeconfig context to use, as kubectl's `--context`. Unset: the current one.
    #[arg(long, env = "CAPSTAN_CONTEXT")]
    pub context: Option<String>,

    /// Log format; JSON by default when stderr is not a terminal.
    #[arg(long, env = "CAPSTAN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, in `tracing` env-filter syntax (e.g. `info,capstan=debug`).
    #[arg(long, env = "CAPSTAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Most reconciles one controller runs at once (the chart's `concurrency`, also 4).
    #[arg(long, env = "CAPSTAN_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// How long to wait for the CRDs to be Established before giving up, in seconds.
    #[arg(long, env = "CAPSTAN_CRD_WAIT", default_value_t = 60)]
    pub crd_wait: u64,

    /// How long a deleted ServiceScaling in ApplicationAutoScaling mode waits for Capstan
    /// to remove its scalable target, policies and scheduled actions from AWS (when its
    /// connection no longer allows the namespace, is gone, or AWS keeps failing) before
    /// it is deleted anyway, with a Warning Event naming what was left; in seconds.
    #[arg(
        long,
        env = "CAPSTAN_SCALING_CLEANUP_TIMEOUT",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub scaling_cleanup_timeout: u64,

    /// A SecretRotation whose rotation has been in progress longer than this, and than
    /// five times its usual rotation, is reported stuck (condition Rotating, reason
    /// RotationStuck; gauge capstan_secret_rotation_objects_stuck); in seconds.
    #[arg(
        long,
        env = "CAPSTAN_ROTATION_STUCK_AFTER",
        default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub rotation_stuck_after: u64,

    /// The ValidatingAdmissionPolicy (and binding, of the same name) that verifies who
    /// creates a Pipeline Approval; the chart installs it as `<fullname>-approvals`.
    /// Approvals are honoured only while both exist and hold Capstan's rules; unset,
    /// none is (AwaitingApproval, reason ApprovalPolicyMissing).
    #[arg(long, env = "CAPSTAN_APPROVAL_POLICY")]
    pub approval_policy: Option<String>,

    /// What Pipeline SmokeTest HTTP checks may reach, comma-separated: host names
    /// (`shop.example.com`), `*.` and a domain, address ranges (`10.20.0.0/16`).
    /// Everything else is refused after DNS resolution; loopback and link-local
    /// addresses (the cloud metadata service included) only when their range is listed.
    /// Empty: no check reaches anything.
    #[arg(long, env = "CAPSTAN_HTTP_CHECK_ALLOW", value_delimiter = ',')]
    pub http_check_allow: Vec<String>,

    /// Turn off the AWS SDK's retries (tests against an emulator that answers
    /// unimplemented calls with a retryable 500). Never needed in production.
    #[arg(
        long,
        env = "CAPSTAN_AWS_NO_RETRIES",
        default_value_t = false,
        hide = true
    )]
    pub aws_no_retries: bool,

    /// Overrides of the AWS request budgets, as `family=RATE[/BURST]` (comma-separated;
    /// requests per second, shared by every controller and every connection in one AWS
    /// account and region, served fairly between namespaces). Families: ecs-read,
    /// ecs-write, cloudwatch-read, secretsmanager-read, secretsmanager-write,
    /// autoscaling, rds-read, rds-write, iam. Defaults stay under AWS's published rates (see the README).
    #[arg(long, env = "CAPSTAN_AWS_BUDGET", value_delimiter = ',')]
    pub aws_budget: Vec<String>,
}

/// A listen address: `HOST:PORT`, `[V6]:PORT`, or `:PORT` for every interface (as Go
/// programs such as kube-state-metrics and the Prometheus operator accept).
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse()
        .map_err(|_| format!("{text:?} is not an address: use HOST:PORT, [IPv6]:PORT or :PORT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_the_go_forms() {
        assert_eq!(
            parse_listen_addr(":8080"),
            Ok("0.0.0.0:8080".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:0"),
            Ok("127.0.0.1:0".parse().expect("addr"))
        );
        assert_eq!(
            parse_listen_addr("[::]:9090"),
            Ok("[::]:9090".parse().expect("addr"))
        );
        for bad in ["8080", "localhost:8080", ":", ":http", ""] {
            assert!(parse_listen_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn run_takes_kubectl_flags_and_separate_probe_and_metrics_addresses() {
        let cli = Cli::try_parse_from([
            "capstan",
            "run",
            "--kubeconfig",
            "/tmp/kc",
            "--context",
            "staging",
            "--metrics-addr",
            ":9090",
            "--health-addr",
            "127.0.0.1:8081",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run");
        };
        assert_eq!(
            args.kubeconfig.as_deref(),
            Some(std::path::Path::new("/tmp/kc"))
        );
        assert_eq!(args.context.as_deref(), Some("staging"));
        assert_eq!(args.metrics_addr, "0.0.0.0:9090".parse().expect("addr"));
        assert_eq!(
            args.health_addr,
            Some("127.0.0.1:8081".parse().expect("addr"))
        );
        assert_eq!(args.concurrency, 4);
    }
}
