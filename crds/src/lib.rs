//! The Kubernetes contract of the media fleet, group `media.sentiric.cloud`, version
//! `v1alpha1`: `MediaPool` (what a platform operator asks for) and `MediaNode` (one
//! per node pod: spec from the operator, status from the node). The CRD YAML in
//! `crds/yaml/` is generated from these types by `crdgen` and checked by a test.

pub mod node;
pub mod pool;

pub use node::{MediaNode, MediaNodeSpec, MediaNodeStatus};
pub use pool::{
    AddressSource, AdvertiseAddress, AutoscalingPolicy, AutoscalingStatus, MediaPool, MediaPoolSpec, MediaPoolStatus, NodeTemplate,
    PortCounts, PortRange, RecordingDefaults, RolloutPolicy, SrtpMode,
};

pub const GROUP: &str = "media.sentiric.cloud";
pub const VERSION: &str = "v1alpha1";

/// Label on every object the operator makes for a pool.
pub const POOL_LABEL: &str = "media.sentiric.cloud/pool";
/// Label/annotation naming a node pod's slot.
pub const SLOT_LABEL: &str = "media.sentiric.cloud/slot";
/// Annotation on a MediaNode whose pod is gone: when its slot was released (RFC 3339).
/// The slot stays quarantined until this plus the pool's quarantine.
pub const RELEASED_AT_ANNOTATION: &str = "media.sentiric.cloud/released-at";
/// Label naming the hash of the node template a pod was made from.
pub const TEMPLATE_HASH_LABEL: &str = "media.sentiric.cloud/template-hash";

use kube::CustomResourceExt;

/// Every CRD of the fleet, as YAML documents, in a stable order.
pub fn crds_yaml() -> Vec<(String, String)> {
    [MediaPool::crd(), MediaNode::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), serde_yaml::to_string(&crd).expect("CRDs serialise"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when the committed YAML differs from what the types generate.
    #[test]
    fn committed_yaml_is_current() {
        // Read at run time (cargo test sets it), not baked in at build time: a test
        // binary from a shared build cache may have been built in another checkout.
        let root = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")), std::path::PathBuf::from);
        let dir = root.join("yaml");
        for (file, yaml) in crds_yaml() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(committed == yaml, "crds/yaml/{file} is stale: run `cargo run -p media-crds --bin crdgen -- crds/yaml`");
        }
    }

    #[test]
    fn pool_crd_has_scale_columns_and_rules() {
        let crd = serde_json::to_value(MediaPool::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["subresources"]["scale"]["labelSelectorPath"], ".status.selector");
        let cols: Vec<&str> = v["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(cols, ["Desired", "Ready", "Draining", "Calls", "Free ports", "Up-to-date", "Age"]);
        let text = crd.to_string();
        assert!(text.contains("x-kubernetes-validations"));
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "mp");
    }
}
