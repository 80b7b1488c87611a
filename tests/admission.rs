//! The operator's confinement on the real test API server (`config/rbac/`, which the chart
//! renders the same): what its ServiceAccount may read (RBAC) and write (RBAC and the
//! ValidatingAdmissionPolicy `tenantry-operator`). Each write is tried as the operator with
//! kubectl; refusals must name the policy's reason, so a test cannot pass on an unrelated error.
mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::cluster::{Cluster, KubeEnv, SYSTEM_NAMESPACE, unique};

const MANAGED: &str = "app.kubernetes.io/managed-by: tenantry";

/// Runs kubectl as the operator's ServiceAccount with `stdin` as `-f -`.
fn as_operator(env: &KubeEnv, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env.bin.join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(&env.operator_kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("kubectl output")
}

/// Server-side applies `yaml` as the operator (what the operator itself does).
fn apply(env: &KubeEnv, yaml: &str) -> Output {
    as_operator(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=tenantry",
            "-f",
            "-",
        ],
        Some(yaml),
    )
}

fn allowed(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Refused, with `needle` in the message (the policy's message, or RBAC's "forbidden").
fn refused(out: &Output, what: &str, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: allowed");
    assert!(
        err.contains(needle),
        "{what}: refused for another reason: {err}"
    );
}

const POLICY: &str = "ValidatingAdmissionPolicy 'tenantry-operator'";

fn namespace(name: &str, managed: bool) -> String {
    let labels = if managed {
        format!("\n  labels: {{{MANAGED}}}")
    } else {
        String::new()
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n")
}

fn deployment(ns: &str, pod_extra: &str, container_extra: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      automountServiceAccountToken: false
      securityContext: {{runAsNonRoot: true, runAsUser: 65532}}
{pod_extra}      containers:
        - name: api
          image: img:1
          securityContext:
            allowPrivilegeEscalation: false
{container_extra}"#
    )
}

#[tokio::test]
async fn the_operator_writes_only_in_namespaces_it_manages() {
    let cluster = Cluster::new().await;
    let env = cluster.env;
    let ours = unique("tenant-adm");
    let squatted = unique("tenant-sq");
    let foreign = unique("team");
    cluster.remove_on_drop("namespace", None, &ours);
    cluster.remove_on_drop("namespace", None, &squatted);
    cluster.remove_on_drop("namespace", None, &foreign);
    // Someone else's namespaces, one of them under the tenant prefix.
    env.apply_yaml(&namespace(&squatted, false));
    env.apply_yaml(&namespace(&foreign, false));

    refused(
        &apply(env, &namespace(&foreign, true)),
        "labelling a foreign namespace as ours",
        POLICY,
    );
    refused(
        &apply(env, &namespace(&squatted, true)),
        "taking over an unlabelled namespace under the tenant prefix",
        POLICY,
    );
    refused(
        &apply(env, &namespace(&unique("elsewhere"), true)),
        "creating a namespace outside the prefix",
        POLICY,
    );
    refused(
        &apply(env, &namespace(&unique("tenant-bare"), false)),
        "creating an unlabelled namespace",
        POLICY,
    );
    allowed(
        &apply(env, &namespace(&ours, true)),
        "creating its own namespace",
    );
    allowed(&apply(env, &namespace(&ours, true)), "re-applying it");

    let config_map = |ns: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, namespace: {ns}}}\n")
    };
    allowed(
        &apply(env, &config_map(&ours)),
        "a ConfigMap in its namespace",
    );
    for ns in [&squatted, &foreign, &"default".to_string()] {
        refused(
            &apply(env, &config_map(ns)),
            &format!("a ConfigMap in {ns}"),
            POLICY,
        );
    }
    // The admin is not confined.
    env.apply_yaml(&config_map(&foreign));
}

#[tokio::test]
async fn the_operator_runs_only_unprivileged_pods_without_a_token() {
    let cluster = Cluster::new().await;
    let env = cluster.env;
    let ns = unique("tenant-pods");
    cluster.remove_on_drop("namespace", None, &ns);
    allowed(&apply(env, &namespace(&ns, true)), "its namespace");
    allowed(
        &apply(env, &deployment(&ns, "", "")),
        "an unprivileged Deployment",
    );
    let cases = [
        ("hostNetwork", "      hostNetwork: true\n", ""),
        ("hostPID", "      hostPID: true\n", ""),
        (
            "a hostPath volume",
            "      volumes: [{name: root, hostPath: {path: /}}]\n",
            "",
        ),
        (
            "a foreign ServiceAccount",
            "      serviceAccountName: deployer\n",
            "",
        ),
        (
            "an added capability",
            "",
            "            capabilities: {add: [NET_ADMIN]}\n",
        ),
    ];
    for (what, pod, container) in cases {
        refused(&apply(env, &deployment(&ns, pod, container)), what, POLICY);
    }
    let escalating = deployment(&ns, "", "").replace(
        "allowPrivilegeEscalation: false",
        "allowPrivilegeEscalation: true",
    );
    refused(&apply(env, &escalating), "privilege escalation", POLICY);
    // (The API server itself refuses privileged without escalation.)
    let privileged = escalating.replace(
        "allowPrivilegeEscalation: true",
        "allowPrivilegeEscalation: true\n            privileged: true",
    );
    refused(&apply(env, &privileged), "a privileged container", POLICY);
    let token = deployment(&ns, "", "").replace(
        "automountServiceAccountToken: false",
        "automountServiceAccountToken: true",
    );
    refused(
        &apply(env, &token),
        "a mounted ServiceAccount token",
        POLICY,
    );
    let root = deployment(&ns, "", "").replace("runAsNonRoot: true", "runAsNonRoot: false");
    refused(&apply(env, &root), "root", POLICY);
}

#[tokio::test]
async fn the_operator_binds_only_its_tenant_role_to_itself() {
    let cluster = Cluster::new().await;
    let env = cluster.env;
    let ns = unique("tenant-rb");
    cluster.remove_on_drop("namespace", None, &ns);
    allowed(&apply(env, &namespace(&ns, true)), "its namespace");
    let binding = |role: &str, subject: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {role}-{subject}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\nsubjects: [{{kind: ServiceAccount, name: {subject}, namespace: {SYSTEM_NAMESPACE}}}]\n"
        )
    };
    allowed(
        &apply(
            env,
            &binding("tenantry-operator-tenant", "tenantry-operator"),
        ),
        "binding the tenant role to itself",
    );
    refused(
        &apply(env, &binding("tenantry-operator-tenant", "default")),
        "binding the tenant role to another ServiceAccount",
        POLICY,
    );
    // RBAC refuses before the policy: the operator may bind no other role.
    refused(
        &apply(env, &binding("cluster-admin", "tenantry-operator")),
        "binding cluster-admin",
        "forbidden",
    );
    // And the binding gives it the tenant's Secrets, there only.
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: {ns}}}\nstringData: {{k: v}}\n"
    );
    allowed(&apply(env, &secret), "a Secret where it is bound");
    allowed(
        &as_operator(env, &["get", "secret", "s", "-n", &ns], None),
        "reading it back",
    );
}

#[tokio::test]
async fn the_operator_reads_no_secret_outside_its_namespaces() {
    let cluster = Cluster::new().await;
    let env = cluster.env;
    let ns = unique("team-secrets");
    cluster.remove_on_drop("namespace", None, &ns);
    env.apply_yaml(&namespace(&ns, false));
    env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db, namespace: {ns}}}\nstringData: {{password: hunter2}}\n"
    ));
    let forbidden = "forbidden";
    refused(
        &as_operator(env, &["get", "secret", "db", "-n", &ns], None),
        "reading another team's Secret",
        forbidden,
    );
    refused(
        &as_operator(env, &["get", "secrets", "-A"], None),
        "listing every Secret",
        forbidden,
    );
    refused(
        &as_operator(env, &["get", "secrets", "-n", "kube-system"], None),
        "listing kube-system's Secrets",
        forbidden,
    );
    // In its own namespace it reads the credentials it copies (by name), nothing more.
    allowed(
        &as_operator(
            env,
            &["auth", "can-i", "get", "secrets", "-n", SYSTEM_NAMESPACE],
            None,
        ),
        "reading Secrets in its own namespace",
    );
    refused(
        &as_operator(
            env,
            &["auth", "can-i", "list", "secrets", "-n", SYSTEM_NAMESPACE],
            None,
        ),
        "listing Secrets in its own namespace",
        "",
    );
}

/// Outside the tenant namespaces the operator writes only TenantCredential Secrets (labelled
/// `tenantry.dev/credential` before and after), and only where a namespace bound it the
/// credentials role.
#[tokio::test]
async fn the_operator_writes_only_credential_secrets_where_it_was_granted_them() {
    let cluster = Cluster::new().await;
    let env = cluster.env;
    let granted = unique("team-creds");
    let other = unique("team-nocreds");
    for ns in [&granted, &other] {
        cluster.remove_on_drop("namespace", None, ns);
        env.apply_yaml(&namespace(ns, false));
    }
    env.apply_yaml(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenantry-credentials, namespace: {granted}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: tenantry-operator-credentials}}\nsubjects: [{{kind: ServiceAccount, name: tenantry-operator, namespace: {SYSTEM_NAMESPACE}}}]\n"
    ));
    let secret = |ns: &str, name: &str, labelled: bool| {
        let labels = if labelled {
            "labels: {tenantry.dev/credential: app}, "
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}, {labels}}}\nstringData: {{token: t}}\n"
        )
    };
    refused(
        &apply(env, &secret(&granted, "plain", false)),
        "an unlabelled Secret in a granted namespace",
        POLICY,
    );
    allowed(
        &apply(env, &secret(&granted, "app-token", true)),
        "a credential Secret in a granted namespace",
    );
    allowed(
        &apply(env, &secret(&granted, "app-token", true)),
        "updating it",
    );
    refused(
        &apply(env, &secret(&other, "app-token", true)),
        "a credential Secret where it was not granted Secrets",
        "forbidden",
    );
    // Someone else's Secret cannot be taken over by labelling it.
    env.apply_yaml(&secret(&granted, "db", false));
    refused(
        &apply(env, &secret(&granted, "db", true)),
        "labelling a foreign Secret as a credential's",
        POLICY,
    );
    refused(
        &as_operator(env, &["delete", "secret", "db", "-n", &granted], None),
        "deleting a foreign Secret",
        POLICY,
    );
    allowed(
        &as_operator(
            env,
            &["delete", "secret", "app-token", "-n", &granted],
            None,
        ),
        "deleting a credential Secret",
    );
}
