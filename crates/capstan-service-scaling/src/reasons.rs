//! Every reason string the ServiceScaling controller writes, in one place: condition
//! reasons ([`ready`], [`able_to_scale`]) and Event reasons ([`events`]). The HPA's own
//! reasons, which the pure algorithm decides, live beside it in
//! [`crate::algorithm::reasons`]; the gate's in [`capstan_core::gate`].

/// `Ready` reasons of this controller, besides the gate's and `InvalidSpec`.
pub mod ready {
    /// The last evaluation read the service and its metrics and applied its decision.
    pub const EVALUATED: &str = "Evaluated";
    /// ApplicationAutoScaling mode: the declared AWS objects are in place.
    pub const DECLARED: &str = "AutoScalingDeclared";
    /// `spec.suspend` is set.
    pub const SUSPENDED: &str = "Suspended";
    /// `spec.pausedUntil` is in the future.
    pub const PAUSED: &str = "Paused";
    /// The service's desired count is 0: autoscaling is off until it is scaled up.
    pub const SCALING_DISABLED: &str = "ScalingDisabled";
    /// The ECS cluster does not exist.
    pub const CLUSTER_NOT_FOUND: &str = "ClusterNotFound";
    /// The ECS service does not exist or is inactive.
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    /// DescribeServices failed (access, throttling, network).
    pub const SERVICE_UNREADABLE: &str = "ServiceUnreadable";
    /// No metric could be read, or a failing one blocks a scale-down.
    pub const FAILED_GET_METRICS: &str = "FailedGetMetrics";
    /// UpdateService failed.
    pub const FAILED_UPDATE_SCALE: &str = "FailedUpdateScale";
    /// Application Auto Scaling calls failed.
    pub const AUTOSCALING_FAILED: &str = "AutoScalingFailed";
    /// The connection's credentials could not be read.
    pub const CREDENTIALS_UNAVAILABLE: &str = "CredentialsUnavailable";
}

/// `AbleToScale=False` reasons the evaluation loop sets (the HPA's names).
pub mod able_to_scale {
    /// The service could not be read (HPA `FailedGetScale`).
    pub const FAILED_GET_SCALE: &str = "FailedGetScale";
    /// The write failed (HPA `FailedUpdateScale`).
    pub const FAILED_UPDATE_SCALE: &str = "FailedUpdateScale";
}

/// Event reasons.
pub mod events {
    /// Direct mode raised the service's desired count.
    pub const SCALED_UP: &str = "ScaledUp";
    /// Direct mode lowered the service's desired count.
    pub const SCALED_DOWN: &str = "ScaledDown";
    /// ApplicationAutoScaling mode declared its AWS objects.
    pub const AUTOSCALING_DECLARED: &str = "AutoScalingDeclared";
    /// ApplicationAutoScaling mode put back AWS objects someone changed or removed.
    pub const AUTOSCALING_REPAIRED: &str = "AutoScalingRepaired";
    /// The finalizer removed what ApplicationAutoScaling mode declared.
    pub const AUTOSCALING_REMOVED: &str = "AutoScalingRemoved";
    /// The finalizer's cleanup failed and is retried (also a `Ready` reason).
    pub const AUTOSCALING_CLEANUP_FAILED: &str = "AutoScalingCleanupFailed";
    /// The finalizer gave up after its timeout and let the object go.
    pub const AUTOSCALING_CLEANUP_ABANDONED: &str = "AutoScalingCleanupAbandoned";
}
