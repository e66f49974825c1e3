//! Throw-away namespaces, one per test.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use crate::error::{Error, Result};
use crate::k8s::Kube;
use crate::process::random_lower;
use crate::wait::await_deleted;

/// The label every namespace made by [`TempNamespace`] carries.
pub const TEMP_NAMESPACE_LABEL: &str = "capstan.dev/testenv-temp";

/// A namespace with a random name, deleted when dropped (or by [`TempNamespace::delete`]).
///
/// Dropping issues the delete request from a helper thread (it cannot `.await`); the
/// namespace controller then empties and removes it. Use [`with_temp_ns`] or
/// [`TempNamespace::delete`] to delete within the test's own runtime.
#[derive(Debug)]
pub struct TempNamespace {
    name: String,
    config: kube::Config,
    armed: bool,
}

impl TempNamespace {
    /// Creates a namespace named `test-<random>`.
    pub async fn create(kube: &Kube) -> Result<TempNamespace> {
        Self::create_with(kube, "test", BTreeMap::new()).await
    }

    /// Creates a namespace named `<prefix>-<random>` with extra labels. `prefix` must be
    /// a DNS label of at most 50 characters.
    pub async fn create_with(
        kube: &Kube,
        prefix: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<TempNamespace> {
        let name = format!("{prefix}-{}", random_lower(8));
        let mut labels = labels;
        labels.insert(TEMP_NAMESPACE_LABEL.to_owned(), "true".to_owned());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let api: Api<Namespace> = Api::all(kube.client().await);
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::other(format!("creating namespace {name}"), e))?;
        Ok(TempNamespace {
            name,
            config: kube.config(),
            armed: true,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An `Api` for namespaced objects of kind `K` in this namespace.
    pub fn api<K>(&self, client: kube::Client) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(client, &self.name)
    }

    /// Deletes the namespace now (without waiting for it to be gone).
    pub async fn delete(mut self) -> Result<()> {
        self.armed = false;
        delete_namespace(&self.config, &self.name).await
    }

    /// Deletes the namespace and waits until the namespace controller has removed it.
    pub async fn delete_and_wait(mut self, timeout: Duration) -> Result<()> {
        self.armed = false;
        delete_namespace(&self.config, &self.name).await?;
        let client = kube::Client::try_from(self.config.clone())
            .map_err(|e| Error::other("building a kube client", e))?;
        await_deleted(&Api::<Namespace>::all(client), &self.name, timeout).await
    }

    /// Keeps the namespace (for debugging a test) and returns its name.
    pub fn keep(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.name)
    }
}

async fn delete_namespace(config: &kube::Config, name: &str) -> Result<()> {
    let client = kube::Client::try_from(config.clone())
        .map_err(|e| Error::other("building a kube client", e))?;
    let api: Api<Namespace> = Api::all(client);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::other(format!("deleting namespace {name}"), e)),
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The test's runtime may be a current-thread one that this drop is blocking, so
        // the request goes out on a runtime of its own, on a thread of its own.
        let config = self.config.clone();
        let name = std::mem::take(&mut self.name);
        let handle = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("capstan-testenv: cannot delete namespace {name}: {e}");
                    return;
                }
            };
            let res = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), delete_namespace(&config, &name))
                    .await
            });
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("capstan-testenv: {e}"),
                Err(_) => eprintln!("capstan-testenv: deleting namespace {name} timed out"),
            }
        });
        let _ = handle.join();
    }
}

/// Runs `f` with the name of a fresh namespace and deletes the namespace afterwards (also
/// when `f` panics, through [`TempNamespace`]'s drop).
///
/// ```no_run
/// # async fn f() -> capstan_testenv::Result<()> {
/// let kube = capstan_testenv::TestEnv::get().kube().await?;
/// capstan_testenv::with_temp_ns(kube, |ns| async move {
///     // create objects in `ns` ...
/// }).await?;
/// # Ok(()) }
/// ```
pub async fn with_temp_ns<F, Fut, T>(kube: &Kube, f: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T>,
{
    let ns = TempNamespace::create(kube).await?;
    let out = f(ns.name().to_owned()).await;
    ns.delete().await?;
    Ok(out)
}
