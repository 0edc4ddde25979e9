//! An envtest-style control plane for tests: etcd and a real kube-apiserver (built
//! once by `tests/envtest/build.sh` and cached under ~/.cache/media-fleet/envtest),
//! started on free loopback ports with a static admin token, and killed on drop.
//! No kubelet runs: tests play the pods' part (see `FakeKubelet`).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

pub struct ControlPlane {
    pub url: String,
    pub kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Child,
    apiserver_cmd: Vec<std::ffi::OsString>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn binaries() -> PathBuf {
    let script = crate::manifest_dir().join("envtest/build.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("envtest/build.sh runs");
    assert!(out.status.success(), "envtest/build.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim().lines().last().unwrap())
}

fn spawn_logged(cmd: &[std::ffi::OsString], log: &Path) -> Child {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("kube-apiserver starts")
}

fn run_ok(cmd: &mut Command) {
    let st = cmd.output().expect("command runs");
    assert!(st.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&st.stderr));
}

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        let bin = binaries();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run_ok(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
                .arg(d.join("sa.key")),
        );
        run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(d.join("sa.key")).arg("-out").arg(d.join("sa.pub")));
        std::fs::write(d.join("tokens.csv"), "envtest-admin-token,admin,admin-uid,\"system:masters\"\n").unwrap();

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(bin.join("etcd"))
            .arg("--data-dir")
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("default={peer_url}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd starts");
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--cert-dir")
            .arg(d.join("certs"))
            .arg(format!("--secure-port={api_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg("--token-auth-file")
            .arg(d.join("tokens.csv"))
            .args(["--service-account-issuer=https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(d.join("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(d.join("sa.key"))
            .args(["--authorization-mode=RBAC", "--service-cluster-ip-range=10.0.0.0/24"])
            // No controller-manager mints ServiceAccount tokens here.
            .args(["--disable-admission-plugins=ServiceAccount"]);
        let apiserver_cmd: Vec<std::ffi::OsString> =
            std::iter::once(api.get_program().to_os_string()).chain(api.get_args().map(|a| a.to_os_string())).collect();
        let apiserver = spawn_logged(&apiserver_cmd, &d.join("apiserver.log"));
        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = d.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, "admin", "envtest-admin-token");
        let cp = ControlPlane { url, kubeconfig, dir, etcd, apiserver, apiserver_cmd };
        for _ in 0..120 {
            if let Ok(c) = cp.client().await {
                if c.apiserver_version().await.is_ok()
                    && Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone()).get("default").await.is_ok()
                {
                    return cp;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("kube-apiserver did not become ready; see {}", cp.dir.path().join("apiserver.log").display());
    }

    /// Takes the API server away (etcd keeps the data), as an outage would.
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
    }

    /// Brings the API server back on the same address and waits until it serves.
    pub async fn start_apiserver(&mut self) {
        self.apiserver = spawn_logged(&self.apiserver_cmd, &self.dir.path().join("apiserver-restart.log"));
        for _ in 0..120 {
            if let Ok(c) = self.client().await {
                if c.apiserver_version().await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("kube-apiserver did not come back");
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from(&self.kubeconfig).await
    }

    /// A kubeconfig for this API server that authenticates with `token` (e.g. a
    /// ServiceAccount's), written next to the admin one.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        write_kubeconfig(&path, &self.url, name, token);
        path
    }

    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the cached kubectl against this API server as admin.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(binaries().join("kubectl")).arg("--kubeconfig").arg(&self.kubeconfig).args(args).output().expect("kubectl runs")
    }
}

/// A kubeconfig for the API server at `url` that authenticates `user` with a bearer token.
fn write_kubeconfig(path: &Path, url: &str, user: &str, token: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    insecure-skip-tls-verify: true\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {user}\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: default\ncurrent-context: {user}\n"
        ),
    )
    .unwrap();
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(path)?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// A token for a ServiceAccount, from the API server's TokenRequest (as kubelet gets
/// one for a pod).
pub async fn service_account_token(admin: &Client, namespace: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let req = TokenRequest { spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }), ..Default::default() };
    let tr = api.create_token_request(name, &kube::api::PostParams::default(), &req).await.expect("TokenRequest");
    tr.status.and_then(|s| s.token).expect("token issued")
}

/// Asks the API server (SubjectAccessReview) whether a ServiceAccount may do something.
pub async fn can(admin: &Client, sa_namespace: &str, sa: &str, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{sa_namespace}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let r = api.create(&kube::api::PostParams::default(), &review).await.expect("SubjectAccessReview");
    r.status.is_some_and(|s| s.allowed)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Plays the kubelet for a pool's pods: runs the real `media-node` binary for each pod
/// with the pod's own environment (downward API fields filled in as a kubelet would),
/// runs the pod's gRPC readiness probe and writes the pod's Ready condition from it,
/// and stops the process with SIGTERM when the pod is deleted.
pub struct FakeKubelet {
    pub processes: Arc<Mutex<HashMap<String, Child>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn media_node_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("media-node");
    assert!(bin.is_file(), "{} is missing: run the tests with `cargo test --workspace`", bin.display());
    bin
}

impl FakeKubelet {
    pub fn start(client: Client, namespace: &str, kubeconfig: PathBuf, node_name: &str, assets: PathBuf) -> FakeKubelet {
        let processes: Arc<Mutex<HashMap<String, Child>>> = Default::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let (procs, token, ns, node) = (processes.clone(), stop.clone(), namespace.to_string(), node_name.to_string());
        let bin = media_node_binary();
        let task = tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, &ns);
            loop {
                if let Ok(list) = pods.list(&ListParams::default().labels(media_crds::POOL_LABEL)).await {
                    let live: Vec<&Pod> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
                    // The lock is held for the process table only, never across an await.
                    let probes = {
                        let mut running = procs.lock().unwrap();
                        for pod in &live {
                            let name = pod.name_any();
                            if running.contains_key(&name) {
                                continue;
                            }
                            let mut cmd = Command::new(&bin);
                            let c = &pod.spec.as_ref().unwrap().containers[0];
                            for e in c.env.iter().flatten() {
                                let value = match (&e.value, &e.value_from) {
                                    (Some(v), _) => Some(v.clone()),
                                    (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                                        Some("metadata.namespace") => Some(ns.clone()),
                                        Some("spec.nodeName") => Some(node.clone()),
                                        Some("status.podIP") => Some("127.0.0.1".into()),
                                        _ => None,
                                    },
                                    _ => None,
                                };
                                if let Some(v) = value {
                                    cmd.env(&e.name, v);
                                }
                            }
                            // Loopback stands in for the host network; the pod's spool
                            // volume is a folder of its own.
                            cmd.env("RECORDINGS_SPOOL_DIR", assets.join(format!("{name}-spool")));
                            cmd.env("KUBECONFIG", &kubeconfig)
                                .env("MEDIA_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
                                .env("RTP_SERVICE_LISTEN_ADDRESS", "127.0.0.1")
                                .env("ASSETS_BASE_PATH", &assets)
                                .env("RUST_LOG", "info")
                                .stdout(Stdio::null());
                            if let Ok(f) = std::fs::File::create(assets.join(format!("{name}.log"))) {
                                cmd.stderr(f);
                            }
                            if let Ok(child) = cmd.spawn() {
                                running.insert(name, child);
                            }
                        }
                        let gone: Vec<String> = running.keys().filter(|k| !live.iter().any(|p| &p.name_any() == *k)).cloned().collect();
                        for name in gone {
                            if let Some(mut child) = running.remove(&name) {
                                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                                std::thread::spawn(move || {
                                    let _ = child.wait();
                                });
                            }
                        }
                        live.iter()
                            .filter(|p| running.contains_key(&p.name_any()))
                            .map(|p| (p.name_any(), grpc_probe_port(p), media_operator::kube::controller::pod_ready(p)))
                            .collect::<Vec<(String, Option<i32>, bool)>>()
                    };
                    for (name, port, was_ready) in probes {
                        let ready = match port {
                            Some(port) => grpc_serving(port).await,
                            None => true, // no readiness probe: Ready once running, as a kubelet does
                        };
                        if ready != was_ready {
                            let status = json!({"status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
                                {"type": "Ready", "status": if ready { "True" } else { "False" }},
                                {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
                            ]}});
                            let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
                        }
                    }
                }
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
        });
        FakeKubelet { processes, stop, task }
    }

    pub fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.processes.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn grpc_probe_port(pod: &Pod) -> Option<i32> {
    pod.spec.as_ref()?.containers.first()?.readiness_probe.as_ref()?.grpc.as_ref().map(|g| g.port)
}

/// The kubelet's gRPC probe: grpc.health.v1 Check of the empty service, plaintext.
pub async fn grpc_serving(port: i32) -> bool {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else { return false };
    let endpoint = endpoint.connect_timeout(Duration::from_millis(300)).timeout(Duration::from_millis(500));
    let Ok(channel) = endpoint.connect().await else { return false };
    let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    answer.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32)
}

impl Drop for FakeKubelet {
    /// Also on a failed test: no media-node process outlives it.
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
        for (_, mut c) in self.processes.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pods of the media pools in `namespace` that are not being deleted.
pub async fn live_pods(client: &Client, namespace: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api.list(&ListParams::default().labels(media_crds::POOL_LABEL)).await.unwrap().items;
    pods.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

/// Polls `f` four times a second until it yields, or panics naming what never came.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..secs * 4 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An operator instance run in-process, as a replica of its Deployment would be.
pub struct Operator {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: u16,
}

pub fn start_operator(client: Client, identity: &str, http: u16) -> Operator {
    start_operator_leasing_in(client, identity, http, "default")
}

/// An operator whose leader Lease lives in `lease_namespace` (its own namespace, as
/// when it runs from the chart or the kustomize base).
pub fn start_operator_leasing_in(client: Client, identity: &str, http: u16, lease_namespace: &str) -> Operator {
    let opts = media_operator::OperatorOptions {
        namespace: None,
        lease_namespace: lease_namespace.into(),
        lease_name: "media-operator-leader".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(4),
        http_addr: format!("127.0.0.1:{http}").parse().unwrap(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(media_operator::run(client, opts, stop.clone()));
    Operator { stop, task, http }
}

impl Operator {
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// "leader", "standby", or "" while its HTTP side is not up yet.
    pub async fn role(&self) -> String {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.http).parse().unwrap();
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return String::new();
        }
        crate::http_get(addr, "/leader").await.1.trim().to_string()
    }
}

/// Applies the generated CRDs (checked identical to `crds/yaml`) and waits until served.
pub async fn install_crds(client: &Client) {
    let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(client.clone());
    for (file, yaml) in media_crds::crds_yaml() {
        let committed = std::fs::read_to_string(crate::manifest_dir().join("../crds/yaml").join(&file)).unwrap();
        assert_eq!(committed, yaml);
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(&committed).unwrap();
        api.patch(&crd.name_any(), &kube::api::PatchParams::apply("envtest").force(), &kube::api::Patch::Apply(&crd))
            .await
            .expect("the API server accepts the CRD");
        let name = crd.name_any();
        eventually("CRD established", 20, || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let c = api.get(&name).await.ok()?;
                c.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
            }
        })
        .await;
    }
}

/// Creates a namespace (as admin).
pub async fn create_namespace(admin: &Client, name: &str) {
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone()).create(&kube::api::PostParams::default(), &ns).await.unwrap();
}
