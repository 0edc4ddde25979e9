//! Installing the fleet as platform operators do: the Helm chart (linted and installed
//! by Helm's own library, helm-sdkpy) and the kustomize base (applied by kubectl), each
//! into a real kube-apiserver; then the operator runs under the ServiceAccount that
//! install made, with a token the API server issued for it: proof that its RBAC is
//! enough, and checks through SubjectAccessReview that it is no wider than needed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_tests::envtest::{
    can, client_from, create_namespace, eventually, service_account_token, start_operator_leasing_in, ControlPlane, FakeKubelet,
};
use fleet_tests::helm;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use media_crds::{MediaNode, MediaPool, POOL_LABEL};
use serde_json::json;

fn repo() -> PathBuf {
    fleet_tests::manifest_dir().parent().unwrap().to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/media-fleet")
}

fn yaml_json(path: &Path) -> serde_json::Value {
    let v: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_value(v).unwrap()
}

fn default_values() -> serde_json::Value {
    yaml_json(&chart().join("values.yaml"))
}

#[test]
fn chart_and_base_carry_the_generated_crds() {
    for (file, yaml) in media_crds::crds_yaml() {
        for dir in ["charts/media-fleet/crds", "deploy/base/crds"] {
            let copy = std::fs::read_to_string(repo().join(dir).join(&file)).unwrap_or_default();
            assert!(copy == yaml, "{dir}/{file} differs from the generated CRD: cp crds/yaml/{file} {dir}/");
        }
    }
}

#[test]
fn chart_lints_clean_with_default_and_full_values() {
    let l = helm::lint(&chart());
    assert_eq!(l.errors, 0, "{l:?}");
    assert!(l.messages.iter().all(|(sev, _)| *sev < 2), "no warnings either: {l:?}");

    let mut full = default_values();
    helm::merge(&mut full, &yaml_json(&chart().join("ci/full-values.yaml")));
    let copy = helm::chart_with_values(&chart(), &full);
    let l = helm::lint(&copy.path().join("media-fleet"));
    assert_eq!(l.errors, 0, "with every option on: {l:?}");
    assert!(l.messages.iter().all(|(sev, _)| *sev < 2), "{l:?}");

    // The schema catches what would otherwise render a broken manifest.
    for bad in [
        json!({"operator": {"replicas": "two"}}),
        json!({"pool": {"ports": {"slotSize": 101}}}),
        json!({"pool": {"srtp": "Sometimes"}}),
        json!({"pool": {"voiceProcessing": {"echoCancellation": "always"}}}),
        json!({"operatr": {}}),
    ] {
        let mut v = default_values();
        helm::merge(&mut v, &bad);
        let copy = helm::chart_with_values(&chart(), &v);
        let l = helm::lint(&copy.path().join("media-fleet"));
        assert!(l.errors > 0 && l.messages.iter().any(|(sev, path)| *sev == 3 && path == "values.yaml"), "{bad} must be refused: {l:?}");
    }
}

/// Every metric the dashboard plots is one the node or the operator exports.
#[test]
fn dashboard_plots_metrics_that_exist() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("dashboards/media-fleet.json")).unwrap()).unwrap();
    let sources = [repo().join("media-node/src/metrics.rs"), repo().join("operator/src/metrics.rs")]
        .map(|p| std::fs::read_to_string(p).unwrap())
        .join("\n");
    let mut seen = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("media_")) {
                let base = ["_bucket", "_count", "_sum"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                assert!(sources.contains(&format!("\"{base}\"")), "the dashboard plots {word}, which nothing exports");
                seen += 1;
            }
        }
    }
    assert!(seen >= 15, "the dashboard plots the fleet's metrics ({seen})");
    for key in ["occupancy", "Calls", "loss", "jitter", "Recordings pending"] {
        assert!(dash["panels"].as_array().unwrap().iter().any(|p| p["title"].as_str().unwrap().contains(key)), "a panel for {key}");
    }
}

/// The plain manifests grant the operator exactly what the chart grants.
#[test]
fn base_and_chart_grant_the_same_rules() {
    let chart_rbac = std::fs::read_to_string(chart().join("templates/rbac.yaml")).unwrap();
    let start = chart_rbac.find("rules:").unwrap();
    let end = start + chart_rbac[start..].find("---").unwrap();
    let chart_rules: serde_yaml::Value = serde_yaml::from_str(&chart_rbac[start..end]).unwrap();
    let base = std::fs::read_to_string(repo().join("deploy/base/operator-rbac.yaml")).unwrap();
    let first: serde_yaml::Value = serde_yaml::from_str(base.split("\n---").next().unwrap()).unwrap();
    assert_eq!(first["rules"], chart_rules["rules"]);
}

/// The chart's default images are the ones the Dockerfiles build.
#[test]
fn chart_images_match_the_dockerfiles() {
    let v = default_values();
    for (dockerfile, repo_key) in
        [("operator/Dockerfile", &v["operator"]["image"]["repository"]), ("media-node/Dockerfile", &v["mediaNode"]["image"]["repository"])]
    {
        let text = std::fs::read_to_string(repo().join(dockerfile)).unwrap();
        let image = repo_key.as_str().unwrap();
        assert!(text.contains(&format!("-t {image}:")), "{dockerfile} builds {image}");
        assert!(text.contains("USER 65532"), "{dockerfile} runs as non-root");
    }
}

async fn metric(http: u16, name: &str) -> f64 {
    let text = media_tools::http::get(&format!("127.0.0.1:{http}"), "/metrics").await.map(|r| r.1).unwrap_or_default();
    fleet_tests::metric_value(&text, name)
}

/// What the operator's ServiceAccount must not be able to do.
async fn assert_least_privilege(admin: &Client, ns: &str, sa: &str, pool_ns: &str) {
    let denied = [
        ("get", "", "secrets", Some(pool_ns)),
        ("list", "", "secrets", None),
        ("get", "", "configmaps", Some(pool_ns)),
        ("get", "", "nodes", None),
        ("create", "", "namespaces", None),
        ("delete", "", "namespaces", None),
        ("create", "apps", "deployments", Some(pool_ns)),
        ("create", "rbac.authorization.k8s.io", "clusterroles", None),
        ("escalate", "rbac.authorization.k8s.io", "clusterroles", None),
        ("update", "media.sentiric.cloud", "mediapools", Some(pool_ns)),
        ("delete", "media.sentiric.cloud", "mediapools", Some(pool_ns)),
        ("create", "", "pods/exec", Some(pool_ns)),
        ("update", "coordination.k8s.io", "leases", Some(pool_ns)),
    ];
    for (verb, group, resource, namespace) in denied {
        assert!(
            !can(admin, ns, sa, verb, group, resource, namespace).await,
            "{sa} may {verb} {group}/{resource} in {namespace:?}: wider than needed"
        );
    }
    for (verb, group, resource) in
        [("create", "", "pods"), ("watch", "media.sentiric.cloud", "mediapools"), ("create", "policy", "poddisruptionbudgets")]
    {
        assert!(can(admin, ns, sa, verb, group, resource, Some(pool_ns)).await, "{sa} needs {verb} {resource}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_the_operator_runs_under_the_charts_service_account() {
    let cp = ControlPlane::start().await;
    let admin = cp.client().await.unwrap();
    create_namespace(&admin, "telephony").await;
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "chart-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "ExternalIP", "address": "127.0.0.2"}]}
    }))
    .unwrap();
    Api::<Node>::all(admin.clone()).create(&PostParams::default(), &node).await.unwrap();

    // `helm install` with the defaults, then a pool from values on `helm upgrade` (on a
    // first install Helm 4 does not wait for its CRDs before mapping a MediaPool).
    helm::install(&cp.kubeconfig, "media-system", "media-fleet", &chart(), &json!({})).expect("helm install");
    let values = json!({
        "pool": {"enabled": true, "namespace": "telephony", "replicas": 2, "quarantineSeconds": 2,
                 "ports": {"min": 25000, "max": 25399, "slotSize": 100}},
    });
    helm::upgrade(&cp.kubeconfig, "media-system", "media-fleet", &chart(), &values).expect("helm upgrade with a pool");

    // What the chart made.
    let sys = "media-system";
    Api::<Deployment>::namespaced(admin.clone(), sys).get("media-fleet-operator").await.expect("operator Deployment");
    Api::<ServiceAccount>::namespaced(admin.clone(), sys).get("media-fleet-operator").await.expect("operator ServiceAccount");
    Api::<Service>::namespaced(admin.clone(), sys).get("media-fleet-operator").await.expect("operator metrics Service");
    Api::<Role>::namespaced(admin.clone(), sys).get("media-fleet-operator-leader").await.expect("Lease Role");
    Api::<RoleBinding>::namespaced(admin.clone(), sys).get("media-fleet-operator-leader").await.expect("Lease RoleBinding");
    Api::<ClusterRole>::all(admin.clone()).get("media-fleet-operator").await.expect("operator ClusterRole");
    Api::<ClusterRoleBinding>::all(admin.clone()).get("media-fleet-operator").await.expect("operator ClusterRoleBinding");
    Api::<ClusterRole>::all(admin.clone()).get("media-node-reader").await.expect("media-node-reader ClusterRole");
    let dash = Api::<ConfigMap>::namespaced(admin.clone(), sys).get("media-fleet-dashboard").await.expect("dashboard ConfigMap");
    assert_eq!(dash.labels().get("grafana_dashboard").map(String::as_str), Some("1"));
    let json: serde_json::Value = serde_json::from_str(&dash.data.unwrap()["media-fleet.json"]).expect("the dashboard is JSON");
    assert_eq!(json["uid"], "media-fleet");
    let pool = Api::<MediaPool>::namespaced(admin.clone(), "telephony").get("media-service").await.expect("the MediaPool from values");
    assert_eq!(pool.spec.template.image, "ghcr.io/sentiric/media-node:0.1.0");

    assert_least_privilege(&admin, sys, "media-fleet-operator", "telephony").await;

    // The operator under the chart's ServiceAccount, with a token issued for it.
    let token = service_account_token(&admin, sys, "media-fleet-operator").await;
    let op_client = client_from(&cp.kubeconfig_with_token("operator", &token)).await.unwrap();
    let operator = start_operator_leasing_in(op_client, "chart-operator", 28192, sys);
    let pods = eventually("the operator makes the pool's pods", 30, || async {
        let p = Api::<Pod>::namespaced(admin.clone(), "telephony").list(&ListParams::default().labels(POOL_LABEL)).await.ok()?.items;
        (p.len() == 2).then_some(p)
    })
    .await;
    assert!(pods.iter().all(|p| p.spec.as_ref().unwrap().service_account_name.as_deref() == Some("media-node")));
    Api::<PodDisruptionBudget>::namespaced(admin.clone(), "telephony").get("media-service").await.expect("pool PodDisruptionBudget");
    Api::<Service>::namespaced(admin.clone(), "telephony").get("media-service").await.expect("callers' Service");
    Api::<ClusterRoleBinding>::all(admin.clone()).get("media-node-reader-telephony").await.expect("the operator bound media-node-reader");

    // Node pods run under the ServiceAccount the operator made, with their own token:
    // they report, and read their Node (the advertised address is its ExternalIP).
    let node_token = service_account_token(&admin, "telephony", "media-node").await;
    let node_kubeconfig = cp.kubeconfig_with_token("media-node", &node_token);
    let assets = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(admin.clone(), "telephony", node_kubeconfig, "chart-node", assets.path().to_path_buf());
    eventually("the pool reports 2 ready nodes", 40, || async {
        let s = Api::<MediaPool>::namespaced(admin.clone(), "telephony").get("media-service").await.ok()?.status?;
        (s.ready_replicas == 2).then_some(())
    })
    .await;
    let mns = Api::<MediaNode>::namespaced(admin.clone(), "telephony").list(&ListParams::default()).await.unwrap().items;
    assert!(
        mns.iter().all(|m| m.status.as_ref().and_then(|s| s.advertised_address.as_deref()) == Some("127.0.0.2")),
        "nodes may read their Node"
    );
    for (verb, group, resource) in [("list", "", "secrets"), ("create", "", "pods"), ("patch", "media.sentiric.cloud", "medianodes")] {
        assert!(
            !can(&admin, "telephony", "media-node", verb, group, resource, Some("telephony")).await,
            "media-node may {verb} {resource}"
        );
    }
    assert!(metric(28192, "media_operator_reconciles_total{result=\"ok\"}").await > 0.0);
    assert_eq!(metric(28192, "media_operator_reconciles_total{result=\"error\"}").await, 0.0, "no reconcile was refused by RBAC");

    operator.stop().await;
    kubelet.stop().await;
    drop(cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_base_and_examples_apply_then_the_operator_runs_under_its_service_account() {
    let cp = ControlPlane::start().await;
    let admin = cp.client().await.unwrap();
    let out = cp.kubectl(&["apply", "-k", repo().join("deploy/base").to_str().unwrap()]);
    assert!(out.status.success(), "kubectl apply -k deploy/base: {}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/mediapools.media.sentiric.cloud",
        "crd/medianodes.media.sentiric.cloud",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl(&["apply", "-f", repo().join("deploy/examples").to_str().unwrap()]);
    assert!(out.status.success(), "kubectl apply -f deploy/examples: {}", String::from_utf8_lossy(&out.stderr));

    let sys = "media-system";
    let dep = Api::<Deployment>::namespaced(admin.clone(), sys).get("media-operator").await.expect("operator Deployment");
    assert_eq!(dep.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("ghcr.io/sentiric/media-operator:0.1.0"));
    Api::<ClusterRole>::all(admin.clone()).get("media-node-reader").await.expect("media-node-reader ClusterRole");
    Api::<Secret>::namespaced(admin.clone(), "telephony").get("recordings-s3").await.expect("the example's Secret");
    let pools: Vec<String> = Api::<MediaPool>::namespaced(admin.clone(), "telephony")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pools.len(), 4, "{pools:?}");
    let sip = Api::<ConfigMap>::namespaced(admin.clone(), "telephony").get("sip-service-media").await.unwrap();
    assert_eq!(sip.data.unwrap()["MEDIA_SERVICE_TARGET_GRPC_URL"], "media-service.telephony.svc:13031");

    assert_least_privilege(&admin, sys, "media-operator", "telephony").await;
    let token = service_account_token(&admin, sys, "media-operator").await;
    let op_client = client_from(&cp.kubeconfig_with_token("operator", &token)).await.unwrap();
    let operator = start_operator_leasing_in(op_client, "kustomize-operator", 28193, sys);
    // Every example pool gets its 2 nodes, its Services and its budget.
    eventually("8 node pods for the 4 example pools", 40, || async {
        let p = Api::<Pod>::namespaced(admin.clone(), "telephony").list(&ListParams::default().labels(POOL_LABEL)).await.ok()?.items;
        (p.len() == 8).then_some(())
    })
    .await;
    for pool in ["media-service", "media-autoscaled", "media-recording", "media-secure"] {
        Api::<Service>::namespaced(admin.clone(), "telephony").get(pool).await.expect("callers' Service");
        Api::<PodDisruptionBudget>::namespaced(admin.clone(), "telephony").get(pool).await.expect("budget");
    }
    let recording_pods = Api::<Pod>::namespaced(admin.clone(), "telephony")
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}=media-recording")))
        .await
        .unwrap()
        .items;
    let env = recording_pods[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let secret_ref =
        env.iter().find(|e| e.name == "BUCKET_SECRET_ACCESS_KEY").and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone()).unwrap();
    assert_eq!(secret_ref.name, "recordings-s3", "node pods read the S3 keys from the Secret, not the operator");
    let secure_pods = Api::<Pod>::namespaced(admin.clone(), "telephony")
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}=media-secure")))
        .await
        .unwrap()
        .items;
    let env = secure_pods[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let policy = env.iter().find(|e| e.name == "MEDIA_SRTP_POLICY").and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("required"), "the SRTP pool's nodes refuse plain RTP");
    eventually("status written for every pool", 20, || async {
        let ps = Api::<MediaPool>::namespaced(admin.clone(), "telephony").list(&ListParams::default()).await.ok()?.items;
        ps.iter().all(|p| p.status.as_ref().is_some_and(|s| s.replicas == 2)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(28193, "media_operator_reconciles_total{result=\"error\"}").await, 0.0, "no reconcile was refused by RBAC");
    operator.stop().await;
    drop(cp);
}
