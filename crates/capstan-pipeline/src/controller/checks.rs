//! SmokeTest HTTP checks: one request per action, counted in status.

use super::*;

/// Whether a stage of the run has HTTP checks left to make.
pub(super) fn checks_pending(spec: &PipelineSpec, st: &PipelineStatus) -> bool {
    scheduler::run_active(st)
        && st.stages.iter().any(|s| {
            s.phase == StagePhase::Running
                && s.job_name.is_none()
                && spec.stages.iter().any(|x| {
                    x.name == s.name && scheduler::check_of(x.checks(), s.checks_passed).is_some()
                })
        })
}

/// Makes request `request` of SmokeTest stage `index`'s HTTP checks: a pass is counted
/// in status; a failure (or a URL the allow-list refuses) fails the stage with the
/// status code and the expectation that failed, never the body.
pub(super) async fn run_check(
    ctx: &Ctx,
    w: &mut Writer,
    job_api: &Api<Job>,
    mut st: PipelineStatus,
    index: usize,
    request: i32,
) -> Result<(), Error> {
    let spec = w.obj.spec.clone();
    let Some(name) = st.stages.get(index).map(|s| s.name.clone()) else {
        return Ok(());
    };
    let checks = spec
        .stages
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.checks().to_vec())
        .unwrap_or_default();
    let total: i32 = checks.iter().map(|c| c.count).sum();
    let Some((i, check)) = scheduler::check_of(&checks, request) else {
        return Ok(());
    };
    let rendered = (|| -> Result<_, crate::template::TemplateError> {
        let url = jobs::render(&st, &check.url)?;
        let headers = check
            .headers
            .iter()
            .map(|h| Ok((h.name.clone(), jobs::render(&st, &h.value)?)))
            .collect::<Result<Vec<_>, crate::template::TemplateError>>()?;
        let equals = check
            .json_field
            .as_ref()
            .map(|f| jobs::render(&st, &f.equals))
            .transpose()?;
        Ok((url, headers, equals))
    })();
    let outcome = match rendered {
        Ok((url, headers, equals)) => {
            crate::http_check::run(
                check,
                &url,
                equals.as_deref(),
                &headers,
                &ctx.settings.http_allow,
            )
            .await
        }
        Err(e) => Err(format!("check {i} cannot be rendered: {e}")),
    };
    let now = ctx.rt.clock.now();
    match outcome {
        Ok(code) => {
            let stage = &mut st.stages[index];
            stage.checks_passed = request + 1;
            stage.last_check = Some(now);
            stage.set_message(&format!(
                "HTTP check {}/{total} passed ({code})",
                request + 1
            ));
            w.set_conditions(&mut st, now);
            w.write(&st).await?;
            Ok(())
        }
        Err(why) => {
            let message = format!("HTTP check {}/{total} failed: {why}", request + 1);
            fail_run(ctx, w, job_api, st, index, &message, &[]).await
        }
    }
}
