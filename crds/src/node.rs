//! `MediaNode`: one per node pod. The operator writes the spec (slot, ports,
//! draining); the node writes the status (occupancy, heartbeat, address).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::pool::PortCounts;

/// One media node of a pool: its slot of ports and what it reports.
// kube's derive takes one printcolumn(...) per column, which clippy reads as a repeat.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "media.sentiric.cloud",
    version = "v1alpha1",
    kind = "MediaNode",
    namespaced,
    shortname = "mn",
    status = "MediaNodeStatus",
    derive = "PartialEq",
    doc = "One media node: its slot of the pool's ports (from the operator) and its state (from the node).",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Slot", type_ = "integer", json_path = ".spec.slot"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.advertisedAddress"),
    printcolumn(name = "Calls", type_ = "integer", json_path = ".status.sessions"),
    printcolumn(name = "Draining", type_ = "boolean", json_path = ".spec.draining"),
    printcolumn(name = "Heartbeat", type_ = "date", json_path = ".status.heartbeatTime")
)]
#[serde(rename_all = "camelCase")]
pub struct MediaNodeSpec {
    /// The MediaPool this node belongs to.
    pub pool: String,
    /// The node's slot index in the pool's port range.
    #[schemars(range(min = 0))]
    pub slot: i32,
    /// First UDP port of the slot (RTP ports are the even ones).
    pub udp_min: i32,
    /// Last UDP port of the slot.
    pub udp_max: i32,
    /// TCP port of the node's gRPC MediaService.
    pub grpc_port: i32,
    /// TCP port of the node's metrics and health endpoints.
    pub metrics_port: i32,
    /// The name of the node pod.
    pub pod_name: String,
    /// True when the node must take no new calls and will be removed.
    #[serde(default)]
    pub draining: bool,
    /// When a draining node is removed even with calls left (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<String>,
}

/// What the node reports about itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MediaNodeStatus {
    /// RTP port occupancy of this node.
    #[serde(default)]
    pub ports: PortCounts,
    /// Calls in progress.
    #[serde(default)]
    pub sessions: i64,
    /// Recordings being written or uploaded.
    #[serde(default)]
    pub recordings: i64,
    /// The IP callers must put in SDP for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<String>,
    /// gRPC endpoint of this node (ip:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_endpoint: Option<String>,
    /// When the node last reported (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<String>,
    /// True when the node serves and is not draining.
    #[serde(default)]
    pub ready: bool,
    /// True once the node has seen `spec.draining` and stopped taking calls; the
    /// operator removes a drained node only after this acknowledgement.
    #[serde(default)]
    pub draining: bool,
    /// True while the node's admission control refuses new calls: its media threads
    /// are at their load limit (or sending late). It serves its calls; the pool places
    /// new ones elsewhere and the autoscaler counts it as full.
    #[serde(default)]
    pub overloaded: bool,
    /// The node's media threads' busy share, percent, in steps of 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_percent: Option<i64>,
    /// Ready, with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
