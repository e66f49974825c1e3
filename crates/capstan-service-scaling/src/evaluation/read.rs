//! The reads of one batch: its ECS services (DescribeServices, 10 per call, a few calls
//! at once) and the metrics of its Direct-mode objects (GetMetricData, 500 queries per
//! call).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use capstan_aws::cloudwatch::{CloudWatchApi, Datapoint, MetricQuery};
use capstan_aws::ecs::{DESCRIBE_SERVICES_MAX, EcsApi, EcsError, EcsService};
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;

use super::job::Job;
use crate::aas;
use crate::clients::ConnectionClients;
use crate::context::Ctx;
use crate::crd::{MetricKind, ServiceScaling};

/// How many DescribeServices calls of one connection run at once.
const DESCRIBE_CONCURRENCY: usize = 4;

/// The last path segment of a name or ARN (`cluster/main` → `main`).
pub(crate) fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The CloudWatch query of a spec's metric.
pub(crate) fn metric_query(obj: &ServiceScaling, index: usize) -> Option<MetricQuery> {
    let spec = &obj.spec;
    let m = spec.metrics.get(index)?;
    let ecs = |name: &str| MetricQuery {
        namespace: "AWS/ECS".into(),
        metric_name: name.into(),
        dimensions: vec![
            (
                "ClusterName".into(),
                short(&spec.service.cluster).to_owned(),
            ),
            (
                "ServiceName".into(),
                short(&spec.service.service).to_owned(),
            ),
        ],
        stat: "Average".into(),
        period_seconds: spec.metric_period_seconds,
    };
    Some(match m.kind()? {
        MetricKind::Cpu(_) => ecs("CPUUtilization"),
        MetricKind::Memory(_) => ecs("MemoryUtilization"),
        MetricKind::CloudWatch(cw) => MetricQuery {
            namespace: cw.namespace.clone(),
            metric_name: cw.metric_name.clone(),
            dimensions: cw
                .dimensions
                .iter()
                .map(|d| (d.name.clone(), d.value.clone()))
                .collect(),
            stat: aas::statistic_name(cw.statistic).to_owned(),
            period_seconds: spec.metric_period_seconds,
        },
    })
}

/// Why the whole read of a cycle failed, per object.
pub(crate) type Lookup = Result<EcsService, EcsError>;

pub(crate) async fn describe_all(
    clients: &ConnectionClients,
    jobs: &[Job],
) -> HashMap<(String, String), Lookup> {
    let mut by_cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in jobs {
        let s = &job.obj.spec.service;
        let names = by_cluster.entry(s.cluster.clone()).or_default();
        if !names.contains(&s.service) {
            names.push(s.service.clone());
        }
    }
    let calls = by_cluster.into_iter().flat_map(|(cluster, names)| {
        names
            .chunks(DESCRIBE_SERVICES_MAX)
            .map(|chunk| (cluster.clone(), chunk.to_vec()))
            .collect::<Vec<_>>()
    });
    futures::stream::iter(calls)
        .map(|(cluster, names)| async move {
            let result = clients.ecs.describe_services(&cluster, &names).await;
            let entries: Vec<((String, String), Lookup)> = match result {
                Ok(lookups) => names
                    .into_iter()
                    .zip(lookups)
                    .map(|(n, l)| ((cluster.clone(), n), l))
                    .collect(),
                Err(e) => names
                    .into_iter()
                    .map(|n| ((cluster.clone(), n), Err(e.clone())))
                    .collect(),
            };
            entries
        })
        .buffer_unordered(DESCRIBE_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Metric values per (job index, metric index).
pub(crate) async fn read_metrics(
    ctx: &Ctx,
    clients: &ConnectionClients,
    jobs: &[(usize, &Job)],
    now: DateTime<Utc>,
) -> HashMap<(usize, usize), Result<f64, String>> {
    let mut keys = Vec::new();
    let mut queries = Vec::new();
    let mut lookback = 0i64;
    let mut out = HashMap::new();
    for (i, job) in jobs {
        lookback = lookback.max(i64::from(job.obj.spec.metric_lookback_seconds));
        for m in 0..job.obj.spec.metrics.len() {
            match metric_query(&job.obj, m) {
                Some(q) => {
                    keys.push((*i, m));
                    queries.push(q);
                }
                None => {
                    out.insert((*i, m), Err("the metric sets no kind".to_owned()));
                }
            }
        }
    }
    if queries.is_empty() {
        return out;
    }
    let end = SystemTime::from(now);
    let start = SystemTime::from(now - TimeDelta::seconds(lookback.max(1)));
    match clients
        .cloudwatch
        .get_metric_data(&queries, start, end)
        .await
    {
        Ok(series) => {
            for ((i, m), points) in keys.into_iter().zip(series) {
                let job = jobs.iter().find(|(j, _)| *j == i).map(|(_, j)| *j);
                let own = job
                    .map(|j| i64::from(j.obj.spec.metric_lookback_seconds))
                    .unwrap_or(lookback);
                out.insert((i, m), newest(&points, now, own));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for k in keys {
                out.insert(k, Err(msg.clone()));
            }
        }
    }
    let failures = out.values().filter(|v| v.is_err()).count();
    ctx.metrics
        .metric_read_failures
        .inc_by(u64::try_from(failures).unwrap_or(0));
    out
}

/// The newest datapoint no older than `lookback` seconds.
pub(crate) fn newest(
    points: &[Datapoint],
    now: DateTime<Utc>,
    lookback: i64,
) -> Result<f64, String> {
    let cutoff = SystemTime::from(now - TimeDelta::seconds(lookback));
    points
        .iter()
        .filter(|p| p.timestamp >= cutoff)
        .max_by_key(|p| p.timestamp)
        .map(|p| p.value)
        .ok_or_else(|| format!("no datapoint in the last {lookback}s"))
}
