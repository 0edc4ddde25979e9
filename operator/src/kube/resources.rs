//! The objects the operator makes for a pool, built as plain values (no client):
//! node Pods, MediaNodes, the callers' Service, the per-node headless Service, and the
//! node ServiceAccount with its role bindings.

use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use media_crds::{AddressSource, MediaNode, MediaPool, POOL_LABEL, SLOT_LABEL, TEMPLATE_HASH_LABEL};
use serde_json::{json, Value};

use crate::decide::slots::SlotPorts;

/// The gRPC port callers use on the pool's Service (the platform's default).
pub const SERVICE_GRPC_PORT: i32 = 13031;
pub const SERVICE_METRICS_PORT: i32 = 13032;
/// Where node pods keep recordings until storage confirms them.
pub const SPOOL_DIR: &str = "/var/spool/media-node";
/// Name of the node pods' ServiceAccount in each pool namespace.
pub const NODE_SERVICE_ACCOUNT: &str = "media-node";
/// ClusterRole (installed with the operator) that lets a node read Kubernetes Nodes.
pub const NODE_READER_CLUSTER_ROLE: &str = "media-node-reader";

fn owner(pool: &MediaPool) -> OwnerReference {
    pool.controller_owner_ref(&()).expect("a stored MediaPool has a name and uid")
}

pub fn pool_labels(pool: &MediaPool) -> Value {
    json!({ POOL_LABEL: pool.name_any(), "app.kubernetes.io/name": "media-node", "app.kubernetes.io/managed-by": "media-operator" })
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("built objects match their Kubernetes types")
}

fn node_labels(pool: &MediaPool, ports: SlotPorts, template_hash: &str) -> Value {
    let mut labels = pool_labels(pool);
    labels[SLOT_LABEL] = json!(ports.slot.to_string());
    labels[TEMPLATE_HASH_LABEL] = json!(template_hash);
    labels
}

pub fn media_node(pool: &MediaPool, name: &str, ports: SlotPorts, template_hash: &str) -> MediaNode {
    let labels = node_labels(pool, ports, template_hash);
    from_json(json!({
        "apiVersion": "media.sentiric.cloud/v1alpha1",
        "kind": "MediaNode",
        "metadata": { "name": name, "namespace": pool.namespace(), "labels": labels, "ownerReferences": [owner(pool)] },
        "spec": {
            "pool": pool.name_any(),
            "slot": ports.slot,
            "udpMin": ports.udp_min,
            "udpMax": ports.udp_max,
            "grpcPort": ports.grpc_port(),
            "metricsPort": ports.metrics_port(),
            "podName": name,
            "draining": false,
        }
    }))
}

pub fn node_pod(pool: &MediaPool, name: &str, ports: SlotPorts, template_hash: &str) -> Pod {
    let spec = &pool.spec;
    let t = &spec.template;
    let labels = node_labels(pool, ports, template_hash);
    let field = |path: &str| json!({ "valueFrom": { "fieldRef": { "fieldPath": path } } });
    let mut env = vec![
        json!({"name": "MEDIA_SERVICE_GRPC_PORT", "value": ports.grpc_port().to_string()}),
        json!({"name": "MEDIA_SERVICE_METRICS_PORT", "value": ports.metrics_port().to_string()}),
        json!({"name": "RTP_SERVICE_PORT_MIN", "value": ports.udp_min.to_string()}),
        json!({"name": "RTP_SERVICE_PORT_MAX", "value": ports.udp_max.to_string()}),
        json!({"name": "RTP_SERVICE_PORT_QUARANTINE_SECONDS", "value": spec.quarantine_seconds.to_string()}),
        json!({"name": "MEDIA_SERVICE_DRAIN_SECONDS", "value": spec.drain_timeout_seconds.to_string()}),
        json!({"name": "MEDIA_NODE_NAME", "value": name}),
        json!({"name": "MEDIA_POOL_NAME", "value": pool.name_any()}),
        json!({"name": "RECORDINGS_SPOOL_DIR", "value": SPOOL_DIR}),
        json!({"name": "MEDIA_ADVERTISE_SOURCE", "value": match spec.advertise.source {
            AddressSource::ExternalIP => "ExternalIP", AddressSource::InternalIP => "InternalIP", AddressSource::Explicit => "Explicit" }}),
    ];
    for (k, path) in [("MEDIA_NODE_NAMESPACE", "metadata.namespace"), ("NODE_NAME", "spec.nodeName"), ("POD_IP", "status.podIP")] {
        let mut e = field(path);
        e["name"] = json!(k);
        env.push(e);
    }
    if let Some(a) = &spec.advertise.address {
        env.push(json!({"name": "MEDIA_ADVERTISE_ADDRESS", "value": a}));
    }
    if let Some(mode) = spec.srtp {
        env.push(json!({"name": "MEDIA_SRTP_POLICY", "value": mode.policy()}));
    }
    if let Some(p) = spec.max_load_percent {
        env.push(json!({"name": "MEDIA_MAX_LOAD_PERCENT", "value": p.to_string()}));
    }
    if let Some(v) = spec.voice_processing.filter(|v| v.any()) {
        env.push(json!({"name": "MEDIA_ECHO_CANCELLATION", "value": v.echo_cancellation.to_string()}));
        env.push(json!({"name": "MEDIA_NOISE_SUPPRESSION", "value": v.noise_suppression.to_string()}));
    }
    if let Some(r) = &spec.recording {
        env.push(json!({"name": "BUCKET_NAME", "value": r.bucket}));
        if let Some(e) = &r.endpoint {
            env.push(json!({"name": "BUCKET_ENDPOINT_URL", "value": e}));
        }
        if let Some(reg) = &r.region {
            env.push(json!({"name": "BUCKET_REGION", "value": reg}));
        }
        if let Some(secret) = &r.credentials_secret {
            for (var, key) in [("BUCKET_ACCESS_KEY_ID", "accessKeyId"), ("BUCKET_SECRET_ACCESS_KEY", "secretAccessKey")] {
                env.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
            }
        }
    }
    for e in t.env.iter().flatten() {
        env.push(serde_json::to_value(e).expect("EnvVar serialises"));
    }
    // hostNetwork turns containerPorts into host ports: declaring the slot's TCP ports
    // and the first and last UDP ports lets the scheduler keep nodes whose slots
    // clash off the same host (slots of a pool are aligned, so any clash shares them).
    let ports_json = json!([
        {"name": "grpc", "containerPort": ports.grpc_port(), "hostPort": ports.grpc_port(), "protocol": "TCP"},
        {"name": "metrics", "containerPort": ports.metrics_port(), "hostPort": ports.metrics_port(), "protocol": "TCP"},
        {"name": "rtp-first", "containerPort": ports.udp_min, "hostPort": ports.udp_min, "protocol": "UDP"},
        {"name": "rtp-last", "containerPort": ports.udp_max, "hostPort": ports.udp_max, "protocol": "UDP"},
    ]);
    let mut container = json!({
        "name": "media-node",
        "image": t.image,
        "env": env,
        "ports": ports_json,
        "readinessProbe": { "grpc": { "port": ports.grpc_port() }, "periodSeconds": 2, "failureThreshold": 1 },
        "livenessProbe": { "httpGet": { "path": "/healthz", "port": ports.metrics_port() }, "periodSeconds": 10, "failureThreshold": 3 },
        "securityContext": { "allowPrivilegeEscalation": false, "runAsNonRoot": true, "capabilities": { "drop": ["ALL"] } },
        "volumeMounts": [{ "name": "spool", "mountPath": SPOOL_DIR }],
    });
    if let Some(p) = &t.image_pull_policy {
        container["imagePullPolicy"] = json!(p);
    }
    if let Some(r) = &t.resources {
        container["resources"] = serde_json::to_value(r).expect("resources serialise");
    }
    let mut pod_spec = json!({
        "hostNetwork": true,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "serviceAccountName": NODE_SERVICE_ACCOUNT,
        "terminationGracePeriodSeconds": spec.drain_timeout_seconds as i64 + 30,
        "containers": [container],
        // The recording spool outlives a crash of the process (the pod stays); the pod
        // itself is deleted only once the node reports no recording left to store.
        "volumes": [{ "name": "spool", "emptyDir": {} }],
    });
    if let Some(ns) = &t.node_selector {
        pod_spec["nodeSelector"] = json!(ns);
    }
    if let Some(tol) = &t.tolerations {
        pod_spec["tolerations"] = serde_json::to_value(tol).expect("tolerations serialise");
    }
    if let Some(a) = &t.affinity {
        pod_spec["affinity"] = serde_json::to_value(a).expect("affinity serialises");
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": pool.namespace(), "labels": labels, "ownerReferences": [owner(pool)] },
        "spec": pod_spec,
    }))
}

/// The address callers use: gRPC reaches a node through the named `grpc` port, which
/// resolves to each pod's own slot port.
pub fn caller_service(pool: &MediaPool) -> Service {
    service(pool, &pool.name_any(), false)
}

/// One DNS record per node, for per-node discovery and forwarding.
pub fn headless_service(pool: &MediaPool) -> Service {
    service(pool, &format!("{}-nodes", pool.name_any()), true)
}

fn service(pool: &MediaPool, name: &str, headless: bool) -> Service {
    let mut spec = json!({
        "selector": { POOL_LABEL: pool.name_any() },
        "ports": [
            {"name": "grpc", "port": SERVICE_GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
            {"name": "metrics", "port": SERVICE_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
        ],
    });
    if headless {
        spec["clusterIP"] = json!("None");
    } else {
        spec["type"] = json!("ClusterIP");
    }
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": pool.namespace(), "labels": pool_labels(pool), "ownerReferences": [owner(pool)] },
        "spec": spec,
    }))
}

/// Voluntary disruptions (node drains, evictions) take one node at a time, or the
/// rollout's maxUnavailable when larger. An evicted node drains its calls on SIGTERM.
pub fn disruption_budget(pool: &MediaPool) -> PodDisruptionBudget {
    from_json(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": { "name": pool.name_any(), "namespace": pool.namespace(), "labels": pool_labels(pool), "ownerReferences": [owner(pool)] },
        "spec": {
            "maxUnavailable": pool.spec.rollout.max_unavailable.max(1),
            "selector": { "matchLabels": { POOL_LABEL: pool.name_any() } },
        }
    }))
}

pub fn node_service_account(ns: &str) -> ServiceAccount {
    from_json(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NODE_SERVICE_ACCOUNT, "namespace": ns}}))
}

/// What a node may do in its namespace: read MediaNodes, write their status.
pub fn node_role(ns: &str) -> Role {
    from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": NODE_SERVICE_ACCOUNT, "namespace": ns},
        "rules": [
            {"apiGroups": [media_crds::GROUP], "resources": ["medianodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [media_crds::GROUP], "resources": ["medianodes/status"], "verbs": ["get", "patch", "update"]},
        ]
    }))
}

pub fn node_role_binding(ns: &str) -> RoleBinding {
    from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": NODE_SERVICE_ACCOUNT, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NODE_SERVICE_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": NODE_SERVICE_ACCOUNT, "namespace": ns}],
    }))
}

/// Lets the namespace's nodes read Kubernetes Nodes (to find their advertised IP).
pub fn node_reader_binding(ns: &str) -> ClusterRoleBinding {
    from_json(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{NODE_READER_CLUSTER_ROLE}-{ns}")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_READER_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": NODE_SERVICE_ACCOUNT, "namespace": ns}],
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use media_crds::MediaPoolSpec;

    pub fn pool() -> MediaPool {
        let spec: MediaPoolSpec = serde_json::from_value(json!({
            "replicas": 2,
            "ports": {"min": 30000, "max": 30999, "slotSize": 100},
            "template": {"image": "media-node:test"},
            "recording": {"bucket": "calls", "credentialsSecret": "s3"},
        }))
        .unwrap();
        let mut p = MediaPool::new("voice", spec);
        p.metadata.namespace = Some("telephony".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    #[test]
    fn node_pod_runs_on_the_host_network_with_its_slot() {
        let ports = SlotPorts { slot: 2, udp_min: 30200, udp_max: 30299 };
        let pod = node_pod(&pool(), "voice-2-abcde", ports, "abc123");
        assert_eq!(pod.labels().get(TEMPLATE_HASH_LABEL).map(String::as_str), Some("abc123"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
        assert_eq!(spec.termination_grace_period_seconds, Some(330));
        let c = &spec.containers[0];
        let env = |k: &str| c.env.as_ref().unwrap().iter().find(|e| e.name == k).and_then(|e| e.value.clone());
        assert_eq!(env("RTP_SERVICE_PORT_MIN").as_deref(), Some("30200"));
        assert_eq!(env("MEDIA_SERVICE_GRPC_PORT").as_deref(), Some("30200"));
        assert_eq!(env("MEDIA_SERVICE_METRICS_PORT").as_deref(), Some("30201"));
        assert_eq!(env("MEDIA_SRTP_POLICY"), None, "left to the node's default");
        let host_ports: Vec<(i32, String)> =
            c.ports.as_ref().unwrap().iter().map(|p| (p.host_port.unwrap(), p.protocol.clone().unwrap())).collect();
        assert!(host_ports.contains(&(30200, "TCP".into())) && host_ports.contains(&(30299, "UDP".into())));
        assert!(c.readiness_probe.as_ref().unwrap().grpc.is_some());
        let secret = c.env.as_ref().unwrap().iter().find(|e| e.name == "BUCKET_SECRET_ACCESS_KEY").unwrap();
        assert_eq!(secret.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "s3");
        assert_eq!(pod.metadata.owner_references.unwrap()[0].controller, Some(true));
    }

    #[test]
    fn a_pool_that_requires_srtp_tells_its_nodes() {
        let mut p = pool();
        p.spec.srtp = Some(media_crds::pool::SrtpMode::Required);
        let pod = node_pod(&p, "voice-0-abcde", SlotPorts { slot: 0, udp_min: 30000, udp_max: 30099 }, "abc");
        let c = &pod.spec.unwrap().containers[0];
        let policy = c.env.as_ref().unwrap().iter().find(|e| e.name == "MEDIA_SRTP_POLICY").and_then(|e| e.value.clone());
        assert_eq!(policy.as_deref(), Some("required"));
    }

    #[test]
    fn a_pools_load_limit_reaches_its_nodes_and_none_leaves_their_default() {
        let env = |p: &MediaPool| {
            let pod = node_pod(p, "voice-0-abcde", SlotPorts { slot: 0, udp_min: 30000, udp_max: 30099 }, "abc");
            pod.spec.unwrap().containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == "MEDIA_MAX_LOAD_PERCENT")
                .and_then(|e| e.value.clone())
        };
        let mut p = pool();
        assert_eq!(env(&p), None);
        p.spec.max_load_percent = Some(60);
        assert_eq!(env(&p).as_deref(), Some("60"));
    }

    #[test]
    fn voice_processing_reaches_the_nodes_as_environment() {
        let env = |p: &MediaPool, name: &str| {
            let pod = node_pod(p, "voice-0-abcde", SlotPorts { slot: 0, udp_min: 30000, udp_max: 30099 }, "abc");
            pod.spec.unwrap().containers[0].env.as_ref().unwrap().iter().find(|e| e.name == name).and_then(|e| e.value.clone())
        };
        let mut p = pool();
        assert_eq!(env(&p, "MEDIA_ECHO_CANCELLATION"), None);
        p.spec.voice_processing = Some(media_crds::pool::VoiceProcessing { echo_cancellation: true, noise_suppression: false });
        assert_eq!(env(&p, "MEDIA_ECHO_CANCELLATION").as_deref(), Some("true"));
        assert_eq!(env(&p, "MEDIA_NOISE_SUPPRESSION").as_deref(), Some("false"));
    }

    #[test]
    fn the_budget_covers_the_pool_pods() {
        let pdb = disruption_budget(&pool());
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
        assert_eq!(spec.selector.unwrap().match_labels.unwrap().get(POOL_LABEL).map(String::as_str), Some("voice"));
    }

    #[test]
    fn caller_service_targets_the_named_grpc_port() {
        let s = caller_service(&pool());
        let port = &s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 13031);
        assert_eq!(port.target_port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("grpc".into())));
        assert_eq!(headless_service(&pool()).spec.unwrap().cluster_ip.as_deref(), Some("None"));
    }
}
