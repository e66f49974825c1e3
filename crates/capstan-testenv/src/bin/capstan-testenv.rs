//! `capstan-testenv up`: the test environment as a long-lived local control plane (for
//! `make demo` and for poking at the services by hand).

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use capstan_testenv::{Options, TestEnv};

#[derive(Debug, Parser)]
#[command(
    name = "capstan-testenv",
    about = "Capstan's local test environment on 127.0.0.1"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start services, write DIR/kubeconfig and DIR/env, run until SIGINT or SIGTERM,
    /// then stop everything.
    Up {
        /// Where to write `kubeconfig`, `env` (shell-sourceable) and `services.json`.
        #[arg(long)]
        state_dir: PathBuf,
        /// Which services to start.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "k8s,aws,vault,postgres,mariadb"
        )]
        services: Vec<Service>,
        /// Log every SQL statement (PostgreSQL log_statement=all, MariaDB general log).
        #[arg(long)]
        log_statements: bool,
        /// Keep the temporary directory (logs, data) after stopping.
        #[arg(long)]
        keep: bool,
        /// Install Capstan's ServiceAccount and RBAC as the Helm chart renders them with
        /// its default values, into this release namespace (created if missing), and
        /// write DIR/capstan.kubeconfig (that ServiceAccount's token) and DIR/capstan.args
        /// (the chart's `capstan run` arguments, one a line).
        #[arg(long, value_name = "NAMESPACE")]
        install_capstan: Option<String>,
        /// An argument that overrides or extends the chart's in DIR/capstan.args
        /// (repeatable), e.g. `--capstan-arg=--metrics-addr=127.0.0.1:0`.
        #[arg(long, allow_hyphen_values = true)]
        capstan_arg: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    K8s,
    Aws,
    Vault,
    Postgres,
    Mariadb,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capstan-testenv: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Up {
            state_dir,
            services,
            log_statements,
            keep,
            install_capstan,
            capstan_arg,
        } => {
            let mut options = Options::from_env();
            options.log_statements |= log_statements;
            options.keep |= keep;
            let env = TestEnv::new(options);
            let install = install_capstan.map(|ns| (ns, capstan_arg));
            let code = runtime.block_on(up(&env, &state_dir, &services, install));
            env.shutdown();
            remove_state(&state_dir);
            eprintln!("capstan-testenv: stopped");
            code
        }
    }
}

type Starting<'a> = Pin<Box<dyn Future<Output = capstan_testenv::Result<()>> + 'a>>;

/// Capstan's release namespace and the argument overrides, for `--install-capstan`.
type Install = Option<(String, Vec<String>)>;

async fn up(env: &TestEnv, state_dir: &Path, services: &[Service], install: Install) -> ExitCode {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("capstan-testenv: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state_dir = match std::fs::create_dir_all(state_dir).and_then(|()| state_dir.canonicalize())
    {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("capstan-testenv: state dir {}: {e}", state_dir.display());
            return ExitCode::FAILURE;
        }
    };
    remove_state(&state_dir);

    let started = Instant::now();
    let mut starting: Vec<Starting<'_>> = Vec::new();
    for service in services {
        starting.push(match service {
            Service::K8s => Box::pin(async { env.kube().await.map(drop) }),
            Service::Aws => Box::pin(async { env.aws().await.map(drop) }),
            Service::Vault => Box::pin(async { env.vault().await.map(drop) }),
            Service::Postgres => Box::pin(async { env.postgres().await.map(drop) }),
            Service::Mariadb => Box::pin(async { env.mariadb().await.map(drop) }),
        });
    }
    tokio::select! {
        res = futures::future::try_join_all(starting) => {
            if let Err(e) = res {
                eprintln!("capstan-testenv: {e}");
                return ExitCode::FAILURE;
            }
        }
        _ = term.recv() => return ExitCode::from(143),
        _ = int.recv() => return ExitCode::from(130),
    }
    let total = started.elapsed();

    if let Some((namespace, overrides)) = install
        && let Err(e) = install_capstan(env, &state_dir, &namespace, &overrides).await
    {
        eprintln!("capstan-testenv: installing Capstan's RBAC: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = write_state(env, &state_dir, total) {
        eprintln!("capstan-testenv: writing {}: {e}", state_dir.display());
        return ExitCode::FAILURE;
    }
    print_summary(env, &state_dir, total);

    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("capstan-testenv: stopping");
    ExitCode::SUCCESS
}

/// Installs the chart's ServiceAccount and RBAC (default values) into `namespace` and
/// writes `capstan.kubeconfig`, `capstan.args` and `capstan.user` into `dir`.
async fn install_capstan(
    env: &TestEnv,
    dir: &Path,
    namespace: &str,
    overrides: &[String],
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::Namespace;
    let kube = env.kube().await.map_err(|e| e.to_string())?;
    let namespaces: kube::Api<Namespace> = kube::Api::all(kube.client().await);
    if namespaces
        .get_opt(namespace)
        .await
        .map_err(|e| e.to_string())?
        .is_none()
    {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": namespace }
        }))
        .map_err(|e| e.to_string())?;
        namespaces
            .create(&kube::api::PostParams::default(), &ns)
            .await
            .map_err(|e| e.to_string())?;
    }
    let opts = capstan_testenv::InstallOptions {
        namespace: namespace.to_owned(),
        leader_elect: true,
        ..Default::default()
    };
    let installed = kube
        .install_capstan(&opts)
        .await
        .map_err(|e| e.to_string())?;
    std::fs::copy(&installed.kubeconfig_path, dir.join("capstan.kubeconfig"))
        .map_err(|e| e.to_string())?;
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    let mut args = installed.run_args(&overrides).join("\n");
    args.push('\n');
    std::fs::write(dir.join("capstan.args"), args).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("capstan.user"),
        format!("{}\n", installed.username),
    )
    .map_err(|e| e.to_string())
}

fn remove_state(dir: &Path) {
    for name in [
        "env",
        "kubeconfig",
        "services.json",
        "capstan.kubeconfig",
        "capstan.args",
        "capstan.user",
    ] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn write_state(env: &TestEnv, dir: &Path, total: std::time::Duration) -> std::io::Result<()> {
    let mut vars: Vec<(&str, String)> = vec![
        ("CAPSTAN_TESTENV_PID", std::process::id().to_string()),
        (
            "CAPSTAN_TESTENV_DIR",
            env.dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        ),
    ];
    if let Some(kube) = env.kube_if_started() {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kube.kubeconfig_yaml())?;
        vars.push(("KUBECONFIG", path.display().to_string()));
        vars.push((
            "CAPSTAN_KUBE_APISERVER_URL",
            kube.api_server_url().to_owned(),
        ));
        vars.push((
            "CAPSTAN_AUDIT_LOG",
            kube.audit_log_path().display().to_string(),
        ));
    }
    if let Some(aws) = env.aws_if_started() {
        vars.push(("AWS_ENDPOINT_URL", aws.endpoint_url().to_owned()));
        vars.push((
            "AWS_ACCESS_KEY_ID",
            capstan_testenv::TEST_ACCESS_KEY_ID.to_owned(),
        ));
        vars.push((
            "AWS_SECRET_ACCESS_KEY",
            capstan_testenv::TEST_SECRET_ACCESS_KEY.to_owned(),
        ));
        vars.push(("AWS_REGION", aws.region().to_owned()));
        vars.push(("AWS_DEFAULT_REGION", aws.region().to_owned()));
        vars.push(("CAPSTAN_MOTO_LOG", aws.log_path().display().to_string()));
    }
    if let Some(vault) = env.vault_if_started() {
        for (addr, token) in [("VAULT_ADDR", "VAULT_TOKEN"), ("BAO_ADDR", "BAO_TOKEN")] {
            vars.push((addr, vault.addr().to_owned()));
            vars.push((token, vault.root_token().to_owned()));
        }
    }
    if let Some(pg) = env.postgres_if_started() {
        vars.push(("PGHOST", pg.host().to_owned()));
        vars.push(("PGPORT", pg.port().to_string()));
        vars.push(("PGUSER", pg.admin_user().to_owned()));
        vars.push(("PGPASSWORD", pg.admin_password().to_owned()));
        vars.push(("PGDATABASE", "postgres".to_owned()));
        vars.push(("POSTGRES_URL", pg.admin_url()));
        vars.push(("CAPSTAN_POSTGRES_LOG", pg.log_path().display().to_string()));
    }
    if let Some(db) = env.mariadb_if_started() {
        vars.push(("MARIADB_HOST", db.host().to_owned()));
        vars.push(("MARIADB_PORT", db.port().to_string()));
        vars.push(("MARIADB_USER", db.admin_user().to_owned()));
        vars.push(("MARIADB_PASSWORD", db.admin_password().to_owned()));
        vars.push(("MARIADB_URL", db.admin_url()));
        vars.push(("MARIADB_SOCKET", db.socket_path().display().to_string()));
        vars.push(("CAPSTAN_MARIADB_LOG", db.log_path().display().to_string()));
    }
    let mut text = String::from(
        "# Written by `capstan-testenv up`; valid while it runs. Source it: . ./env\n",
    );
    for (name, value) in &vars {
        let _ = writeln!(text, "export {name}={}", sh_quote(value));
    }

    let services = serde_json::json!({
        "pid": std::process::id(),
        "dir": env.dir(),
        "total_ms": total.as_millis(),
        "processes": env.processes(),
        "timings": env.timings().iter().map(|t| serde_json::json!({
            "service": t.service,
            "ms": t.ready_after.as_millis(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("services.json"),
        serde_json::to_string_pretty(&services).unwrap_or_default(),
    )?;
    // The env file last, atomically: its presence means "ready".
    let tmp = dir.join("env.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("env"))
}

fn print_summary(env: &TestEnv, dir: &Path, total: std::time::Duration) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "capstan-testenv: ready in {:.1} s",
        total.as_secs_f64()
    );
    for t in env.timings() {
        let _ = writeln!(
            out,
            "  {:<26} ready after {:>6.2} s",
            t.service,
            t.ready_after.as_secs_f64()
        );
    }
    if let Some(kube) = env.kube_if_started() {
        let _ = writeln!(out, "  Kubernetes  {}", kube.api_server_url());
    }
    if let Some(aws) = env.aws_if_started() {
        let _ = writeln!(out, "  AWS (moto)  {}", aws.endpoint_url());
    }
    if let Some(vault) = env.vault_if_started() {
        let _ = writeln!(out, "  OpenBao     {}", vault.addr());
    }
    if let Some(pg) = env.postgres_if_started() {
        let _ = writeln!(out, "  PostgreSQL  127.0.0.1:{}", pg.port());
    }
    if let Some(db) = env.mariadb_if_started() {
        let _ = writeln!(out, "  MariaDB     127.0.0.1:{}", db.port());
    }
    if let Some(tmp) = env.dir() {
        let _ = writeln!(out, "  logs and data: {}", tmp.display());
    }
    let _ = writeln!(
        out,
        "  source {}/env  (KUBECONFIG, AWS_*, VAULT_*, PG*, MARIADB_*)",
        dir.display()
    );
    let _ = writeln!(
        out,
        "  stop with Ctrl-C or SIGTERM (pid {})",
        std::process::id()
    );
    print!("{out}");
}
