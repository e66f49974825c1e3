//! The evaluation loop: every tick, evaluate every registered object that is due, in
//! batches per ClusterConnection (see the [controller](crate::controller) docs for the
//! design).
//!
//! One cycle of one connection:
//! 1. objects that are suspended or paused are reported as such, with no AWS call;
//! 2. read: DescribeServices per cluster, 10 services per call; one GetMetricData for
//!    every metric of every Direct-mode object whose service exists (500 queries per
//!    call), over the longest lookback among them;
//! 3. per object: a missing cluster or service is `Ready=False` and nothing is written;
//!    Direct mode runs the algorithm and, when the count changes, calls UpdateService
//!    (rate-limited) and publishes a `ScaledUp`/`ScaledDown` Event with the numbers;
//!    ApplicationAutoScaling mode repairs the declared AWS objects;
//! 4. status, written only when it changed; the next deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::crd::ServiceScaling;

mod decide;
mod job;
mod read;

use decide::evaluate_connection;
use job::{Done, Job};
pub use job::{MISSING_BACKOFF_MAX, missing_backoff};

/// How long the loop waits after being woken by a registration, so that objects
/// registered together (a start-up, an `kubectl apply` of many) share one cycle.
const COALESCE: Duration = Duration::from_millis(200);

/// Runs until `shutdown`.
///
/// Each batch (one connection and namespace) runs as its own task, so a namespace whose
/// calls wait for the request budget does not hold back the next cycle of another
/// namespace; an object is never in two batches at once (`busy`).
pub(crate) async fn run_loop(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut batches = tokio::task::JoinSet::new();
    loop {
        let sleep = {
            let entries = ctx.registry.lock();
            let now = ctx.rt.clock.now();
            entries
                .values()
                .filter(|e| !e.busy)
                .map(|e| e.next_eval)
                .min()
                .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_secs(60))
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                batches.abort_all();
                return;
            }
            _ = tokio::time::sleep(sleep) => {}
            Some(_) = batches.join_next(), if !batches.is_empty() => {}
            _ = ctx.registry.wake.notified() => {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        batches.abort_all();
                        return;
                    }
                    _ = tokio::time::sleep(COALESCE) => {}
                }
            }
        }
        prune(&ctx);
        let now = ctx.rt.clock.now();
        let jobs = take_due(&ctx, now);
        if jobs.is_empty() {
            continue;
        }
        // One batch per connection and namespace: each namespace's calls queue under
        // its own fair share of the account's request budget.
        let mut groups: BTreeMap<(String, String), Vec<Job>> = BTreeMap::new();
        for job in jobs {
            groups
                .entry((job.connection.name_any(), job.key.0.clone()))
                .or_default()
                .push(job);
        }
        for ((_, ns), jobs) in groups {
            let ctx = ctx.clone();
            batches.spawn(async move {
                let done =
                    capstan_core::budget::in_namespace(ns, evaluate_batch(&ctx, jobs, now)).await;
                record(&ctx, done, now);
            });
        }
    }
}

/// [`evaluate_connection`] as a boxed `Send` future: proving the future `Send` here,
/// where its lifetimes are concrete, lets the loop spawn it.
fn evaluate_batch<'a>(
    ctx: &'a Ctx,
    jobs: Vec<Job>,
    now: DateTime<Utc>,
) -> futures::future::BoxFuture<'a, Vec<Done>> {
    Box::pin(evaluate_connection(ctx, jobs, now))
}

/// Writes what a batch left behind into the registry.
fn record(ctx: &Ctx, done: Vec<Done>, now: DateTime<Utc>) {
    let mut entries = ctx.registry.lock();
    for d in done {
        if d.gone {
            entries.remove(&d.key);
            continue;
        }
        if let Some(e) = entries.get_mut(&d.key) {
            e.busy = false;
            e.state = d.state;
            e.missing = d.missing;
            if d.status.is_some() {
                e.status = d.status;
            }
            // A spec change during the cycle already asked for an evaluation now.
            if e.next_eval <= now {
                e.next_eval = d.next_eval;
            }
        }
    }
}

/// Drops registered objects the controller's caches no longer hold (deleted), once every
/// cache has synced.
fn prune(ctx: &Ctx) {
    let stores = ctx.stores.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if stores.is_empty()
        || stores
            .iter()
            .any(|(_, synced)| !synced.load(Ordering::Acquire))
    {
        return;
    }
    let mut entries = ctx.registry.lock();
    entries.retain(|(ns, name), e| {
        e.busy || {
            let r = ObjectRef::<ServiceScaling>::new(name).within(ns);
            stores.iter().any(|(s, _)| s.get(&r).is_some())
        }
    });
}

fn take_due(ctx: &Ctx, now: DateTime<Utc>) -> Vec<Job> {
    let mut entries = ctx.registry.lock();
    entries
        .iter_mut()
        .filter(|(_, e)| !e.busy && e.next_eval <= now)
        .map(|(key, e)| {
            e.busy = true;
            Job {
                key: key.clone(),
                obj: e.obj.clone(),
                connection: e.connection.clone(),
                gate: e.gate.clone(),
                inputs: e.inputs.clone(),
                state: e.state.clone(),
                status: e.status.clone(),
                missing: e.missing,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
