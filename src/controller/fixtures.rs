//! Test fixtures of the reconciler: chainable Tenant builders (YAML parsed into [`Tenant`]), a
//! build configuration, and a [`Context`] whose client talks to an [`ApiServerVerifier`]
//! instead of a cluster: it checks each request in order and answers with fixture objects.
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use super::build::BuildConfig;
use super::{Context, ContextParts, ReconcileMetrics};
use crate::crd::{FINALIZER, QuotaOverrides, Tenant};
use crate::vector::edge::EdgeBackend;

impl Tenant {
    /// A Tenant parsed from YAML, with the uid the API server would have given it.
    pub fn from_yaml(yaml: &str) -> Self {
        let mut t: Tenant = serde_saphyr::from_str(yaml).expect("tenant yaml");
        t.metadata.uid = Some("uid-1".to_string());
        t
    }

    /// Tenant `acme` of tier `pro`, generation 1, everything else defaulted.
    pub fn test() -> Self {
        let mut t = Self::from_yaml(
            "apiVersion: tenantry.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\nspec: {tier: pro}\n",
        );
        t.metadata.generation = Some(1);
        t
    }

    /// With the cleanup finalizer (so a reconcile goes straight to the apply path).
    pub fn finalized(mut self) -> Self {
        self.finalizers_mut().push(FINALIZER.to_string());
        self
    }

    /// Naming `tier` in `spec.tier`.
    pub fn with_tier(mut self, tier: &str) -> Self {
        self.spec.tier = tier.to_string();
        self
    }

    /// With a `spec.quota.dailyTokens` override (negative ones are invalid).
    pub fn with_quota(mut self, daily_tokens: i64) -> Self {
        self.spec.quota = Some(QuotaOverrides {
            daily_tokens: Some(daily_tokens),
            ..Default::default()
        });
        self
    }

    /// With `spec.retrieval.topK` (valid: 1 to 50).
    pub fn with_top_k(mut self, top_k: i32) -> Self {
        self.spec.retrieval.top_k = top_k;
        self
    }

    /// With `spec.auth.rotateEvery`.
    pub fn with_rotation(mut self, every: &str) -> Self {
        self.spec.auth.rotate_every = Some(every.to_string());
        self
    }
}

impl BuildConfig {
    /// What a test operator builds: prefix `tenant-`, image `img:1`, one `--api-env`.
    pub fn test() -> Self {
        BuildConfig {
            namespace_prefix: "tenant-".into(),
            image: "img:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            api_env: vec![("OPENAI_BASE_URL".into(), "http://llm/v1".into())],
            api_secret_env: vec![],
            operator_namespace: "tenantry-system".into(),
            qdrant_url: None,
            qdrant_api_key_secret: None,
            serve: crate::config::ServeConfig::default(),
            pod_defaults: Default::default(),
            expose: super::build::expose::Expose::None,
            access: Default::default(),
            network: Default::default(),
            data_size_limit: "1Gi".into(),
            store_credentials: Default::default(),
        }
    }
}

impl super::build::deployment::PodInputs {
    /// No replica count (the autoscaler's), a made-up config hash.
    pub fn test() -> Self {
        Self {
            config_hash: "0".repeat(64),
            replicas: None,
        }
    }
}

/// A test [`Context`]: its client answers through the returned verifier, its vector store is
/// the embedded one in a temporary folder. The folder comes first so that, bound in this
/// order, it is removed after the context (the store flushes into it when dropped).
pub fn test_context() -> (tempfile::TempDir, Arc<Context>, ApiServerVerifier) {
    test_context_with(BuildConfig::test())
}

/// A test [`Context`] (see [`test_context`]) that builds with `build`.
pub fn test_context_with(
    build: BuildConfig,
) -> (tempfile::TempDir, Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let dir = tempfile::tempdir().expect("tmp");
    let vectors = Arc::new(EdgeBackend::open(dir.path()).expect("vector store"));
    let parts = ContextParts {
        build,
        vectors,
        dimension: 4,
        identity: "test".to_string(),
        metrics: Arc::new(ReconcileMetrics::default()),
    };
    let ctx = Arc::new(Context::new(client, parts));
    (dir, ctx, ApiServerVerifier::new(handle))
}

/// How the verifier answers one expected request.
pub enum Reply {
    /// 200 with the request's own body (what a server-side apply or a create returns).
    Echo,
    /// 200 with the request's body changed by the function (e.g. a Deployment with a status).
    EchoWith(fn(Value) -> Value),
    /// 200 with this object.
    Json(Value),
    /// An API error with this HTTP status (404 NotFound, 409 Conflict, ...).
    Error(StatusCode),
}

/// One request the reconciler must make, as the verifier saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request's method.
    pub method: Method,
    /// The request's path (without the query).
    pub path: String,
    /// The request's query string.
    pub query: String,
    /// The request's JSON body (`Null` if empty).
    pub body: Value,
}

/// A scripted API server: the requests expected in order, each with its reply.
pub struct ApiServerVerifier {
    handle: Handle<Request<Body>, Response<Body>>,
    script: Vec<(Method, String, Reply)>,
}

impl ApiServerVerifier {
    fn new(handle: Handle<Request<Body>, Response<Body>>) -> Self {
        Self {
            handle,
            script: Vec::new(),
        }
    }

    /// Expects a `method` request to `path` next, answered with `reply`.
    pub fn then(mut self, method: Method, path: &str, reply: Reply) -> Self {
        self.script.push((method, path.to_string(), reply));
        self
    }

    /// Expects the Tenant's Event to be published next (in `default`: Tenants are
    /// cluster-scoped).
    pub fn then_event(self) -> Self {
        self.then(
            Method::POST,
            "/apis/events.k8s.io/v1/namespaces/default/events",
            Reply::Echo,
        )
    }

    /// Expects a server-side apply of the object at `path` next (echoed back).
    pub fn then_apply(self, path: &str) -> Self {
        self.then(Method::PATCH, path, Reply::Echo)
    }

    /// Expects the status patch of `tenant` next, answered with the tenant carrying it.
    pub fn then_status_patch(self, tenant: &Tenant) -> Self {
        let mut answer = serde_json::to_value(tenant).expect("tenant json");
        answer["metadata"]["resourceVersion"] = json!("2");
        let path = format!(
            "/apis/{}/tenants/{}/status",
            <Tenant as kube::Resource>::api_version(&()),
            tenant.name_any()
        );
        self.then(Method::PATCH, &path, Reply::Json(answer))
    }

    /// Serves the script in the background; the task ends with every request seen, and
    /// panics on an unexpected one (also after the script) or when a request does not come
    /// within five seconds.
    pub fn run(self) -> JoinHandle<Vec<Seen>> {
        let Self { mut handle, script } = self;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for (method, path, reply) in script {
                let next = tokio::time::timeout(Duration::from_secs(5), handle.next_request());
                let (request, send) = next
                    .await
                    .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
                    .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
                let got = read(request).await;
                assert_eq!(
                    (&got.method, got.path.as_str()),
                    (&method, path.as_str()),
                    "request {} out of order: {got:?}",
                    seen.len() + 1
                );
                send.send_response(answer(&got, reply));
                seen.push(got);
            }
            let extra = tokio::time::timeout(Duration::from_millis(200), handle.next_request());
            if let Ok(Some((request, _))) = extra.await {
                panic!("unexpected request {} {}", request.method(), request.uri());
            }
            seen
        })
    }
}

async fn read(request: Request<Body>) -> Seen {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    Seen {
        method,
        path,
        query,
        body,
    }
}

fn answer(seen: &Seen, reply: Reply) -> Response<Body> {
    let (status, body) = match reply {
        Reply::Echo => (StatusCode::OK, seen.body.clone()),
        Reply::EchoWith(change) => (StatusCode::OK, change(seen.body.clone())),
        Reply::Json(v) => (StatusCode::OK, v),
        Reply::Error(code) => (code, api_error(code)),
    };
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response")
}

/// The `Status` object the API server answers a failed request with.
fn api_error(code: StatusCode) -> Value {
    let reason = code.canonical_reason().unwrap_or_default().replace(' ', "");
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "message": format!("test: {reason}"), "reason": reason, "code": code.as_u16(),
    })
}
