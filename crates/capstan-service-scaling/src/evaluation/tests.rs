use super::job::deadline_after;
use super::read::{metric_query, newest};
use super::*;
use std::time::SystemTime;

use crate::algorithm::windows_from_spec;
use capstan_aws::cloudwatch::Datapoint;
use chrono::TimeDelta;
use serde_json::json;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn object(spec: serde_json::Value) -> ServiceScaling {
    serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1", "kind": "ServiceScaling",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": spec
    }))
    .expect("object")
}

/// A missing service is looked for after the interval, then twice, four times...
/// as long, never more than 5 minutes (plus at most 20% jitter), and two objects
/// missing together do not come back at the same instant.
#[test]
fn a_missing_service_backs_off_exponentially_with_a_cap() {
    let key = ("ns".to_owned(), "ghost".to_owned());
    let second = Duration::from_secs(1);
    let waits: Vec<Duration> = (1..=12).map(|n| missing_backoff(second, n, &key)).collect();
    for (n, w) in waits.iter().enumerate() {
        let base = (second * (1u32 << n)).min(MISSING_BACKOFF_MAX);
        assert!(
            *w >= base && *w <= base.mul_f64(1.2),
            "miss {}: {w:?}",
            n + 1
        );
    }
    assert!(waits[11] <= MISSING_BACKOFF_MAX.mul_f64(1.2));
    let others: Vec<Duration> = (0..20)
        .map(|i| missing_backoff(second * 10, 3, &("ns".to_owned(), format!("g{i}"))))
        .collect();
    let distinct: std::collections::BTreeSet<_> = others.iter().collect();
    assert!(distinct.len() > 10, "{others:?}");
}

/// Deadlines sit on the interval's grid (so objects with one interval share a
/// cycle), and come forward for a window change or the end of a pause.
#[test]
fn deadlines_follow_the_grid_windows_and_pauses() {
    let now = t("2026-11-27T10:00:07.300Z");
    let every_15s = Duration::from_secs(15);
    assert_eq!(
        deadline_after(every_15s, &[], None, now),
        t("2026-11-27T10:00:15Z")
    );
    assert_eq!(
        deadline_after(every_15s, &[], None, t("2026-11-27T10:00:15Z")),
        t("2026-11-27T10:00:30Z"),
        "a deadline on the grid moves to the next point"
    );
    let o = object(json!({
        "connectionRef": {"name": "c"},
        "service": {"cluster": "main", "service": "web"},
        "maxReplicas": 10,
        "metrics": [{"cpuUtilization": {"targetPercent": 60}}],
        "schedules": [{"name": "sale", "start": "2026-11-27T10:00:10Z",
            "end": "2026-11-27T11:00:00Z", "minReplicas": 5}]
    }));
    let windows = windows_from_spec(&o.spec).expect("windows");
    assert_eq!(
        deadline_after(every_15s, &windows, None, now),
        t("2026-11-27T10:00:10Z")
    );
    assert_eq!(
        deadline_after(every_15s, &[], Some(t("2026-11-27T10:00:08Z")), now),
        t("2026-11-27T10:00:08Z")
    );
    assert_eq!(
        deadline_after(every_15s, &[], Some(t("2026-11-27T09:00:00Z")), now),
        t("2026-11-27T10:00:15Z"),
        "a pause in the past changes nothing"
    );
}

/// CPU and memory read AWS/ECS with the cluster's and service's names (from ARNs
/// too); a CloudWatch metric keeps its own namespace, dimensions and statistic.
#[test]
fn metric_queries_name_the_service() {
    let o = object(json!({
        "connectionRef": {"name": "c"},
        "service": {"cluster": "arn:aws:ecs:us-east-1:123456789012:cluster/main",
                    "service": "web"},
        "maxReplicas": 10,
        "metricPeriodSeconds": 1,
        "metrics": [
            {"memoryUtilization": {"targetPercent": 70}},
            {"cloudWatch": {"namespace": "AWS/SQS", "metricName": "Depth",
                "dimensions": [{"name": "QueueName", "value": "orders"}],
                "statistic": "Sum", "target": {"averageValuePerTask": 10.0}}}
        ]
    }));
    let mem = metric_query(&o, 0).expect("memory");
    assert_eq!(mem.namespace, "AWS/ECS");
    assert_eq!(mem.metric_name, "MemoryUtilization");
    assert_eq!(mem.stat, "Average");
    assert_eq!(mem.period_seconds, 1);
    assert_eq!(
        mem.dimensions,
        vec![
            ("ClusterName".to_owned(), "main".to_owned()),
            ("ServiceName".to_owned(), "web".to_owned())
        ]
    );
    let sqs = metric_query(&o, 1).expect("sqs");
    assert_eq!(
        (sqs.namespace.as_str(), sqs.stat.as_str()),
        ("AWS/SQS", "Sum")
    );
    assert_eq!(
        sqs.dimensions,
        vec![("QueueName".to_owned(), "orders".to_owned())]
    );
    assert!(metric_query(&o, 2).is_none());
}

/// The newest datapoint inside the lookback wins; none inside it is a failure.
#[test]
fn the_newest_datapoint_in_the_lookback_is_the_value() {
    let now = t("2026-11-27T10:00:00Z");
    let at = |s: i64, value: f64| Datapoint {
        timestamp: SystemTime::from(now - TimeDelta::seconds(s)),
        value,
    };
    let points = [at(50, 10.0), at(5, 30.0), at(20, 20.0)];
    assert_eq!(newest(&points, now, 60), Ok(30.0));
    assert_eq!(newest(&points[..1], now, 60), Ok(10.0));
    let stale = newest(&points[..1], now, 30).expect_err("stale");
    assert!(stale.contains("30s"), "{stale}");
    assert!(newest(&[], now, 30).is_err());
}
