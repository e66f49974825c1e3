//! CloudWatch: reading metrics in batches, behind the narrow [`CloudWatchApi`] trait.
//!
//! ServiceScaling reads the metrics of every object due for evaluation with as few
//! GetMetricData calls as CloudWatch allows: one call carries up to
//! [`GET_METRIC_DATA_MAX_QUERIES`] queries, each with its own period; one time range
//! serves the whole batch. [`SdkCloudWatch`] splits larger batches and follows
//! `NextToken`.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use aws_smithy_types::DateTime;
use capstan_core::error::Categorized;

/// The SDK, for callers that need a type or call Capstan itself does not wrap (tests
/// publishing datapoints).
pub use aws_sdk_cloudwatch as sdk;

/// The most queries one GetMetricData call accepts.
pub const GET_METRIC_DATA_MAX_QUERIES: usize = 500;

/// One metric series to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricQuery {
    /// The metric's namespace, e.g. `AWS/ECS`.
    pub namespace: String,
    /// The metric's name, e.g. `CPUUtilization`.
    pub metric_name: String,
    /// Dimensions (name, value) selecting one series.
    pub dimensions: Vec<(String, String)>,
    /// The statistic: `Average`, `Sum`, `Minimum`, `Maximum`, `SampleCount`.
    pub stat: String,
    /// The period in seconds (1, 5, 10, 30 or a multiple of 60).
    pub period_seconds: i32,
}

/// One datapoint: the start of its period and the statistic's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Datapoint {
    /// The start of the period.
    pub timestamp: SystemTime,
    /// The value.
    pub value: f64,
}

/// Why a GetMetricData call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudWatchError {
    /// CloudWatch throttled the call.
    #[error("CloudWatch GetMetricData was throttled")]
    Throttled,
    /// Any other failure.
    #[error("CloudWatch GetMetricData failed: {message}")]
    Call {
        /// The error code, if CloudWatch sent one.
        code: Option<String>,
        /// What the SDK reported.
        message: String,
    },
}

impl Categorized for CloudWatchError {
    fn category(&self) -> &'static str {
        match self {
            CloudWatchError::Throttled => "cloudwatch_throttled",
            CloudWatchError::Call { .. } => "cloudwatch_call",
        }
    }
}

/// The CloudWatch calls Capstan makes.
pub trait CloudWatchApi: Send + Sync + Debug {
    /// Reads every query's datapoints between `start` and `end`, newest first, with as
    /// few GetMetricData calls as possible (one per [`GET_METRIC_DATA_MAX_QUERIES`]
    /// queries, plus pages). The result has one entry per query, in order; a series
    /// without data in the range is empty.
    fn get_metric_data(
        &self,
        queries: &[MetricQuery],
        start: SystemTime,
        end: SystemTime,
    ) -> impl Future<Output = Result<Vec<Vec<Datapoint>>, CloudWatchError>> + Send;
}

/// [`CloudWatchApi`] over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkCloudWatch {
    client: aws_sdk_cloudwatch::Client,
    budget: crate::budget::Budget,
}

impl SdkCloudWatch {
    /// Wraps a client (possibly built with interceptors).
    pub fn new(client: aws_sdk_cloudwatch::Client) -> Self {
        Self {
            client,
            budget: crate::budget::Budget::default(),
        }
    }

    /// A client from a configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_cloudwatch::Client::new(config))
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }
}

fn to_query(id: String, q: &MetricQuery) -> MetricDataQuery {
    let mut metric = Metric::builder()
        .namespace(&q.namespace)
        .metric_name(&q.metric_name);
    for (name, value) in &q.dimensions {
        metric = metric.dimensions(Dimension::builder().name(name).value(value).build());
    }
    let stat = MetricStat::builder()
        .metric(metric.build())
        .period(q.period_seconds)
        .stat(&q.stat)
        .build();
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(stat)
        .return_data(true)
        .build()
}

fn to_system_time(t: &DateTime) -> SystemTime {
    let secs = t.secs();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(secs.unsigned_abs(), t.subsec_nanos())
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl CloudWatchApi for SdkCloudWatch {
    async fn get_metric_data(
        &self,
        queries: &[MetricQuery],
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<Vec<Datapoint>>, CloudWatchError> {
        let mut out: Vec<Vec<Datapoint>> = vec![Vec::new(); queries.len()];
        for (chunk_index, chunk) in queries.chunks(GET_METRIC_DATA_MAX_QUERIES).enumerate() {
            let base = chunk_index * GET_METRIC_DATA_MAX_QUERIES;
            let batch: Vec<MetricDataQuery> = chunk
                .iter()
                .enumerate()
                .map(|(i, q)| to_query(format!("q{}", base + i), q))
                .collect();
            let mut next_token: Option<String> = None;
            loop {
                self.budget.acquire(crate::budget::CLOUDWATCH_READ).await;
                let resp = self
                    .client
                    .get_metric_data()
                    .set_metric_data_queries(Some(batch.clone()))
                    .start_time(DateTime::from(start))
                    .end_time(DateTime::from(end))
                    .scan_by(ScanBy::TimestampDescending)
                    .set_next_token(next_token.take())
                    .send()
                    .await
                    .map_err(|e| match e.code() {
                        Some("Throttling" | "ThrottlingException") => CloudWatchError::Throttled,
                        code => CloudWatchError::Call {
                            code: code.map(str::to_owned),
                            message: aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string(),
                        },
                    })?;
                for r in resp.metric_data_results() {
                    let Some(index) = r
                        .id()
                        .and_then(|id| id.strip_prefix('q'))
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|i| *i < out.len())
                    else {
                        continue;
                    };
                    out[index].extend(r.timestamps().iter().zip(r.values()).map(|(t, v)| {
                        Datapoint {
                            timestamp: to_system_time(t),
                            value: *v,
                        }
                    }));
                }
                next_token = resp.next_token().map(str::to_owned);
                if next_token.is_none() {
                    break;
                }
            }
        }
        for series in &mut out {
            series.sort_by_key(|d| std::cmp::Reverse(d.timestamp));
        }
        Ok(out)
    }
}
