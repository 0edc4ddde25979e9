//! What identifies a node pod's shape, so a change to it rolls the pool.

use media_crds::MediaPoolSpec;
use serde_json::json;

/// A stable hash of everything in the spec that goes into a node pod except its slot:
/// the template, the address rule, the recording defaults, the quarantine, the drain
/// timeout, the SRTP mode and the load limit. `replicas`, `rollout` and `autoscaling` are left out: changing them
/// must not replace nodes. FNV-1a, because std's hasher is not stable across releases
/// and this value is stored in labels.
pub fn template_hash(spec: &MediaPoolSpec) -> String {
    let mut shape = json!({
        "template": spec.template,
        "advertise": spec.advertise,
        "recording": spec.recording,
        "quarantineSeconds": spec.quarantine_seconds,
        "drainTimeoutSeconds": spec.drain_timeout_seconds,
    });
    // Settings that reach the node as environment, in the shape only when set: a pool
    // that never set them keeps the hash it had before they existed (an operator
    // upgrade does not roll it), and setting one rolls the pool onto it.
    if let Some(srtp) = spec.srtp {
        shape["srtp"] = json!(srtp);
    }
    if let Some(p) = spec.max_load_percent {
        shape["maxLoadPercent"] = json!(p);
    }
    // Both off is what a pool without it runs: the same hash.
    if let Some(v) = spec.voice_processing.filter(|v| v.any()) {
        shape["voiceProcessing"] = json!(v);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in shape.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MediaPoolSpec {
        serde_json::from_value(json!({
            "replicas": 2,
            "ports": {"min": 30000, "max": 30999, "slotSize": 100},
            "template": {"image": "media-node:1"},
        }))
        .unwrap()
    }

    #[test]
    fn only_the_pod_shape_changes_the_hash() {
        let a = spec();
        let mut b = a.clone();
        b.replicas = 5;
        b.rollout.max_surge = 3;
        assert_eq!(template_hash(&a), template_hash(&b), "scaling is not a rollout");
        b.template.image = "media-node:2".into();
        assert_ne!(template_hash(&a), template_hash(&b));
        let mut c = a.clone();
        c.drain_timeout_seconds = 60;
        assert_ne!(template_hash(&a), template_hash(&c));
        let before = template_hash(&a);
        let mut d = a.clone();
        d.max_load_percent = Some(50);
        assert_ne!(template_hash(&d), before, "a new load limit reaches the nodes by a rollout");
        d.max_load_percent = None;
        d.srtp = Some(media_crds::pool::SrtpMode::Required);
        assert_ne!(template_hash(&d), before, "so does an SRTP mode");
        let mut e = a.clone();
        e.voice_processing = Some(media_crds::pool::VoiceProcessing::default());
        assert_eq!(template_hash(&e), before, "voice processing all off is the default");
        e.voice_processing = Some(media_crds::pool::VoiceProcessing { echo_cancellation: true, noise_suppression: false });
        assert_ne!(template_hash(&e), before, "echo cancellation reaches the nodes by a rollout");
        // The hash of a spec without them is what it was before they existed.
        assert_eq!(before, "88bce1d2cb", "unchanged for pools that never set them");
        assert_eq!(template_hash(&a).len(), 10, "fits a label value");
        assert_eq!(template_hash(&a), template_hash(&spec()), "stable across calls");
    }
}
