//! The pool's status: counts summed from what nodes report, and conditions whose
//! lastTransitionTime changes only when their status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use media_crds::{AutoscalingStatus, MediaPoolStatus, PortCounts, POOL_LABEL};

use super::plan::{live_nodes, NodeObs, Plan, PodObs};
use super::Timestamp;

pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conds.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

pub struct StatusInput<'a> {
    pub pool_name: &'a str,
    pub desired: i32,
    pub generation: Option<i64>,
    pub pods: &'a [PodObs],
    pub nodes: &'a [NodeObs],
    pub plan: &'a Plan,
    pub previous: Option<&'a MediaPoolStatus>,
    pub template_hash: &'a str,
    pub autoscaling: Option<AutoscalingStatus>,
    pub now: Timestamp,
}

pub fn pool_status(i: StatusInput<'_>) -> MediaPoolStatus {
    let live: Vec<&NodeObs> = live_nodes(i.nodes, i.pods).collect();
    let mut s =
        MediaPoolStatus { selector: format!("{POOL_LABEL}={}", i.pool_name), observed_generation: i.generation, ..Default::default() };
    s.replicas = live.len() as i32;
    s.draining_replicas = live.iter().filter(|n| n.draining).count() as i32;
    s.ready_replicas = live.iter().filter(|n| !n.draining && n.serves(i.pods, i.now)).count() as i32;
    s.updated_replicas = live.iter().filter(|n| !n.draining && n.template_hash.as_deref() == Some(i.template_hash)).count() as i32;
    s.unhealthy_replicas = live.iter().filter(|n| n.stale(i.now)).count() as i32;
    s.template_hash = Some(i.template_hash.to_string());
    s.autoscaling = i.autoscaling.clone();
    let mut ports = PortCounts::default();
    for r in live.iter().filter_map(|n| n.report.as_ref()) {
        ports.total += r.ports_total;
        ports.allocated += r.ports_allocated;
        ports.quarantined += r.ports_quarantined;
        ports.free += r.ports_free;
        s.active_sessions += r.sessions;
        s.recordings_in_flight += r.recordings;
    }
    s.ports = ports;

    let mut conds = i.previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let (g, now) = (i.generation, i.now);
    let ready = s.ready_replicas >= i.desired;
    set_condition(
        &mut conds,
        "Ready",
        ready,
        if ready { "NodesReady" } else { "NodesNotReady" },
        format!("{} of {} nodes ready", s.ready_replicas, i.desired),
        g,
        now,
    );
    let serving = s.replicas - s.draining_replicas;
    let rolling = s.updated_replicas < serving;
    let progressing = serving != i.desired || s.draining_replicas > 0 || rolling || !i.plan.actions.is_empty();
    set_condition(
        &mut conds,
        "Progressing",
        progressing,
        if !progressing {
            "Stable"
        } else if rolling {
            "RollingUpdate"
        } else {
            "Reconciling"
        },
        format!("{serving} serving ({} up to date), {} draining, {} wanted", s.updated_replicas, s.draining_replicas, i.desired),
        g,
        now,
    );
    let unhealthy: Vec<&str> = live.iter().filter(|n| n.stale(now)).map(|n| n.name.as_str()).collect();
    let (degraded, reason, message) = if i.plan.slots_exhausted {
        (true, "SlotsExhausted", "the port range has no free slot for another node; widen spec.ports or lower spec.replicas".to_string())
    } else if !unhealthy.is_empty() {
        (true, "NodesUnhealthy", format!("no recent heartbeat from {}", unhealthy.join(", ")))
    } else {
        (false, "Healthy", "every node reports".to_string())
    };
    set_condition(&mut conds, "Degraded", degraded, reason, message, g, now);
    s.conditions = conds;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_change() {
        let mut c = Vec::new();
        set_condition(&mut c, "Ready", false, "NodesNotReady", "0 of 1".into(), Some(1), t(0));
        set_condition(&mut c, "Ready", false, "NodesNotReady", "0 of 1".into(), Some(2), t(10));
        assert_eq!(c[0].last_transition_time, Time(t(0)));
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(&mut c, "Ready", true, "NodesReady", "1 of 1".into(), Some(2), t(20));
        assert_eq!(c[0].last_transition_time, Time(t(20)));
    }
}
