//! The Pipeline controller's own metrics beyond every controller's: runs by outcome and
//! stage durations, counted from what a status write changed.

use prometheus_client::registry::Registry;

use crate::crd::PipelineStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StageLabels {
    r#type: &'static str,
    outcome: &'static str,
}

/// Runs by outcome and stage durations, counted from what a status write changed (so
/// once per transition, whichever pass made it).
#[derive(Clone, Debug)]
pub(super) struct RunMetrics {
    runs: prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    stage_duration: prometheus_client::metrics::family::Family<
        StageLabels,
        prometheus_client::metrics::histogram::Histogram,
    >,
}

/// Stage durations from 1 s to about 4.5 h.
fn stage_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 14),
    )
}

impl RunMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let runs = prometheus_client::metrics::family::Family::default();
        let stage_duration = prometheus_client::metrics::family::Family::new_with_constructor(
            stage_histogram as fn() -> prometheus_client::metrics::histogram::Histogram,
        );
        registry.register(
            "runs",
            "Runs that ended, by outcome (Succeeded, Failed, RolledBack, RollbackFailed, Superseded, Cancelled)",
            runs.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Time from a stage's start to its end, by stage type and outcome",
            stage_duration.clone(),
        );
        Self {
            runs,
            stage_duration,
        }
    }

    /// Counts what changed from `before` to `after` (the status just written).
    pub(super) fn observe(
        &self,
        spec: &crate::crd::PipelineSpec,
        before: &PipelineStatus,
        after: &PipelineStatus,
    ) {
        use crate::crd::StagePhase;
        for stage in &after.stages {
            let (Some(started), Some(finished)) = (stage.started, stage.finished) else {
                continue;
            };
            let was_done = before.run_id == after.run_id
                && before.stages.iter().any(|b| {
                    b.name == stage.name && b.finished.is_some() && b.attempt == stage.attempt
                });
            let outcome = match stage.phase {
                StagePhase::Succeeded => "Succeeded",
                StagePhase::Failed => "Failed",
                StagePhase::RolledBack => "RolledBack",
                StagePhase::Cancelled => "Cancelled",
                StagePhase::Skipped | StagePhase::Pending | StagePhase::Running => continue,
            };
            if was_done {
                continue;
            }
            let type_ = spec
                .stages
                .iter()
                .find(|s| s.name == stage.name)
                .map_or("Unknown", |s| s.type_.as_str());
            self.stage_duration
                .get_or_create(&StageLabels {
                    r#type: type_,
                    outcome,
                })
                .observe((finished - started).num_milliseconds().max(0) as f64 / 1000.0);
        }
        let ended = |st: &PipelineStatus| st.phase.is_some_and(|p| p.is_terminal());
        if ended(after)
            && (!ended(before) || before.run_id != after.run_id)
            && let Some(phase) = after.phase
        {
            self.runs
                .get_or_create(&OutcomeLabels {
                    outcome: phase.as_str(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PipelinePhase, StagePhase, StageStatus};
    use chrono::{Duration, Utc};
    use prometheus_client::encoding::text::encode;

    #[test]
    fn each_transition_is_counted_once() {
        let mut registry = Registry::with_prefix("capstan_pipeline");
        let m = RunMetrics::register(&mut registry);
        let spec = crate::crd::tests::example_spec();
        let t0 = Utc::now();
        let mut running = PipelineStatus {
            run_id: Some("shop-1".into()),
            phase: Some(PipelinePhase::Running),
            ..PipelineStatus::default()
        };
        let mut stage = StageStatus::pending("unit-tests");
        stage.phase = StagePhase::Running;
        stage.started = Some(t0);
        running.stages = vec![stage.clone()];
        let mut done = running.clone();
        stage.phase = StagePhase::Succeeded;
        stage.finished = Some(t0 + Duration::seconds(3));
        done.stages = vec![stage];
        done.phase = Some(PipelinePhase::Succeeded);
        m.observe(&spec, &running, &done);
        // A later write that changes nothing about them counts nothing more.
        m.observe(&spec, &done, &done);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"capstan_pipeline_runs_total{outcome="Succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"capstan_pipeline_stage_duration_seconds_count{type="Test",outcome="Succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"capstan_pipeline_stage_duration_seconds_sum{type="Test",outcome="Succeeded"} 3.0"#),
            "{text}"
        );
    }
}
