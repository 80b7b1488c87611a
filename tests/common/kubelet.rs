//! A stand-in for the kubelet (`Pod`): runs the chat API container of a Deployment the
//! operator wrote, as a local `tenantry` process with exactly the pod's arguments, environment
//! and mounted files. ConfigMap, Secret and projected volumes become folders filled from the API server's
//! objects (and refreshed by [`Pod::sync`], as a kubelet refreshes them), emptyDirs become
//! empty folders, `valueFrom` variables are resolved from the tenant namespace, and the
//! container's `0.0.0.0:<port>` listen addresses become `127.0.0.1:0` (each pod has its own
//! network namespace; here they share the host's).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, KeyToPath, Secret, Volume};
use kube::Client;
use kube::api::Api;

use super::server::{Server, model_dir};

/// The chat API container of one pod of a Deployment, its folders on the host.
pub struct Pod {
    client: Client,
    namespace: String,
    name: String,
    container: Container,
    volumes: Vec<Volume>,
    /// `(mountPath, host folder)` of every mount.
    mounts: Vec<(String, PathBuf)>,
    root: tempfile::TempDir,
}

impl Pod {
    /// Pod `name` of Deployment `namespace/deployment` as the API server holds it now: its
    /// volumes materialised on the host.
    pub async fn new(client: &Client, namespace: &str, deployment: &str, name: &str) -> Self {
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let d = api.get(deployment).await.expect("get deployment");
        let spec = d.spec.template.spec.expect("pod spec");
        let container = spec.containers.first().cloned().expect("a container");
        let root = tempfile::tempdir().expect("tmp");
        let mounts = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                let host = root.path().join("volumes").join(&m.name);
                std::fs::create_dir_all(&host).expect("mkdir volume");
                (m.mount_path.clone(), host)
            })
            .collect();
        let pod = Self {
            client: client.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            container,
            volumes: spec.volumes.unwrap_or_default(),
            mounts,
            root,
        };
        pod.sync().await;
        pod
    }

    /// Writes the current contents of every ConfigMap, Secret and projected volume (each file
    /// replaced atomically, like the kubelet's symlink swap; a missing optional source
    /// contributes nothing).
    pub async fn sync(&self) {
        for v in &self.volumes {
            let dir = self.root.path().join("volumes").join(&v.name);
            if let Some(cm) = &v.config_map {
                let data = self.config_map(&cm.name, cm.optional).await;
                write_files(&dir, data, cm.items.as_deref(), 0o644);
            }
            if let Some(s) = &v.secret {
                let name = s.secret_name.as_deref().expect("secret name");
                let data = self.secret(name, s.optional).await;
                let mode = s.default_mode.unwrap_or(0o644);
                write_files(&dir, data, s.items.as_deref(), mode as u32);
            }
            if let Some(p) = &v.projected {
                let mode = p.default_mode.unwrap_or(0o644) as u32;
                for source in p.sources.iter().flatten() {
                    if let Some(cm) = &source.config_map {
                        let data = self.config_map(&cm.name, cm.optional).await;
                        write_files(&dir, data, cm.items.as_deref(), mode);
                    }
                    if let Some(s) = &source.secret {
                        let data = self.secret(&s.name, s.optional).await;
                        write_files(&dir, data, s.items.as_deref(), mode);
                    }
                }
            }
        }
    }

    /// A ConfigMap's data; empty when it is absent and `optional`.
    async fn config_map(&self, name: &str, optional: Option<bool>) -> BTreeMap<String, Vec<u8>> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let cm = match api.get_opt(name).await.expect("get configmap") {
            Some(cm) => cm,
            None if optional == Some(true) => return BTreeMap::new(),
            None => panic!("configmap {name} is missing"),
        };
        cm.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    }

    /// A Secret's data; empty when it is absent and `optional`.
    async fn secret(&self, name: &str, optional: Option<bool>) -> BTreeMap<String, Vec<u8>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let s = match api.get_opt(name).await.expect("get secret") {
            Some(s) => s,
            None if optional == Some(true) => return BTreeMap::new(),
            None => panic!("secret {name} is missing"),
        };
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }

    /// The host folder mounted at `mount_path`.
    pub fn host_path(&self, mount_path: &str) -> &Path {
        self.mounts
            .iter()
            .find(|(m, _)| m == mount_path)
            .map(|(_, h)| h.as_path())
            .unwrap_or_else(|| panic!("no mount at {mount_path}"))
    }

    /// The container's argument with mount paths mapped to their host folders and listen
    /// addresses to loopback.
    fn arg(&self, arg: &str) -> String {
        if let Some((flag, value)) = arg.split_once('=')
            && flag.starts_with("--")
        {
            return format!("{flag}={}", self.arg(value));
        }
        if arg.starts_with("0.0.0.0:") {
            return "127.0.0.1:0".to_string();
        }
        for (mount, host) in &self.mounts {
            if let Some(rest) = arg.strip_prefix(mount.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", host.display());
            }
        }
        arg.to_string()
    }

    async fn env_value(&self, e: &EnvVar) -> String {
        if let Some(v) = &e.value {
            return self.arg(v);
        }
        let from = e.value_from.as_ref().expect("value or valueFrom");
        if let Some(r) = &from.secret_key_ref {
            let data = self.secret(&r.name, r.optional).await;
            let v = data
                .get(&r.key)
                .unwrap_or_else(|| panic!("{}/{}", r.name, r.key));
            return String::from_utf8(v.clone()).expect("utf-8 secret value");
        }
        if let Some(r) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
            let cm = api.get(&r.name).await.expect("get configmap");
            return cm.data.unwrap_or_default()[&r.key].clone();
        }
        let field = from
            .field_ref
            .as_ref()
            .expect("secret, configmap or field ref");
        match field.field_path.as_str() {
            "metadata.name" => self.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            other => panic!("field {other} is not emulated"),
        }
    }

    /// Starts the container as a `serve` process (the image's binary is this build's, its
    /// environment is the image's `TENANTRY_MODEL_DIR` plus the container's) and waits
    /// until it listens.
    pub async fn start(&self) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
        let args = self.container.args.iter().flatten().map(|a| self.arg(a));
        cmd.args(args.collect::<Vec<_>>())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TENANTRY_MODEL_DIR", model_dir())
            .current_dir(self.root.path());
        for e in self.container.env.iter().flatten() {
            cmd.env(&e.name, self.env_value(e).await);
        }
        Server::spawn(&mut cmd)
    }
}

/// Writes `data` (or only `items`, under their paths) into `dir` with `mode`, each file
/// through a temporary name and a rename.
fn write_files(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    mode: u32,
) {
    let files: Vec<(String, &Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            // A key that is absent is skipped (the kubelet refuses it unless the source is
            // optional; an absent optional source has no data at all).
            .filter_map(|i| data.get(&i.key).map(|v| (i.path.clone(), v)))
            .collect(),
        None => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (path, bytes) in files {
        let target = dir.join(&path);
        let tmp = dir.join(format!(".{path}.tmp"));
        std::fs::write(&tmp, bytes).expect("write volume file");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::fs::rename(&tmp, &target).expect("rename volume file");
    }
}
