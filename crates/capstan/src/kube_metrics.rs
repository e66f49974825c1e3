//! Kubernetes API requests by verb, resource and code, and their latency: a tower layer
//! on the kube client, as client-go's `rest_client_requests_total` and
//! `rest_client_request_duration_seconds`. A 403 here is the first sign that the
//! installed RBAC lacks something Capstan needs.

use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: &'static str,
}

/// The metrics, registered once and shared by every clone of the layer.
#[derive(Clone, Debug)]
pub struct KubeRequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<VerbLabels, Histogram>,
}

impl KubeRequestMetrics {
    /// Registers `kube_requests` (a counter by verb, resource and code; the code is
    /// `error` when no response came) and `kube_request_duration_seconds` (until the
    /// response headers, by verb; a watch's stream is not timed).
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<VerbLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "kube_requests",
            "Kubernetes API requests, by verb, resource and response code",
            requests.clone(),
        );
        registry.register(
            "kube_request_duration_seconds",
            "Kubernetes API request latency until the response headers, by verb",
            duration.clone(),
        );
        Self { requests, duration }
    }

    /// The layer to add to the client's service stack.
    pub fn layer(&self) -> KubeMetricsLayer {
        KubeMetricsLayer {
            metrics: self.clone(),
        }
    }
}

/// See [`KubeRequestMetrics::layer`].
#[derive(Clone, Debug)]
pub struct KubeMetricsLayer {
    metrics: KubeRequestMetrics,
}

impl<S> tower::Layer<S> for KubeMetricsLayer {
    type Service = KubeMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KubeMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`KubeMetricsLayer`] wraps around the client's.
#[derive(Clone, Debug)]
pub struct KubeMetricsService<S> {
    inner: S,
    metrics: KubeRequestMetrics,
}

impl<S, B, RB> tower::Service<Request<B>> for KubeMetricsService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri().path(), req.uri().query());
        let metrics = self.metrics.clone();
        let start = Instant::now();
        self.inner
            .call(req)
            .map(move |result| {
                let code = match &result {
                    Ok(response) => response.status().as_u16().to_string(),
                    Err(_) => "error".to_owned(),
                };
                metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        verb,
                        resource,
                        code,
                    })
                    .inc();
                metrics
                    .duration
                    .get_or_create(&VerbLabels { verb })
                    .observe(start.elapsed().as_secs_f64());
                result
            })
            .boxed()
    }
}

/// The Kubernetes verb and resource of a request (`pipelines`, `pipelines/status`,
/// `leases`), from its method and path as the API server's request info does. Paths
/// outside `/api` and `/apis` (discovery, `/version`) are verb `get`, resource `-`.
fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") if segments.len() >= 2 => &segments[2..],
        Some(&"apis") if segments.len() >= 3 => &segments[3..],
        _ => &[][..],
    };
    // `namespaces/<ns>/<resource>...`, unless the resource is the namespace itself.
    let rest = if rest.len() >= 3 && rest[0] == "namespaces" {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [] => "-".to_owned(),
        [resource] | [resource, _] => (*resource).to_owned(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
    };
    let item = rest.len() >= 2;
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if item || rest.is_empty() => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if item => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb, resource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use std::convert::Infallible;

    #[test]
    fn requests_are_classified_as_the_api_server_does() {
        let cases = [
            (
                Method::GET,
                "/api/v1/namespaces/a/secrets/db",
                None,
                "get",
                "secrets",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a/secrets",
                None,
                "list",
                "secrets",
            ),
            (
                Method::GET,
                "/api/v1/secrets",
                Some("watch=true&resourceVersion=1"),
                "watch",
                "secrets",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/a",
                None,
                "get",
                "namespaces",
            ),
            (
                Method::GET,
                "/api/v1/namespaces",
                None,
                "list",
                "namespaces",
            ),
            (
                Method::PATCH,
                "/apis/capstan.dev/v1alpha1/namespaces/shop/pipelines/web/status",
                Some("fieldManager=capstan"),
                "patch",
                "pipelines/status",
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/c/leases/l",
                None,
                "update",
                "leases",
            ),
            (
                Method::POST,
                "/apis/batch/v1/namespaces/a/jobs",
                None,
                "create",
                "jobs",
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/a/jobs/j",
                None,
                "delete",
                "jobs",
            ),
            (
                Method::DELETE,
                "/apis/batch/v1/namespaces/a/jobs",
                None,
                "deletecollection",
                "jobs",
            ),
            (
                Method::GET,
                "/apis/capstan.dev/v1alpha1/clusterconnections",
                None,
                "list",
                "clusterconnections",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/a/serviceaccounts/sa/token",
                None,
                "create",
                "serviceaccounts/token",
            ),
            (Method::GET, "/version", None, "get", "-"),
            (Method::GET, "/apis", None, "get", "-"),
        ];
        for (method, path, query, verb, resource) in cases {
            assert_eq!(
                classify(&method, path, query),
                (verb, resource.to_owned()),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn every_request_is_counted_with_its_code() {
        use tower::{Layer as _, Service as _, ServiceExt as _};
        let mut registry = Registry::with_prefix("capstan");
        let metrics = KubeRequestMetrics::register(&mut registry);
        let inner = tower::service_fn(|req: Request<()>| async move {
            let status = if req.uri().path().ends_with("/forbidden") {
                403
            } else {
                200
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(())
                    .expect("response"),
            )
        });
        let mut svc = metrics.layer().layer(inner);
        for path in [
            "/api/v1/namespaces/a/secrets/forbidden",
            "/api/v1/namespaces/a/secrets/ok",
        ] {
            let req = Request::get(path).body(()).expect("request");
            svc.ready()
                .await
                .expect("ready")
                .call(req)
                .await
                .expect("response");
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(
                r#"capstan_kube_requests_total{verb="get",resource="secrets",code="403"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"capstan_kube_requests_total{verb="get",resource="secrets",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"capstan_kube_request_duration_seconds_count{verb="get"} 2"#),
            "{text}"
        );
    }
}
