//! SmokeTest HTTP checks, run by Capstan itself against a local HTTP server the test
//! controls, with the manager allowing only `127.0.0.1/32` (`--http-check-allow`):
//!
//! - a check of `/health` whose JSON `version` must be the revision passes 3 times, 1 s
//!   apart, then the stage's Job runs;
//! - the cloud metadata address (169.254.169.254) and an address not listed
//!   (127.0.0.2) are refused before any connection;
//! - a redirect is not followed (to the metadata address here): it fails as a 302;
//! - a 500 fails the stage with its status code, and the body (a marker) reaches no
//!   status, Event or log line.

mod common;

use common::pipeline::{Setup, args, job_stage, pipeline, status_until};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capstan_pipeline::crd::{PipelinePhase, StagePhase};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY_MARKER: &str = "BODY-MUST-NOT-LEAK-7f3a";

/// Serves `/health` (200, `{"version": "2.0"}`), `/broken` (500 with the marker) and
/// `/redirect` (302 to the metadata address) on 127.0.0.1; counts requests.
async fn serve() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (status, extra, body) = match path.as_str() {
                    "/health" => ("200 OK", "", r#"{"version": "2.0"}"#.to_owned()),
                    "/redirect" => (
                        "302 Found",
                        "Location: http://169.254.169.254/latest/meta-data/\r\n",
                        String::new(),
                    ),
                    _ => (
                        "500 Internal Server Error",
                        "",
                        format!("error: {BODY_MARKER}"),
                    ),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, hits)
}

fn smoke(url: &str, extra: Value) -> Value {
    let mut check = json!({ "url": url });
    if let (Some(c), Some(e)) = (check.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    json!({ "name": "smoke", "type": "SmokeTest", "http": [check] })
}

#[tokio::test]
async fn http_checks_reach_only_allow_listed_addresses_and_report_no_body() {
    let t = Setup::new().await;
    let (kube, ns, api) = (t.kube, &t.ns, t.api.clone());
    t.play(Arc::new(|_: &str, _: &_| Some((0, String::new()))));
    let (port, hits) = serve().await;
    let base = format!("http://127.0.0.1:{port}");
    let mut manager_args: Vec<&str> = args(ns.name()).to_vec();
    manager_args.push("--http-check-allow=127.0.0.1/32");
    let m = common::start(kube, "pipeline-http", &manager_args).await;

    // Passes 3 times, 1 s apart; then the stage's Job.
    let mut stage = smoke(
        &format!("{base}/health"),
        json!({ "count": 3, "interval": "1s", "jsonField": { "path": "version", "equals": "{{ revision }}" } }),
    );
    stage["job"] = json!({ "image": "busybox" });
    common::rotation::create(
        &api,
        pipeline(
            "healthy",
            "2.0",
            vec![
                job_stage("test", "Test", json!({ "image": "busybox" })),
                stage,
            ],
        ),
    )
    .await;
    let st = status_until(&api, "healthy", &m, "checks pass", |s| {
        s.phase == Some(PipelinePhase::Succeeded)
    })
    .await;
    let smoke_status = &st.stages[1];
    assert_eq!(smoke_status.checks_passed, 3);
    assert!(
        smoke_status.job_name.is_some(),
        "the Job ran after the checks"
    );
    let first = st.stages[1].started.expect("started");
    let last = smoke_status.last_check.expect("checked");
    assert!(
        (last - first).num_milliseconds() >= 1900,
        "3 requests 1 s apart take at least 2 s: {first} .. {last}"
    );

    // Refused before any connection: the metadata address, an address not listed.
    let before = hits.load(Ordering::SeqCst);
    for (name, url, why) in [
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "link-local",
        ),
        (
            "unlisted",
            format!("http://127.0.0.2:{port}/health"),
            "loopback",
        ),
    ] {
        common::rotation::create(&api, pipeline(name, "2.0", vec![smoke(&url, json!({}))])).await;
        let st = status_until(&api, name, &m, "refused", |s| {
            s.phase == Some(PipelinePhase::Failed)
        })
        .await;
        let message = st.stages[0].message.clone().unwrap_or_default();
        assert!(
            message.contains("refused") && message.contains(why),
            "{name}: {message}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "no request reached the server"
    );

    // A redirect is not followed; a 500 reports its code and never its body.
    for (name, path, code) in [
        ("redirect", "/redirect", "302"),
        ("broken", "/broken", "500"),
    ] {
        common::rotation::create(
            &api,
            pipeline(
                name,
                "2.0",
                vec![smoke(&format!("{base}{path}"), json!({}))],
            ),
        )
        .await;
        let st = status_until(&api, name, &m, "fails", |s| {
            s.phase == Some(PipelinePhase::Failed)
        })
        .await;
        assert_eq!(st.stages[0].phase, StagePhase::Failed);
        let message = st.stages[0].message.clone().unwrap_or_default();
        assert!(
            message.contains(&format!("answered {code}")),
            "{name}: {message}"
        );
        let o = api.get(name).await.expect("pipeline");
        assert!(
            !serde_json::to_string(&o)
                .expect("json")
                .contains(BODY_MARKER),
            "the body reached the Pipeline"
        );
    }
    let events = ns
        .api::<k8s_openapi::api::events::v1::Event>(t.client.clone())
        .list(&Default::default())
        .await
        .expect("events");
    assert!(
        !serde_json::to_string(&events.items)
            .expect("json")
            .contains(BODY_MARKER),
        "the body reached an Event"
    );
    assert!(!m.logged(BODY_MARKER), "the body reached a log line");
}
