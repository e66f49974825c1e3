//! The `ServiceScaling` custom resource (`capstan.dev/v1alpha1`): scale one ECS service on
//! CPU, memory and CloudWatch metrics with the Kubernetes HPA v2 semantics, with
//! scheduled windows that move the bounds and a fallback for failing metrics.
//!
//! Validation that the schema can express lives here, so bad input is refused at
//! admission with a field path: bounds (`minimum`), `pattern`s for durations, cron
//! expressions and time zones, and CEL rules (`x-kubernetes-validations`) for the rules
//! that span fields (min ≤ max, exactly one metric kind, one schedule form, end after
//! start). Defaults for nested optional objects (behavior) are the HPA's and are applied
//! by the algorithm, not by the API server: see [`crate::algorithm::ResolvedBehavior`].

use capstan_core::connection::ConnectionRef;
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use capstan_core::schedule::{
    CRON_MAX_LENGTH, CRON_PATTERN, DurationString, TIME_ZONE_MAX_LENGTH, TIME_ZONE_PATTERN,
    min_duration_message, rule_min_duration,
};

/// Condition type: the controller can read and scale the service (HPA `AbleToScale`).
pub const CONDITION_ABLE_TO_SCALE: &str = "AbleToScale";
/// Condition type: metrics were computed and drive the replica count (HPA
/// `ScalingActive`). `False` while suspended, paused, disabled (0 running) or when every
/// metric fails.
pub const CONDITION_SCALING_ACTIVE: &str = "ScalingActive";
/// Condition type: the desired count was clamped by the bounds or a rate policy (HPA
/// `ScalingLimited`).
pub const CONDITION_SCALING_LIMITED: &str = "ScalingLimited";

/// Scales one ECS service between bounds, on metrics, with the Kubernetes HPA v2
/// semantics.
// Each printcolumn repeats `type_ = ...`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "ServiceScaling",
    namespaced,
    status = "ServiceScalingStatus",
    shortname = "ssc",
    category = "capstan",
    derive = "PartialEq",
    doc = "ServiceScaling scales one ECS service on CPU, memory and CloudWatch metrics with the Kubernetes HPA v2 semantics, with scheduled windows that move its bounds.",
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.service.service"
    ),
    printcolumn(name = "Min", type_ = "integer", json_path = ".spec.minReplicas"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.maxReplicas"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.runningReplicas"
    ),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ScalingActive\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the last evaluation read the service and applied its decision"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why Ready has its status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "What Ready's reason means for this object",
        priority = 1
    )
)]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("self.metricLookbackSeconds >= self.metricPeriodSeconds").message("metricLookbackSeconds must be at least metricPeriodSeconds").field_path(".metricLookbackSeconds"),
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceScalingSpec {
    /// The cluster-scoped ClusterConnection (AWS account, region and role, owned by the
    /// cluster admin) through which the service is read and scaled.
    pub connection_ref: ConnectionRef,

    /// The ECS service to scale.
    pub service: EcsServiceReference,

    /// The lowest number of tasks outside scheduled windows (default 1). At least 1: as
    /// with the HPA, a service with 0 tasks has no utilization to scale on, and a service
    /// scaled to 0 by hand is left alone (autoscaling disabled) until it is scaled up again.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,

    /// The highest number of tasks outside scheduled windows. At least minReplicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// The metrics to scale on. Each proposes a task count; the largest proposal wins.
    #[schemars(length(min = 1, max = 20))]
    pub metrics: Vec<MetricSpec>,

    /// How far a metric may drift from its target, as a fraction of the target, before
    /// the service is scaled: a non-negative decimal string such as "0.1", "0.05" or
    /// "2.0", or a milli-quantity such as "100m" (the HPA's Quantity forms; default
    /// "0.1", the HPA's 10%). Within 1-tolerance ≤ value/target ≤ 1+tolerance (both
    /// ends inclusive) nothing changes, so "2.0" scales up only above 300% of the
    /// target, and a tolerance of 1 or more never scales down. behavior.scaleUp.tolerance
    /// and behavior.scaleDown.tolerance override it one direction at a time.
    #[serde(default = "default_tolerance")]
    pub tolerance: Tolerance,

    /// Stabilization windows and rate policies for scaling up and down, as in the HPA v2
    /// `behavior` field. Omitted parts take the HPA defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehavior>,

    /// Named windows that replace minReplicas and/or maxReplicas while they are open,
    /// e.g. a floor of 20 tasks for a sales event. Metric scaling keeps working inside
    /// the window's bounds. When several windows are open, the highest minReplicas among
    /// those that set one is the floor, the highest maxReplicas among those that set one
    /// is the ceiling, and a floor above the ceiling raises the ceiling to the floor.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<ScheduleWindow>,

    /// What to do when metrics keep failing. Without it, failing metrics hold the current
    /// count (the HPA's behavior).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,

    /// Stop evaluating and scaling; the service keeps its current task count.
    #[serde(default)]
    pub suspend: bool,

    /// Stop evaluating and scaling until this time (RFC 3339), then resume by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<DateTime<Utc>>,

    /// How often metrics are read and the algorithm runs, as a duration such as "15s"
    /// or "1m" (default "15s", the HPA's sync period). At least "1s".
    #[serde(default = "default_evaluation_interval")]
    #[x_kube(validation = Rule::new(rule_min_duration()).message(min_duration_message("evaluationInterval").as_str()))]
    pub evaluation_interval: DurationString,

    /// The CloudWatch period, in seconds, of every metric read (default 60, the period
    /// at which ECS publishes CPUUtilization and MemoryUtilization): 1, 5, 10 or 30 for
    /// high-resolution metrics, else a multiple of 60. Each evaluation uses the newest
    /// datapoint at this period.
    #[serde(default = "default_metric_period_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    #[x_kube(validation = Rule::new("self in [1, 5, 10, 30] || self % 60 == 0").message("metricPeriodSeconds must be 1, 5, 10, 30 or a multiple of 60"))]
    pub metric_period_seconds: i32,

    /// How far back, in seconds, an evaluation looks for the newest datapoint (default
    /// 300). CloudWatch publishes ECS metrics a minute or two late, so this must cover
    /// that delay; a metric with no datapoint in the window counts as failed to read.
    /// At least metricPeriodSeconds.
    #[serde(default = "default_metric_lookback_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub metric_lookback_seconds: i32,

    /// How the decision is applied. Direct (default): Capstan runs the algorithm and
    /// sets the service's desired count with ECS UpdateService, and is the only writer
    /// of it. ApplicationAutoScaling: Capstan declares the service's Application Auto
    /// Scaling scalable target (bounds minReplicas..maxReplicas, moved by the open
    /// schedule windows), one target-tracking policy per metric and scheduled actions
    /// for the next window changes, repairs them when they drift, and never writes the
    /// desired count itself; AWS scales. In that mode a cloudWatch metric must use a
    /// `value` target.
    #[serde(default)]
    pub mode: ScalingMode,
}

fn default_metric_period_seconds() -> i32 {
    60
}

fn default_metric_lookback_seconds() -> i32 {
    300
}

fn default_min_replicas() -> i32 {
    1
}

fn default_tolerance() -> Tolerance {
    Tolerance::default()
}

fn default_evaluation_interval() -> DurationString {
    DurationString::new("15s").unwrap_or_else(|_| unreachable!("15s is a valid duration"))
}

/// An ECS service, by cluster and service name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcsServiceReference {
    /// The ECS cluster's name or ARN.
    #[schemars(length(min = 1, max = 2048))]
    pub cluster: String,
    /// The ECS service's name or ARN.
    #[schemars(length(min = 1, max = 2048))]
    pub service: String,
}

/// One metric to scale on. Exactly one of cpuUtilization, memoryUtilization and
/// cloudWatch is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.cpuUtilization) ? 1 : 0) + (has(self.memoryUtilization) ? 1 : 0) + (has(self.cloudWatch) ? 1 : 0) == 1").message("exactly one of cpuUtilization, memoryUtilization or cloudWatch must be set"))]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// Average CPU utilization of the service's running tasks (CloudWatch AWS/ECS
    /// CPUUtilization), as a percentage of the tasks' reserved CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_utilization: Option<UtilizationTarget>,

    /// Average memory utilization of the service's running tasks (CloudWatch AWS/ECS
    /// MemoryUtilization), as a percentage of the tasks' reserved memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_utilization: Option<UtilizationTarget>,

    /// Any CloudWatch metric, with a target for its total value or its value per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_watch: Option<CloudWatchMetric>,
}

/// The kind of a [`MetricSpec`], once validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricKind<'a> {
    /// CPU utilization.
    Cpu(&'a UtilizationTarget),
    /// Memory utilization.
    Memory(&'a UtilizationTarget),
    /// A CloudWatch metric.
    CloudWatch(&'a CloudWatchMetric),
}

impl MetricSpec {
    /// The one kind that is set, or `None` when zero or several are (admission refuses
    /// those; this guards objects stored before the rule existed).
    pub fn kind(&self) -> Option<MetricKind<'_>> {
        match (
            &self.cpu_utilization,
            &self.memory_utilization,
            &self.cloud_watch,
        ) {
            (Some(t), None, None) => Some(MetricKind::Cpu(t)),
            (None, Some(t), None) => Some(MetricKind::Memory(t)),
            (None, None, Some(m)) => Some(MetricKind::CloudWatch(m)),
            _ => None,
        }
    }

    /// A short, stable name for status and logs: `cpu`, `memory`, or
    /// `<namespace>/<metricName>`.
    pub fn display_name(&self) -> String {
        match self.kind() {
            Some(MetricKind::Cpu(_)) => "cpu".to_owned(),
            Some(MetricKind::Memory(_)) => "memory".to_owned(),
            Some(MetricKind::CloudWatch(m)) => format!("{}/{}", m.namespace, m.metric_name),
            None => "invalid".to_owned(),
        }
    }
}

/// A target average utilization.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UtilizationTarget {
    /// The utilization to hold, in percent of the reservation (greater than 0; ECS
    /// utilization can exceed 100 when tasks burst above their reservation).
    #[schemars(range(min = 1, max = 1000))]
    pub target_percent: i32,
}

/// A CloudWatch metric and its target.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudWatchMetric {
    /// The metric's namespace, e.g. "AWS/SQS".
    #[schemars(length(min = 1, max = 255))]
    pub namespace: String,
    /// The metric's name, e.g. "ApproximateNumberOfMessagesVisible".
    #[schemars(length(min = 1, max = 255))]
    pub metric_name: String,
    /// The dimensions that select one series, e.g. QueueName=orders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 30))]
    pub dimensions: Vec<MetricDimension>,
    /// The statistic over each period.
    pub statistic: Statistic,
    /// The value to hold.
    pub target: CloudWatchTarget,
}

/// One CloudWatch dimension.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricDimension {
    /// The dimension's name.
    #[schemars(length(min = 1, max = 255))]
    pub name: String,
    /// The dimension's value.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// A CloudWatch statistic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Statistic {
    /// The average of the datapoints.
    Average,
    /// The sum of the datapoints.
    Sum,
    /// The lowest datapoint.
    Minimum,
    /// The highest datapoint.
    Maximum,
    /// The number of datapoints.
    SampleCount,
}

/// The target of a CloudWatch metric. Exactly one of value and averageValuePerTask is
/// set; both are greater than 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.averageValuePerTask)").message("exactly one of value or averageValuePerTask must be set"))]
#[serde(rename_all = "camelCase")]
pub struct CloudWatchTarget {
    /// The metric's total to hold across the service (HPA External `Value`): the task
    /// count moves in proportion to value/target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_number")]
    pub value: Option<f64>,
    /// The metric's value per running task to hold (HPA External `AverageValue`): the
    /// proposal is ceil(metric/averageValuePerTask), e.g. queue depth per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_number")]
    pub average_value_per_task: Option<f64>,
}

fn positive_number(_generator: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": true,
    })
}

/// A tolerance: a non-negative decimal string ("0.1", ".05", "2.0") or a
/// milli-quantity ("100m"), the forms of the HPA's `resource.Quantity` a tolerance is
/// written in. The HPA accepts any non-negative quantity (a scale-up band of 200% is
/// "2.0"); so does Capstan. Exponent and binary-suffix forms ("1e-1", "1Ki") are not
/// accepted: nobody writes a tolerance that way.
///
/// A string rather than a JSON number, so `0.1` is exactly what was written (the HPA
/// converts its Quantity with `AsApproximateFloat64`, as [`Tolerance::fraction`] does)
/// and the schema can refuse a negative value with a pattern.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(transparent)]
pub struct Tolerance(String);

/// The `pattern` of [`Tolerance`]: digits with an optional fraction (or a bare
/// fraction), optionally followed by `m` (thousandths). No sign: negative is refused.
pub const TOLERANCE_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)m?$";

/// The longest tolerance string the schema accepts.
pub const TOLERANCE_MAX_LENGTH: usize = 20;

impl Default for Tolerance {
    fn default() -> Self {
        Self("0.1".to_owned())
    }
}

impl Tolerance {
    /// A tolerance from a string, validated as the schema does.
    pub fn new(value: impl Into<String>) -> Option<Self> {
        let t = Self(value.into());
        t.fraction().map(|_| t)
    }

    /// The string as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tolerance as a fraction (`"100m"` and `"0.1"` are both 0.1), or `None` if the
    /// string is not a valid tolerance (the same grammar as [`TOLERANCE_PATTERN`]).
    pub fn fraction(&self) -> Option<f64> {
        let s = self.0.as_str();
        if s.len() > TOLERANCE_MAX_LENGTH {
            return None;
        }
        let (number, scale) = match s.strip_suffix('m') {
            Some(n) => (n, 1000.0),
            None => (s, 1.0),
        };
        let (int, frac) = match number.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (number, None),
        };
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        let valid = match frac {
            None => digits(int),
            Some(f) => digits(f) && (int.is_empty() || digits(int)),
        };
        if !valid {
            return None;
        }
        let v: f64 = number.parse().ok()?;
        Some(v / scale).filter(|v| v.is_finite())
    }
}

impl JsonSchema for Tolerance {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Tolerance".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": TOLERANCE_PATTERN,
            "maxLength": TOLERANCE_MAX_LENGTH,
        })
    }
}

/// Scale-up and scale-down rules (the HPA v2 `behavior`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// Rules for scaling up. Defaults: stabilizationWindowSeconds 0, selectPolicy Max,
    /// policies [Pods 4 per 15 s, Percent 100 per 15 s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// Rules for scaling down. Defaults: stabilizationWindowSeconds 300, selectPolicy
    /// Max, policies [Percent 100 per 15 s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// Rules for one direction. A field left out takes the direction's HPA default; a
/// policies list replaces the default list entirely.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// How far back, in seconds, past recommendations are considered: scaling up follows
    /// the lowest recommendation in the window and scaling down the highest, so a brief
    /// spike or dip does not move the service. 0 to 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: Option<i32>,
    /// Which policy limit applies when several do: Max allows the largest change, Min
    /// the smallest, Disabled forbids scaling in this direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,
    /// Rate limits on how much the task count may change within a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10))]
    pub policies: Option<Vec<ScalingPolicy>>,
    /// Overrides spec.tolerance for this direction only (same format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<Tolerance>,
}

/// How to pick among policy limits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectPolicy {
    /// The policy that allows the largest change.
    Max,
    /// The policy that allows the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// One rate limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Pods: a number of tasks; Percent: a percentage of the count at the start of the
    /// period.
    #[serde(rename = "type")]
    pub type_: PolicyType,
    /// How many tasks, or what percentage, may be added or removed per period (> 0).
    #[schemars(range(min = 1))]
    pub value: i32,
    /// The period, in seconds, over which past changes count against the limit (1 to
    /// 1800).
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
}

/// The unit of a policy's value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PolicyType {
    /// A number of tasks.
    Pods,
    /// A percentage of the current task count.
    Percent,
}

/// A window during which other bounds apply: either a cron start plus a duration, or an
/// absolute start and end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.cron) != has(self.start)").message("set either cron (with duration) or start (with end), not both and not neither"),
    validation = Rule::new("!has(self.cron) || has(self.duration)").message("a cron window needs a duration").field_path(".duration"),
    validation = Rule::new("!has(self.start) || has(self.end)").message("a window with a start needs an end").field_path(".end"),
    validation = Rule::new("!has(self.end) || has(self.start)").message("end is only valid with start").field_path(".end"),
    validation = Rule::new("!has(self.duration) || has(self.cron)").message("duration is only valid with cron").field_path(".duration"),
    validation = Rule::new("!has(self.timeZone) || has(self.cron)").message("timeZone is only valid with cron; start and end carry their own offset").field_path(".timeZone"),
    validation = Rule::new("!has(self.start) || !has(self.end) || self.end > self.start").message("end must be after start").field_path(".end"),
    validation = Rule::new("has(self.minReplicas) || has(self.maxReplicas)").message("a window must set minReplicas, maxReplicas or both"),
    validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must be less than or equal to maxReplicas").field_path(".minReplicas"),
)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleWindow {
    /// The window's name, unique within the object, e.g. "black-friday".
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// A 5-field cron expression (minute hour day-of-month month day-of-week) or a macro
    /// such as "@daily"; the window opens at each time it fires, in timeZone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = CRON_MAX_LENGTH), regex(pattern = CRON_PATTERN))]
    pub cron: Option<String>,

    /// The IANA time zone of cron, e.g. "America/New_York" (default UTC). In the skipped
    /// hour of a DST change a window set to open then opens at the end of the gap; in the
    /// repeated hour it opens once, at the first occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = TIME_ZONE_MAX_LENGTH), regex(pattern = TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,

    /// How long a cron window stays open after each firing, e.g. "14h" (at least "1s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(rule_min_duration()).message(min_duration_message("duration").as_str()))]
    pub duration: Option<DurationString>,

    /// When an absolute window opens (RFC 3339, e.g. "2026-11-27T00:00:00-05:00").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,

    /// When an absolute window closes (RFC 3339), after start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,

    /// The floor while the window is open (replaces spec.minReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,

    /// The ceiling while the window is open (replaces spec.maxReplicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
}

/// What to do when metrics keep failing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.action != 'SetReplicas' || has(self.replicas)").message("action SetReplicas needs replicas").field_path(".replicas"),
    validation = Rule::new("self.action == 'SetReplicas' || !has(self.replicas)").message("replicas is only valid with action SetReplicas").field_path(".replicas"),
)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// How many evaluations in a row must fail (every metric failing) before the action
    /// is taken (at least 1).
    #[schemars(range(min = 1, max = 1000))]
    pub after_failed_evaluations: i32,
    /// Hold keeps the current task count; SetReplicas moves to replicas, clamped to the
    /// bounds in force.
    pub action: FallbackAction,
    /// The task count for SetReplicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replicas: Option<i32>,
}

/// A fallback action.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FallbackAction {
    /// Keep the current task count.
    Hold,
    /// Go to a declared task count.
    SetReplicas,
}

/// How a decision is applied to the service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ScalingMode {
    /// Capstan computes the desired count and sets it with ECS UpdateService.
    #[default]
    Direct,
    /// Capstan declares the Application Auto Scaling scalable target, target-tracking
    /// policies and scheduled actions for the spec and repairs drift; AWS scales.
    ApplicationAutoScaling,
}

/// The observed state of a ServiceScaling. Written only when a field a reader would see
/// changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceScalingStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// AbleToScale, ScalingActive and ScalingLimited, with the HPA's meanings, plus
    /// Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "capstan_core::conditions::schema")]
    pub conditions: Vec<Condition>,

    /// The service's desired count as last read from ECS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,

    /// The count the last evaluation decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// The service's running task count as last read from ECS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_replicas: Option<i32>,

    /// The last value of each metric and the count it proposed, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricStatus>,

    /// The names of the schedule windows open at the last evaluation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_schedules: Vec<String>,

    /// When the controller last changed the service's task count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<DateTime<Utc>>,

    /// Whether that change went up or down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_direction: Option<ScaleDirection>,

    /// How many evaluations in a row failed to read any metric (0 when the last one
    /// succeeded).
    #[serde(default)]
    pub consecutive_failed_evaluations: i32,
}

/// The last reading of one metric.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// `cpu`, `memory`, or `<namespace>/<metricName>`.
    pub name: String,
    /// For utilization metrics: the average utilization in whole percent (truncated, as
    /// the HPA reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_utilization_percent: Option<i32>,
    /// For CloudWatch metrics: the value compared with the target (the total, or the
    /// value per task), rounded to three significant digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_value: Option<String>,
    /// The task count this metric proposed; absent when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed_replicas: Option<i32>,
    /// Why the metric could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The direction of a scale.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScaleDirection {
    /// More tasks.
    Up,
    /// Fewer tasks.
    Down,
}

impl capstan_core::conditions::ObjectStatus for ServiceScalingStatus {
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
    fn set_observed_generation(&mut self, generation: Option<i64>) {
        self.observed_generation = generation;
    }
}

impl capstan_core::object_metrics::Summarize for ServiceScaling {
    /// Readiness, the desired and running counts, and the maximum.
    fn summary(&self) -> capstan_core::object_metrics::Summary {
        use capstan_core::object_metrics::{Sample, Summary, ready_of};
        let status = self.status.clone().unwrap_or_default();
        let (ready, reason) = ready_of(&status.conditions);
        let mut samples = vec![Sample::new(
            "service_scaling_max_replicas",
            f64::from(self.spec.max_replicas),
        )];
        if let Some(n) = status.desired_replicas {
            samples.push(Sample::new(
                "service_scaling_desired_replicas",
                f64::from(n),
            ));
        }
        if let Some(n) = status.running_replicas {
            samples.push(Sample::new(
                "service_scaling_running_replicas",
                f64::from(n),
            ));
        }
        // CPU and memory against their targets: what each scaling decision weighed.
        for (metric, target) in self.spec.metrics.iter().flat_map(|m| {
            [
                ("cpu", m.cpu_utilization.as_ref()),
                ("memory", m.memory_utilization.as_ref()),
            ]
        }) {
            let Some(target) = target else { continue };
            samples.push(Sample {
                family: "service_scaling_target_utilization_percent",
                label: Some(("metric", metric)),
                value: f64::from(target.target_percent),
            });
            if let Some(current) = status
                .current_metrics
                .iter()
                .find(|c| c.name == metric)
                .and_then(|c| c.current_utilization_percent)
            {
                samples.push(Sample {
                    family: "service_scaling_utilization_percent",
                    label: Some(("metric", metric)),
                    value: f64::from(current),
                });
            }
        }
        Summary {
            ready,
            reason,
            samples,
        }
    }
}

#[cfg(test)]
mod tests;
