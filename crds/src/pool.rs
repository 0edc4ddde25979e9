//! `MediaPool`: a fleet of media nodes on the host network, each owning a disjoint
//! slice ("slot") of one UDP port range.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A pool of media nodes. The operator runs `replicas` node pods with hostNetwork, gives
/// each a disjoint slot of the port range, and reports the pool's state in `status`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "media.sentiric.cloud",
    version = "v1alpha1",
    kind = "MediaPool",
    namespaced,
    shortname = "mp",
    status = "MediaPoolStatus",
    derive = "PartialEq",
    doc = "A pool of media nodes serving the platform's MediaService through one Service.",
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas", label_selector_path = ".status.selector"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Draining", type_ = "integer", json_path = ".status.drainingReplicas"),
    printcolumn(name = "Calls", type_ = "integer", json_path = ".status.activeSessions"),
    printcolumn(name = "Free ports", type_ = "integer", json_path = ".status.ports.free"),
    printcolumn(name = "Up-to-date", type_ = "integer", json_path = ".status.updatedReplicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.replicas <= (self.spec.ports.max - self.spec.ports.min + 1) / self.spec.ports.slotSize")
        .message("spec.replicas is larger than the number of slots: (ports.max - ports.min + 1) / ports.slotSize"),
    validation = Rule::new("!has(self.spec.autoscaling) || self.spec.autoscaling.maxReplicas <= (self.spec.ports.max - self.spec.ports.min + 1) / self.spec.ports.slotSize")
        .message("spec.autoscaling.maxReplicas is larger than the number of slots: (ports.max - ports.min + 1) / ports.slotSize")
)]
#[serde(rename_all = "camelCase")]
pub struct MediaPoolSpec {
    /// How many media nodes to run. Each takes one slot of the port range.
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// The UDP port range the pool's nodes share, and the size of one node's slice.
    pub ports: PortRange,
    /// Seconds a released RTP port waits before reuse (late packets of the old call
    /// never reach a new one). Also how long a freed slot waits before another node gets it.
    #[serde(default = "default_quarantine")]
    #[schemars(range(min = 0, max = 3600))]
    pub quarantine_seconds: i32,
    /// How each node pod is built.
    pub template: NodeTemplate,
    /// Which address a node advertises to callers (what they put in SDP).
    #[serde(default)]
    pub advertise: AdvertiseAddress,
    /// How long a draining node may keep its calls before it is removed anyway.
    #[serde(default = "default_drain")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: i32,
    /// Where recordings go when a StartRecording request names no output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingDefaults>,
    /// How a change to the node template (or anything else that shapes a node pod)
    /// replaces the nodes: new ones come up first, old ones drain their calls.
    #[serde(default)]
    pub rollout: RolloutPolicy,
    /// Optional: the operator sets `replicas` from occupancy. Leave it out to set
    /// `replicas` yourself or through the scale subresource (e.g. an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingPolicy>,
    /// Secure media for the pool's calls (the nodes' MEDIA_SRTP_POLICY): Required
    /// refuses plain RTP offers and answers, Off refuses SRTP ones; left out, the nodes'
    /// default (Optional: SRTP when the far end offers keys). A request may still ask
    /// for its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<SrtpMode>,
    /// Admission control (the nodes' MEDIA_MAX_LOAD_PERCENT): the busy share of a
    /// node's media threads, percent, past which it refuses new calls and reports
    /// itself overloaded, so the pool places them on other nodes and the autoscaler
    /// counts it as full; 0 turns it off. Left out, the nodes' default (55).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_load_percent: Option<i32>,
    /// What the pool's calls do to the caller's audio from the start (the nodes'
    /// MEDIA_ECHO_CANCELLATION and MEDIA_NOISE_SUPPRESSION); a call may change it
    /// with SetAudioProcessing. Left out, both off: cancellation multiplies a call's
    /// CPU by about four and suppression by three (BENCHMARKS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_processing: Option<VoiceProcessing>,
}

/// Echo cancellation against the node's own playout and noise suppression of the
/// caller's audio, for what listeners, speech events and barge-in hear.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VoiceProcessing {
    /// Cancel the echo of what the node plays (speakerphones, car kits).
    #[serde(default)]
    pub echo_cancellation: bool,
    /// Suppress the caller's background noise.
    #[serde(default)]
    pub noise_suppression: bool,
}

impl VoiceProcessing {
    /// Either is on (both off is the nodes' own default).
    pub fn any(&self) -> bool {
        self.echo_cancellation || self.noise_suppression
    }
}

/// SRTP with SDES keys for a pool's calls.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrtpMode {
    /// Plain RTP only.
    Off,
    /// SRTP when the far end offers or accepts keys, plain RTP otherwise.
    Optional,
    /// SRTP only.
    Required,
}

impl SrtpMode {
    /// The node's MEDIA_SRTP_POLICY value.
    pub fn policy(self) -> &'static str {
        match self {
            SrtpMode::Off => "off",
            SrtpMode::Optional => "optional",
            SrtpMode::Required => "required",
        }
    }
}

/// Limits of a rollout, counted in nodes, as in a Deployment's RollingUpdate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxSurge > 0 || self.maxUnavailable > 0").message("rollout.maxSurge and rollout.maxUnavailable cannot both be 0: the rollout could never start"))]
pub struct RolloutPolicy {
    /// Nodes that may serve above `replicas` while new ones come up (uses free slots).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_surge: i32,
    /// Serving nodes that may be missing below `replicas` during a rollout or scale-down.
    /// A draining node is never cut short by this: it keeps its calls until they end or
    /// its drain deadline passes.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub max_unavailable: i32,
}

fn one() -> i32 {
    1
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy { max_surge: 1, max_unavailable: 0 }
    }
}

/// Scaling on occupancy: keep a buffer of free call capacity, within bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[x_kube(validation = Rule::new("has(self.freeSessions) || has(self.freePercent)").message("autoscaling needs freeSessions or freePercent"))]
pub struct AutoscalingPolicy {
    /// Never fewer nodes than this.
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// Never more nodes than this.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Free calls to keep available over the serving nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub free_sessions: Option<i32>,
    /// Free capacity to keep, as a percent of the serving nodes' capacity (used when
    /// freeSessions is not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 90))]
    pub free_percent: Option<i32>,
    /// How long the pool must have had more nodes than it needs before one is removed.
    /// Scaling up is immediate.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: i32,
}

fn default_scale_down_delay() -> i32 {
    300
}

fn default_quarantine() -> i32 {
    5
}

fn default_drain() -> i32 {
    300
}

/// The pool's UDP ports. Slot k of a pool covers [min + k*slotSize, min + (k+1)*slotSize).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.min < self.max").message("ports.min must be below ports.max"))]
#[x_kube(validation = Rule::new("self.slotSize <= self.max - self.min + 1").message("ports.slotSize is larger than the whole range"))]
pub struct PortRange {
    /// First UDP port of the pool's range.
    #[schemars(range(min = 1024, max = 65535))]
    pub min: i32,
    /// Last UDP port of the pool's range.
    #[schemars(range(min = 1024, max = 65535))]
    pub max: i32,
    /// Ports in one node's slot: an even number, at least 4 (two calls of RTP+RTCP).
    /// The slot's first two ports double as the node's gRPC and metrics TCP ports.
    #[schemars(range(min = 4, max = 32768))]
    #[x_kube(validation = Rule::new("self % 2 == 0").message("ports.slotSize must be even: RTP takes the even port, RTCP the odd one"))]
    pub slot_size: i32,
}

/// The node pod template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeTemplate {
    /// The media-node container image.
    #[x_kube(validation = Rule::new("self != ''").message("template.image must name an image"))]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU and memory for the media-node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Nodes the pods may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Scheduling affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Extra environment for the media-node container (e.g. RABBITMQ_URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
}

/// Where a node's advertised address comes from.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AddressSource {
    /// The Kubernetes Node's ExternalIP (falls back to InternalIP when it has none).
    #[default]
    ExternalIP,
    /// The Kubernetes Node's InternalIP.
    InternalIP,
    /// The fixed `address` below (e.g. a NAT's public IP).
    Explicit,
}

/// How a node chooses the IP callers put in SDP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.source != 'Explicit' || (has(self.address) && self.address != '')").message("advertise.address is required when advertise.source is Explicit"))]
pub struct AdvertiseAddress {
    /// ExternalIP, InternalIP or Explicit.
    #[serde(default)]
    pub source: AddressSource,
    /// The address when source is Explicit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Default recording destination for the pool's nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordingDefaults {
    /// S3 bucket for recordings.
    pub bucket: String,
    /// S3 endpoint URL (for S3-compatible stores); empty for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Name of a Secret in the pool's namespace with keys accessKeyId and secretAccessKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

/// Port occupancy, summed over nodes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PortCounts {
    /// RTP ports the nodes manage.
    pub total: i64,
    /// RTP ports held by calls.
    pub allocated: i64,
    /// RTP ports waiting out their quarantine.
    pub quarantined: i64,
    /// RTP ports ready for new calls.
    pub free: i64,
}

/// What the pool is, as observed by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MediaPoolStatus {
    /// Node pods that exist (not yet terminating).
    #[serde(default)]
    pub replicas: i32,
    /// Nodes that report ready and are not draining.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Nodes that take no new calls and will go when their calls end.
    #[serde(default)]
    pub draining_replicas: i32,
    /// Port occupancy over all reporting nodes.
    #[serde(default)]
    pub ports: PortCounts,
    /// Calls in progress over the pool.
    #[serde(default)]
    pub active_sessions: i64,
    /// Recordings being written or uploaded.
    #[serde(default)]
    pub recordings_in_flight: i64,
    /// Label selector of the pool's node pods (for the scale subresource and HPA).
    #[serde(default)]
    pub selector: String,
    /// Nodes made from the pool's current template (not draining).
    #[serde(default)]
    pub updated_replicas: i32,
    /// Nodes whose heartbeat is stale; they are drained and replaced.
    #[serde(default)]
    pub unhealthy_replicas: i32,
    /// Hash of the node template the pool currently asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,
    /// What the autoscaler decided, when `spec.autoscaling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded, with reasons.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The autoscaler's state.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Nodes the occupancy calls for, before the bounds.
    pub recommended_replicas: i32,
    /// Nodes the autoscaler wants, within the bounds.
    pub desired_replicas: i32,
    /// Calls held (or ports in quarantine) on the serving nodes.
    pub used_sessions: i64,
    /// What held the autoscaler back: MaxReplicas, MinReplicas or Slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<String>,
    /// When the autoscaler last changed `spec.replicas` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Since when the pool has had more nodes than it needs (RFC 3339); a node is
    /// removed once this is older than scaleDownDelaySeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_since: Option<String>,
}
