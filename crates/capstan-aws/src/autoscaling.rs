//! Application Auto Scaling for ECS services, behind the narrow [`AutoScalingApi`]
//! trait: the scalable target (`ecs:service:DesiredCount` of `service/<cluster>/<service>`),
//! its target-tracking policies and its scheduled actions.
//!
//! ServiceScaling's `ApplicationAutoScaling` mode declares these for a spec and
//! repairs them when they drift; AWS then owns the desired count. The types here are the
//! declared shape, compared field by field with what [`AutoScalingApi`] reads back.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use aws_sdk_applicationautoscaling::error::ProvideErrorMetadata;
use aws_sdk_applicationautoscaling::types::{
    CustomizedMetricSpecification, MetricDimension, MetricStatistic, MetricType, PolicyType,
    PredefinedMetricSpecification, ScalableDimension, ScalableTargetAction, ServiceNamespace,
    TargetTrackingScalingPolicyConfiguration,
};
use capstan_core::error::Categorized;

/// The SDK, for callers that need a type or call Capstan itself does not wrap (tests
/// changing objects behind Capstan's back).
pub use aws_sdk_applicationautoscaling as sdk;

/// The scalable dimension of an ECS service's task count.
pub const ECS_DESIRED_COUNT: &str = "ecs:service:DesiredCount";

/// The resource ID of an ECS service: `service/<cluster>/<service>`.
pub fn ecs_resource_id(cluster: &str, service: &str) -> String {
    let last = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    format!("service/{}/{}", last(cluster), last(service))
}

/// A scalable target's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableTarget {
    /// MinCapacity.
    pub min_capacity: i32,
    /// MaxCapacity.
    pub max_capacity: i32,
}

/// The metric a target-tracking policy follows.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackedMetric {
    /// A predefined metric, e.g. `ECSServiceAverageCPUUtilization`.
    Predefined(String),
    /// A CloudWatch metric.
    Customized {
        /// Namespace.
        namespace: String,
        /// Metric name.
        metric_name: String,
        /// Dimensions (name, value).
        dimensions: Vec<(String, String)>,
        /// `Average`, `Sum`, `Minimum`, `Maximum` or `SampleCount`.
        statistic: String,
    },
}

/// A target-tracking scaling policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTrackingPolicy {
    /// The policy's name (unique per scalable target).
    pub name: String,
    /// The value to hold.
    pub target_value: f64,
    /// The metric.
    pub metric: TrackedMetric,
    /// Seconds after a scale-out before another scale-out.
    pub scale_out_cooldown: Option<i32>,
    /// Seconds after a scale-in before another scale-in.
    pub scale_in_cooldown: Option<i32>,
    /// Whether the policy never scales in.
    pub disable_scale_in: bool,
}

/// A scheduled action that moves the scalable target's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledAction {
    /// The action's name (unique per scalable target).
    pub name: String,
    /// `at(yyyy-mm-ddThh:mm:ss)`, `cron(...)` or `rate(...)`.
    pub schedule: String,
    /// The time zone of the schedule (UTC when absent).
    pub timezone: Option<String>,
    /// The MinCapacity to set.
    pub min_capacity: Option<i32>,
    /// The MaxCapacity to set.
    pub max_capacity: Option<i32>,
}

impl ScheduledAction {
    /// A one-off action at `at` (UTC, whole seconds).
    pub fn at(name: impl Into<String>, at: SystemTime, min: i32, max: i32) -> Self {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        Self {
            name: name.into(),
            schedule: format!("at({})", format_utc(secs)),
            timezone: None,
            min_capacity: Some(min),
            max_capacity: Some(max),
        }
    }
}

/// `yyyy-mm-ddThh:mm:ss` of a Unix time (UTC), the form `at()` schedules take.
fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Why an Application Auto Scaling call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Application Auto Scaling {operation} failed: {message}")]
pub struct AutoScalingError {
    /// The operation.
    pub operation: &'static str,
    /// The error code, if AWS sent one.
    pub code: Option<String>,
    /// What the SDK reported.
    pub message: String,
}

impl Categorized for AutoScalingError {
    fn category(&self) -> &'static str {
        "application_autoscaling_call"
    }
}

fn sdk_err<E, R>(
    operation: &'static str,
) -> impl FnOnce(aws_sdk_applicationautoscaling::error::SdkError<E, R>) -> AutoScalingError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    move |e| AutoScalingError {
        operation,
        code: e.code().map(str::to_owned),
        message: aws_sdk_applicationautoscaling::error::DisplayErrorContext(&e).to_string(),
    }
}

fn build_err(
    operation: &'static str,
) -> impl FnOnce(aws_smithy_types::error::operation::BuildError) -> AutoScalingError {
    move |e| AutoScalingError {
        operation,
        code: None,
        message: e.to_string(),
    }
}

/// The Application Auto Scaling calls Capstan makes, for one ECS service's
/// `ecs:service:DesiredCount` (`resource_id` from [`ecs_resource_id`]).
pub trait AutoScalingApi: Send + Sync + Debug {
    /// The scalable target, if registered.
    fn scalable_target(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = Result<Option<ScalableTarget>, AutoScalingError>> + Send;
    /// Registers (or updates) the scalable target.
    fn register_scalable_target(
        &self,
        resource_id: &str,
        target: ScalableTarget,
    ) -> impl Future<Output = Result<(), AutoScalingError>> + Send;
    /// Deregisters the scalable target. AWS deletes the target's scaling policies and
    /// scheduled actions with it, whoever made them.
    fn deregister_scalable_target(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = Result<(), AutoScalingError>> + Send;
    /// The names of every scaling policy of the target, of any type.
    fn scaling_policy_names(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = Result<Vec<String>, AutoScalingError>> + Send;
    /// The target-tracking policies; policies of other types are left out.
    fn target_tracking_policies(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = Result<Vec<TargetTrackingPolicy>, AutoScalingError>> + Send;
    /// Creates or replaces a target-tracking policy.
    fn put_target_tracking_policy(
        &self,
        resource_id: &str,
        policy: &TargetTrackingPolicy,
    ) -> impl Future<Output = Result<(), AutoScalingError>> + Send;
    /// Deletes a scaling policy.
    fn delete_scaling_policy(
        &self,
        resource_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), AutoScalingError>> + Send;
    /// The scheduled actions.
    fn scheduled_actions(
        &self,
        resource_id: &str,
    ) -> impl Future<Output = Result<Vec<ScheduledAction>, AutoScalingError>> + Send;
    /// Creates or replaces a scheduled action.
    fn put_scheduled_action(
        &self,
        resource_id: &str,
        action: &ScheduledAction,
    ) -> impl Future<Output = Result<(), AutoScalingError>> + Send;
    /// Deletes a scheduled action.
    fn delete_scheduled_action(
        &self,
        resource_id: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), AutoScalingError>> + Send;
}

/// [`AutoScalingApi`] over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkAutoScaling {
    client: aws_sdk_applicationautoscaling::Client,
    budget: crate::budget::Budget,
}

impl SdkAutoScaling {
    /// Wraps a client (possibly built with interceptors).
    pub fn new(client: aws_sdk_applicationautoscaling::Client) -> Self {
        Self {
            client,
            budget: crate::budget::Budget::default(),
        }
    }

    /// A client from a configuration.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_applicationautoscaling::Client::new(config))
    }

    /// Takes a token of the request budget before each call (see [`crate::budget`]).
    pub fn with_budget(mut self, budget: crate::budget::Budget) -> Self {
        self.budget = budget;
        self
    }
}

fn dimension() -> ScalableDimension {
    ScalableDimension::from(ECS_DESIRED_COUNT)
}

impl AutoScalingApi for SdkAutoScaling {
    async fn scalable_target(
        &self,
        resource_id: &str,
    ) -> Result<Option<ScalableTarget>, AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        let out = self
            .client
            .describe_scalable_targets()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_ids(resource_id)
            .scalable_dimension(dimension())
            .send()
            .await
            .map_err(sdk_err("DescribeScalableTargets"))?;
        Ok(out
            .scalable_targets()
            .iter()
            .find(|t| t.resource_id() == resource_id)
            .map(|t| ScalableTarget {
                min_capacity: t.min_capacity(),
                max_capacity: t.max_capacity(),
            }))
    }

    async fn register_scalable_target(
        &self,
        resource_id: &str,
        target: ScalableTarget,
    ) -> Result<(), AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        self.client
            .register_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .min_capacity(target.min_capacity)
            .max_capacity(target.max_capacity)
            .send()
            .await
            .map_err(sdk_err("RegisterScalableTarget"))?;
        Ok(())
    }

    async fn deregister_scalable_target(&self, resource_id: &str) -> Result<(), AutoScalingError> {
        self.client
            .deregister_scalable_target()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .send()
            .await
            .map_err(sdk_err("DeregisterScalableTarget"))?;
        Ok(())
    }

    async fn scaling_policy_names(
        &self,
        resource_id: &str,
    ) -> Result<Vec<String>, AutoScalingError> {
        let policies = self
            .client
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(sdk_err("DescribeScalingPolicies"))?;
        Ok(policies
            .iter()
            .map(|p| p.policy_name().to_owned())
            .collect())
    }

    async fn target_tracking_policies(
        &self,
        resource_id: &str,
    ) -> Result<Vec<TargetTrackingPolicy>, AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        let all = self
            .client
            .describe_scaling_policies()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(sdk_err("DescribeScalingPolicies"))?;
        let mut policies = Vec::new();
        for p in &all {
            if *p.policy_type() != PolicyType::TargetTrackingScaling {
                continue;
            }
            let Some(c) = p.target_tracking_scaling_policy_configuration() else {
                continue;
            };
            let metric = if let Some(m) = c.predefined_metric_specification() {
                TrackedMetric::Predefined(m.predefined_metric_type().as_str().to_owned())
            } else if let Some(m) = c.customized_metric_specification() {
                TrackedMetric::Customized {
                    namespace: m.namespace().unwrap_or_default().to_owned(),
                    metric_name: m.metric_name().unwrap_or_default().to_owned(),
                    dimensions: m
                        .dimensions()
                        .iter()
                        .map(|d| (d.name().to_owned(), d.value().to_owned()))
                        .collect(),
                    statistic: m
                        .statistic()
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default(),
                }
            } else {
                continue;
            };
            policies.push(TargetTrackingPolicy {
                name: p.policy_name().to_owned(),
                target_value: c.target_value(),
                metric,
                scale_out_cooldown: c.scale_out_cooldown(),
                scale_in_cooldown: c.scale_in_cooldown(),
                disable_scale_in: c.disable_scale_in().unwrap_or(false),
            });
        }
        Ok(policies)
    }

    async fn put_target_tracking_policy(
        &self,
        resource_id: &str,
        policy: &TargetTrackingPolicy,
    ) -> Result<(), AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        const OP: &str = "PutScalingPolicy";
        let mut config = TargetTrackingScalingPolicyConfiguration::builder()
            .target_value(policy.target_value)
            .disable_scale_in(policy.disable_scale_in)
            .set_scale_out_cooldown(policy.scale_out_cooldown)
            .set_scale_in_cooldown(policy.scale_in_cooldown);
        config = match &policy.metric {
            TrackedMetric::Predefined(t) => config.predefined_metric_specification(
                PredefinedMetricSpecification::builder()
                    .predefined_metric_type(MetricType::from(t.as_str()))
                    .build()
                    .map_err(build_err(OP))?,
            ),
            TrackedMetric::Customized {
                namespace,
                metric_name,
                dimensions,
                statistic,
            } => {
                let mut spec = CustomizedMetricSpecification::builder()
                    .namespace(namespace)
                    .metric_name(metric_name)
                    .statistic(MetricStatistic::from(statistic.as_str()));
                for (name, value) in dimensions {
                    spec = spec.dimensions(
                        MetricDimension::builder()
                            .name(name)
                            .value(value)
                            .build()
                            .map_err(build_err(OP))?,
                    );
                }
                config.customized_metric_specification(spec.build())
            }
        };
        self.client
            .put_scaling_policy()
            .policy_name(&policy.name)
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .policy_type(PolicyType::TargetTrackingScaling)
            .target_tracking_scaling_policy_configuration(config.build().map_err(build_err(OP))?)
            .send()
            .await
            .map_err(sdk_err(OP))?;
        Ok(())
    }

    async fn delete_scaling_policy(
        &self,
        resource_id: &str,
        name: &str,
    ) -> Result<(), AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        self.client
            .delete_scaling_policy()
            .policy_name(name)
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .send()
            .await
            .map_err(sdk_err("DeleteScalingPolicy"))?;
        Ok(())
    }

    async fn scheduled_actions(
        &self,
        resource_id: &str,
    ) -> Result<Vec<ScheduledAction>, AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        let all = self
            .client
            .describe_scheduled_actions()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(sdk_err("DescribeScheduledActions"))?;
        Ok(all
            .iter()
            .map(|a| {
                let target = a.scalable_target_action();
                ScheduledAction {
                    name: a.scheduled_action_name().to_owned(),
                    schedule: a.schedule().to_owned(),
                    timezone: a.timezone().map(str::to_owned).filter(|t| t != "UTC"),
                    min_capacity: target.and_then(|t| t.min_capacity()),
                    max_capacity: target.and_then(|t| t.max_capacity()),
                }
            })
            .collect())
    }

    async fn put_scheduled_action(
        &self,
        resource_id: &str,
        action: &ScheduledAction,
    ) -> Result<(), AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        self.client
            .put_scheduled_action()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .scheduled_action_name(&action.name)
            .schedule(&action.schedule)
            .set_timezone(action.timezone.clone())
            .scalable_target_action(
                ScalableTargetAction::builder()
                    .set_min_capacity(action.min_capacity)
                    .set_max_capacity(action.max_capacity)
                    .build(),
            )
            .send()
            .await
            .map_err(sdk_err("PutScheduledAction"))?;
        Ok(())
    }

    async fn delete_scheduled_action(
        &self,
        resource_id: &str,
        name: &str,
    ) -> Result<(), AutoScalingError> {
        self.budget.acquire(crate::budget::AUTOSCALING).await;
        self.client
            .delete_scheduled_action()
            .service_namespace(ServiceNamespace::Ecs)
            .resource_id(resource_id)
            .scalable_dimension(dimension())
            .scheduled_action_name(name)
            .send()
            .await
            .map_err(sdk_err("DeleteScheduledAction"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_take_names_from_arns() {
        assert_eq!(ecs_resource_id("main", "web"), "service/main/web");
        assert_eq!(
            ecs_resource_id(
                "arn:aws:ecs:us-east-1:123456789012:cluster/main",
                "arn:aws:ecs:us-east-1:123456789012:service/main/web"
            ),
            "service/main/web"
        );
    }

    #[test]
    fn at_schedules_are_utc_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_762_800); // 2026-11-27T07:00:00Z
        let a = ScheduledAction::at("x", t, 20, 60);
        assert_eq!(a.schedule, "at(2026-11-27T07:00:00)");
        assert_eq!(format_utc(0), "1970-01-01T00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00");
    }
}
