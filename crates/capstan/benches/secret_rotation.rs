//! `make bench`: SecretRotation at scale against the real local environment
//! (kube-apiserver and PostgreSQL from `capstan-testenv`), the manager as a real process
//! (`cargo bench` builds it in release). Prints `FIGURE <name>: <value>` lines; asserts
//! nothing. Bounded: every wait has a deadline, and a figure not reached in time is
//! printed with what was reached.
//!
//! 1. **Rotate now**: 1,000 SecretRotations (Kubernetes Secret backend, PostgreSQL target,
//!    single user, no delivery), each on its own role. After the initial rotations, all
//!    1,000 are annotated `capstan.dev/rotate-now` with a new token at once; the time
//!    from the first annotation until every object has one more rotation and is Ready
//!    again gives rotations per second, for each `--concurrency` of
//!    `CAPSTAN_BENCH_CONCURRENCY` (default `8,32,64`; the manager restarts between).
//! 2. **Idle RSS**: 9,000 more SecretRotations (Kubernetes backend, no target, so their
//!    initial rotations are cheap) make 10,000; once all are idle, the manager's VmRSS and
//!    VmHWM from `/proc`.
//! 3. **Idle writes**: for `CAPSTAN_BENCH_IDLE_SECS` (default 120) with no rotation due,
//!    count what the manager does: watch events on SecretRotations (each one a write of
//!    the object: its resourceVersion changed), on Secrets and on Events in the namespace,
//!    reconciles (`capstan_secret_rotation_reconciles_total`), and PostgreSQL connections
//!    and statements (server log with `log_connections` and `log_statement = 'all'`);
//!    extrapolated linearly to one object and one hour (count / objects × 3600 / window).
//! 4. **Restart**: the manager restarted with the 10,000 objects in place: how long until
//!    every object was reconciled, and its RSS 10 s later.
//!
//! `CAPSTAN_BENCH_MANAGER_ENV` (`K=V;K=V`) adds environment variables to the manager,
//! e.g. `LD_PRELOAD` of a heap profiler.
//!
//! Deadlines: each rotate-now run `CAPSTAN_BENCH_ROTATE_LIMIT_SECS` (180), the idle
//! population's initial rotations `CAPSTAN_BENCH_IDLE_LIMIT_SECS` (300). Smaller
//! populations for a smoke run: `CAPSTAN_BENCH_PG_OBJECTS`, `CAPSTAN_BENCH_IDLE_OBJECTS`.
//!
//! Objects are watched (not listed in a loop) to know when they are done, so the bench
//! costs the API server little besides the manager's own work.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use support::{cpu_secs, env_u64, figure, rss_of};

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use capstan_core::conditions::find;
use capstan_secret_rotation::crd::SecretRotation;
use capstan_testenv::{TempNamespace, TestEnv};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per object: rotations completed while Ready=True/CredentialCurrent (else -1); plus
/// a count of every watch event after the initial list.
#[derive(Default)]
struct Tracker {
    done: Mutex<HashMap<String, i64>>,
    live_events: AtomicU64,
}

impl Tracker {
    /// How many objects named with `prefix` have at least `n` rotations and are Ready.
    fn count_at_least(&self, prefix: &str, n: i64) -> usize {
        self.done
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, v)| k.starts_with(prefix) && **v >= n)
            .count()
    }
}

fn ready_count(o: &SecretRotation) -> i64 {
    let Some(s) = o.status.as_ref() else {
        return -1;
    };
    let ready = find(&s.conditions, "Ready")
        .is_some_and(|c| c.status == "True" && c.reason == "CredentialCurrent");
    if ready && s.rotation.is_none() {
        s.rotation_count
    } else {
        -1
    }
}

fn track_rotations(api: Api<SecretRotation>) -> Arc<Tracker> {
    let t = Arc::new(Tracker::default());
    let t2 = t.clone();
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(watcher::Event::Apply(o)) => {
                    t2.live_events.fetch_add(1, Ordering::Relaxed);
                    let name = o.metadata.name.clone().unwrap_or_default();
                    t2.done.lock().expect("lock").insert(name, ready_count(&o));
                }
                Ok(watcher::Event::InitApply(o)) => {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    t2.done.lock().expect("lock").insert(name, ready_count(&o));
                }
                Ok(watcher::Event::Delete(_)) => {
                    t2.live_events.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => eprintln!("watch SecretRotations: {e}"),
            }
        }
    });
    t
}

/// Counts live watch events (writes after the initial list) of any kind in a namespace.
fn count_writes<K>(api: Api<K>) -> Arc<AtomicU64>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let c = Arc::new(AtomicU64::new(0));
    let c2 = c.clone();
    tokio::spawn(async move {
        let mut s = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = s.next().await {
            if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) = ev {
                c2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    c
}

/// Waits until `n` objects with `prefix` have `rotations` rotations and are Ready, or
/// the deadline; returns how many did and the time it took.
async fn await_done(
    t: &Tracker,
    prefix: &str,
    n: usize,
    rotations: i64,
    start: Instant,
    limit: Duration,
) -> (usize, Duration) {
    loop {
        let done = t.count_at_least(prefix, rotations);
        if done >= n || start.elapsed() >= limit {
            return (done, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn psql(pg: &capstan_testenv::Postgres, sql: &str) -> Result<String, BoxError> {
    let out = Command::new(pg.bin_dir().join("psql"))
        .args([
            pg.admin_url().as_str(),
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// (busy, total) clock ticks of the whole machine.
fn machine_ticks() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds per process of interest (Capstan and the environment's services).
fn cpu_snapshot(capstan: u32) -> Vec<(String, f64)> {
    let mut out = vec![("capstan".to_owned(), cpu_secs(capstan))];
    for p in TestEnv::get().processes() {
        out.push((p.service.clone(), cpu_secs(p.pid)));
    }
    out
}

/// Where the time went between two snapshots: CPU seconds per process and the
/// machine's busy share.
fn cpu_profile(
    label: &str,
    before: &[(String, f64)],
    after: &[(String, f64)],
    ticks: ((u64, u64), (u64, u64)),
    wall: Duration,
) {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let b = before.iter().find(|(bk, _)| bk == k)?.1;
            Some(format!("{k} {:.1}", v - b))
        })
        .collect();
    let ((b0, t0), (b1, t1)) = ticks;
    let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * 100.0;
    figure(
        &format!("{label}.cpu_seconds"),
        format!(
            "{} over {:.1} s wall; machine busy {busy:.0}%",
            parts.join(", "),
            wall.as_secs_f64()
        ),
    );
}

/// The audit lines of one object (time, step, outcome): the latency of each step.
fn timeline(m: &common::Manager, object: &str) {
    let logs = m.logs.lock().expect("lock");
    for l in logs
        .iter()
        .filter(|l| l.contains("capstan::audit") && l.contains(object))
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        let f = &v["fields"];
        println!(
            "  {} {} step={} outcome={}",
            v["timestamp"].as_str().unwrap_or_default(),
            object,
            f["step"]
                .as_str()
                .or(v["step"].as_str())
                .unwrap_or_default(),
            f["outcome"]
                .as_str()
                .or(v["outcome"].as_str())
                .unwrap_or_default()
        );
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn start_manager(
    kube: &'static capstan_testenv::Kube,
    ns: &str,
    concurrency: u64,
) -> common::Manager {
    let c = concurrency.to_string();
    // Extra environment for the manager, `K=V;K=V` (profiling: LD_PRELOAD a heap
    // profiler, or allocator settings).
    let extra_env = std::env::var("CAPSTAN_BENCH_MANAGER_ENV").unwrap_or_default();
    let extra_env: Vec<(&str, &str)> = extra_env
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let args = [
        "--leader-elect=false",
        "--namespaces",
        ns,
        "--own-namespace",
        ns,
        "--controllers",
        "secret-rotation",
        "--concurrency",
        &c,
    ];
    let m = common::start_with_level(
        kube,
        &format!("bench-c{concurrency}"),
        "info",
        &args,
        &extra_env,
    )
    .await;
    m.await_ready(Duration::from_secs(120)).await;
    // The logs are kept in memory by the helper; this bench never reads them.
    m.logs.lock().expect("lock").clear();
    m
}

async fn create_all(
    api: &Api<SecretRotation>,
    objs: Vec<SecretRotation>,
) -> Result<Duration, BoxError> {
    let t = Instant::now();
    stream::iter(objs)
        .map(|o| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &o).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(t.elapsed())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Smaller counts for a smoke run: CAPSTAN_BENCH_PG_OBJECTS, CAPSTAN_BENCH_IDLE_OBJECTS.
    let pg_objects = usize::try_from(env_u64("CAPSTAN_BENCH_PG_OBJECTS", 1000))?;
    let idle_objects = usize::try_from(env_u64("CAPSTAN_BENCH_IDLE_OBJECTS", 10_000))?;
    let env = TestEnv::get();
    let kube = env.kube().await?;
    let pg = env.postgres().await?;
    let ns = TempNamespace::create(kube).await?;
    let nsn = ns.name().to_owned();
    let client = kube.client().await;
    let api: Api<SecretRotation> = ns.api(client.clone());
    let secrets: Api<Secret> = ns.api(client.clone());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "capstan build: {profile}; {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    // 1. Rotate now.
    psql(
        pg,
        &format!(
            "DO $$ BEGIN FOR i IN 1..{pg_objects} LOOP \
             EXECUTE format('CREATE ROLE bench_%s LOGIN', i); END LOOP; END $$"
        ),
    )?;
    let admin: Secret = serde_json::from_value(json!({
        "metadata": { "name": "pg-admin" },
        "stringData": { "username": pg.admin_user(), "password": pg.admin_password() }
    }))?;
    secrets.create(&PostParams::default(), &admin).await?;
    let pg_objs = (1..=pg_objects)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
                "metadata": { "name": format!("pg-{i:05}") },
                "spec": {
                    "backend": { "kubernetes": { "secretName": format!("pg-{i:05}-store") } },
                    "target": { "postgres": {
                        "host": "127.0.0.1", "port": pg.port(), "database": "postgres",
                        "sslMode": "disable", "username": format!("bench_{i}"),
                        "adminSecretRef": { "name": "pg-admin" } } },
                    "strategy": { "singleUser": {} },
                    "schedule": { "interval": "720h" }
                }
            }))
        })
        .collect::<Result<Vec<SecretRotation>, _>>()?;
    let tracker = track_rotations(api.clone());
    let took = create_all(&api, pg_objs).await?;
    figure(
        &format!("secret_rotation.create_{pg_objects}_seconds"),
        format!("{:.1}", took.as_secs_f64()),
    );

    let concurrencies: Vec<u64> = std::env::var("CAPSTAN_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "8,32,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let limit = Duration::from_secs(env_u64("CAPSTAN_BENCH_ROTATE_LIMIT_SECS", 180));
    let mut m = start_manager(kube, &nsn, concurrencies[0]).await;
    let t0 = Instant::now();
    let (n, took) = await_done(&tracker, "pg-", pg_objects, 1, t0, limit).await;
    figure(
        "secret_rotation.initial_rotations_per_second",
        format!(
            "{:.1} ({n}/{pg_objects} in {:.1} s, concurrency {})",
            n as f64 / took.as_secs_f64(),
            took.as_secs_f64(),
            concurrencies[0]
        ),
    );
    let mut rotations = 1;
    let mut best = (0.0_f64, concurrencies[0]);
    for (k, &c) in concurrencies.iter().enumerate() {
        if k > 0 {
            m.child.kill().await?;
            m = start_manager(kube, &nsn, c).await;
            // The restart reconciles every object once (idle: nothing to do).
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        rotations += 1;
        let token = format!("bench-{rotations}");
        m.logs.lock().expect("lock").clear();
        let (cpu0, ticks0) = (cpu_snapshot(m.pid() as u32), machine_ticks());
        let t0 = Instant::now();
        stream::iter(1..=pg_objects)
            .map(|i| {
                let api = api.clone();
                let token = token.clone();
                async move {
                    api.patch(
                        &format!("pg-{i:05}"),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": {
                            "capstan.dev/rotate-now": token }}})),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        let annotated = t0.elapsed();
        let (n, took) = await_done(&tracker, "pg-", pg_objects, rotations, t0, limit).await;
        let rate = n as f64 / took.as_secs_f64();
        cpu_profile(
            &format!("secret_rotation.rotate_now_{pg_objects}.concurrency_{c}"),
            &cpu0,
            &cpu_snapshot(m.pid() as u32),
            (ticks0, machine_ticks()),
            took,
        );
        println!("audit timeline of one object (concurrency {c}):");
        timeline(&m, "pg-00001");
        figure(
            &format!("secret_rotation.rotate_now_{pg_objects}.concurrency_{c}.seconds"),
            format!(
                "{:.1} ({n}/{pg_objects} Ready again; annotating took {:.1} s)",
                took.as_secs_f64(),
                annotated.as_secs_f64()
            ),
        );
        figure(
            &format!(
                "secret_rotation.rotate_now_{pg_objects}.concurrency_{c}.rotations_per_second"
            ),
            format!("{rate:.1}"),
        );
        figure(
            &format!("secret_rotation.rotate_now_{pg_objects}.concurrency_{c}.rss_mib"),
            rss_of(m.pid()),
        );
        if rate > best.0 {
            best = (rate, c);
        }
        if n < pg_objects {
            // Let the stragglers finish before the next run counts from here.
            await_done(
                &tracker,
                "pg-",
                pg_objects,
                rotations,
                Instant::now(),
                limit,
            )
            .await;
        }
    }
    figure(
        &format!("secret_rotation.rotate_now_{pg_objects}.best"),
        format!("{:.1}/s at --concurrency {}", best.0, best.1),
    );
    if m.identity != format!("bench-c{}", best.1) {
        m.child.kill().await?;
        m = start_manager(kube, &nsn, best.1).await;
    }

    // 2. Idle RSS with 10,000 objects.
    let extra = idle_objects - pg_objects;
    let idle_objs = (1..=extra)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1", "kind": "SecretRotation",
                "metadata": { "name": format!("idle-{i:05}") },
                "spec": {
                    "backend": { "kubernetes": { "secretName": format!("idle-{i:05}") } },
                    "target": { "none": {} },
                    "schedule": { "interval": "720h" }
                }
            }))
        })
        .collect::<Result<Vec<SecretRotation>, _>>()?;
    let t0 = Instant::now();
    create_all(&api, idle_objs).await?;
    let idle_limit = Duration::from_secs(env_u64("CAPSTAN_BENCH_IDLE_LIMIT_SECS", 300));
    let (n, took) = await_done(&tracker, "idle-", extra, 1, t0, idle_limit).await;
    figure(
        &format!("secret_rotation.initial_rotations_no_target_{extra}"),
        format!(
            "{n}/{extra} in {:.1} s incl. creating them ({:.1}/s)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    figure(
        &format!("secret_rotation.idle_{idle_objects}.rss_mib"),
        format!(
            "{}; {profile} build, {} objects Ready",
            rss_of(m.pid()),
            tracker.count_at_least("", 1)
        ),
    );

    // 3. Idle writes and backend calls.
    pg.enable_statement_logging().await?;
    psql(pg, "ALTER SYSTEM SET log_connections = 'on'")?;
    psql(pg, "SELECT pg_reload_conf()")?;
    let ev_api: Api<Event> = ns.api(client.clone());
    let secret_writes = count_writes(secrets.clone());
    let event_writes = count_writes(ev_api);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(env_u64("CAPSTAN_BENCH_IDLE_SECS", 120));
    let objects = tracker.done.lock().expect("lock").len();
    let log_len = std::fs::metadata(pg.log_path())?.len();
    let (_, metrics0) = m.get("/metrics").await;
    let (sr0, s0, e0) = (
        tracker.live_events.load(Ordering::Relaxed),
        secret_writes.load(Ordering::Relaxed),
        event_writes.load(Ordering::Relaxed),
    );
    tokio::time::sleep(window).await;
    let (sr1, s1, e1) = (
        tracker.live_events.load(Ordering::Relaxed),
        secret_writes.load(Ordering::Relaxed),
        event_writes.load(Ordering::Relaxed),
    );
    let (_, metrics1) = m.get("/metrics").await;
    let log = std::fs::read(pg.log_path())?;
    let tail = String::from_utf8_lossy(&log[usize::try_from(log_len)?.min(log.len())..]);
    let pg_conns = tail
        .lines()
        .filter(|l| l.contains("connection received"))
        .count();
    let pg_stmts = tail.lines().filter(|l| l.contains("statement:")).count();
    let name = "capstan_secret_rotation_reconciles_total";
    let reconciles = metric(&metrics1, name) - metric(&metrics0, name);
    let per_hour = |count: f64| count / objects as f64 * 3600.0 / window.as_secs_f64();
    println!(
        "idle window {} s over {objects} objects: SecretRotation writes {}, Secret writes {}, \
         Events {}, reconciles {reconciles}, PostgreSQL connections {pg_conns}, statements {pg_stmts}",
        window.as_secs(),
        sr1 - sr0,
        s1 - s0,
        e1 - e0
    );
    let kube_writes = (sr1 - sr0 + s1 - s0 + e1 - e0) as f64;
    figure(
        "secret_rotation.idle.kubernetes_writes_per_object_hour",
        format!("{:.4}", per_hour(kube_writes)),
    );
    figure(
        "secret_rotation.idle.reconciles_per_object_hour",
        format!("{:.4}", per_hour(reconciles)),
    );
    figure(
        "secret_rotation.idle.database_calls_per_object_hour",
        format!("{:.4}", per_hour((pg_conns + pg_stmts) as f64)),
    );
    figure(
        &format!("secret_rotation.idle_{idle_objects}.rss_after_window_mib"),
        rss_of(m.pid()),
    );

    // 4. A restart with every object already there: the whole population is listed and
    //    reconciled at once (each finds nothing due), the burst a cache must survive.
    m.child.kill().await?;
    let t0 = Instant::now();
    let m = start_manager(kube, &nsn, best.1).await;
    let name = "capstan_secret_rotation_reconciles_total";
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut reconciled = 0.0;
    while Instant::now() < deadline {
        let (_, text) = m.get("/metrics").await;
        reconciled = metric(&text, name);
        if reconciled >= idle_objects as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    figure(
        &format!("secret_rotation.restart_{idle_objects}.seconds_to_reconcile_all"),
        format!(
            "{:.1} ({reconciled} reconciles)",
            t0.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    figure(
        &format!("secret_rotation.restart_{idle_objects}.idle_rss_mib"),
        rss_of(m.pid()),
    );
    let mut m = m;
    m.child.kill().await?;
    Ok(())
}
