//! The reconcile loop: observe a pool's Pods and MediaNodes, ask `decide` what to do,
//! do it, and write the pool's status (server-side apply, only when it changed).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use media_crds::{AutoscalingStatus, MediaNode, MediaPool, POOL_LABEL, RELEASED_AT_ANNOTATION, TEMPLATE_HASH_LABEL};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::events::{EventRecorder, EventType};
use super::resources;
use crate::decide::autoscale::{self, Limit};
use crate::decide::plan::{judged_from, live_nodes, plan, Action, NodeObs, NodeReport, PodObs, PoolObs};
use crate::decide::rollout::template_hash;
use crate::decide::slots::Layout;
use crate::decide::status::{pool_status, StatusInput};
use crate::metrics::OperatorMetrics;

pub const MANAGER: &str = "media-operator";
/// Reconcile at least this often: heartbeats age and deadlines pass without events.
const RESYNC: Duration = Duration::from_secs(5);
/// How often the node ServiceAccount and its bindings are applied again per namespace.
const ACCESS_REFRESH: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("MediaPool has no namespace")]
    NoNamespace,
}

pub struct Ctx {
    pub client: Client,
    pub recorder: EventRecorder,
    pub metrics: Arc<OperatorMetrics>,
    /// Namespaces whose node ServiceAccount and bindings were applied, and when: they
    /// are applied again after ACCESS_REFRESH, so one deleted by hand comes back.
    ensured: Mutex<HashMap<String, Instant>>,
    /// Per pool: when this operator last read its nodes, and since when it has read
    /// them without a gap (`decide::plan::judged_from`).
    views: Mutex<HashMap<String, (Instant, Timestamp)>>,
}

/// Reads of a pool's nodes further apart than this (reconciles come every RESYNC) mean
/// the operator could not see them meanwhile: an API server outage, a lost lease.
const VIEW_GAP: Duration = Duration::from_secs(15);

impl Ctx {
    /// Since when this operator has seen the pool `key` without a gap, `now` being
    /// the time of a read that just succeeded.
    fn view_since(&self, key: &str, now: Timestamp) -> Timestamp {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let since = match views.get(key) {
            Some((last, since)) if last.elapsed() <= VIEW_GAP => *since,
            _ => now,
        };
        views.insert(key.to_string(), (Instant::now(), since));
        since
    }

    pub fn new(client: Client, identity: &str, metrics: Arc<OperatorMetrics>) -> Ctx {
        Ctx {
            recorder: EventRecorder::new(client.clone(), MANAGER, identity),
            client,
            metrics,
            ensured: Mutex::new(HashMap::new()),
            views: Mutex::new(HashMap::new()),
        }
    }
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// The pod's Ready condition, as its kubelet's readiness probe last set it.
pub fn pod_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn observe_node(n: &MediaNode) -> NodeObs {
    let report = n.status.as_ref().map(|s| NodeReport {
        sessions: s.sessions,
        recordings: s.recordings,
        ready: s.ready,
        draining: s.draining,
        heartbeat: s.heartbeat_time.as_deref().and_then(parse_time),
        ports_total: s.ports.total,
        ports_allocated: s.ports.allocated,
        ports_quarantined: s.ports.quarantined,
        ports_free: s.ports.free,
        overloaded: s.overloaded,
    });
    NodeObs {
        name: n.name_any(),
        slot: n.spec.slot,
        udp_min: n.spec.udp_min,
        udp_max: n.spec.udp_max,
        draining: n.spec.draining,
        drain_deadline: n.spec.drain_deadline.as_deref().and_then(parse_time),
        released_at: n.annotations().get(RELEASED_AT_ANNOTATION).and_then(|s| parse_time(s)),
        report,
        template_hash: n.labels().get(TEMPLATE_HASH_LABEL).cloned(),
    }
}

async fn publish(ctx: &Ctx, pool: &MediaPool, type_: EventType, reason: &str, note: String) {
    if let Err(e) = ctx.recorder.publish(&pool.object_ref(&()), type_, reason, &note).await {
        warn!(error = %e, "could not publish event");
    }
}

async fn ensure_node_access(ctx: &Ctx, ns: &str) -> Result<(), Error> {
    if ctx.ensured.lock().unwrap_or_else(|e| e.into_inner()).get(ns).is_some_and(|at| at.elapsed() < ACCESS_REFRESH) {
        return Ok(());
    }
    let c = ctx.client.clone();
    Api::<ServiceAccount>::namespaced(c.clone(), ns)
        .patch(resources::NODE_SERVICE_ACCOUNT, &apply(), &Patch::Apply(resources::node_service_account(ns)))
        .await?;
    Api::<Role>::namespaced(c.clone(), ns)
        .patch(resources::NODE_SERVICE_ACCOUNT, &apply(), &Patch::Apply(resources::node_role(ns)))
        .await?;
    Api::<RoleBinding>::namespaced(c.clone(), ns)
        .patch(resources::NODE_SERVICE_ACCOUNT, &apply(), &Patch::Apply(resources::node_role_binding(ns)))
        .await?;
    let crb = resources::node_reader_binding(ns);
    Api::<ClusterRoleBinding>::all(c).patch(&crb.name_any(), &apply(), &Patch::Apply(&crb)).await?;
    ctx.ensured.lock().unwrap_or_else(|e| e.into_inner()).insert(ns.to_string(), Instant::now());
    Ok(())
}

pub async fn reconcile(pool: Arc<MediaPool>, ctx: Arc<Ctx>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let ns = pool.namespace().ok_or(Error::NoNamespace)?;
    let name = pool.name_any();
    let result = reconcile_inner(&pool, &ctx, &ns, &name).await;
    ctx.metrics.reconcile_seconds.with_label_values(&[&name]).observe(started.elapsed().as_secs_f64());
    ctx.metrics.reconciles.with_label_values(&[if result.is_ok() { "ok" } else { "error" }]).inc();
    result
}

async fn reconcile_inner(pool: &MediaPool, ctx: &Ctx, ns: &str, name: &str) -> Result<Requeue, Error> {
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Requeue::await_change());
    }
    let client = ctx.client.clone();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nodes_api: Api<MediaNode> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pools: Api<MediaPool> = Api::namespaced(client.clone(), ns);

    ensure_node_access(ctx, ns).await?;
    for svc in [resources::caller_service(pool), resources::headless_service(pool)] {
        services.patch(&svc.name_any(), &apply(), &Patch::Apply(&svc)).await?;
    }
    Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
        .patch(name, &apply(), &Patch::Apply(resources::disruption_budget(pool)))
        .await?;

    let selector = ListParams::default().labels(&format!("{POOL_LABEL}={name}"));
    let pods = pods_api.list(&selector).await?.items;
    let nodes = nodes_api.list(&selector).await?.items;
    let pod_obs: Vec<PodObs> = pods
        .iter()
        .map(|p| PodObs { name: p.name_any(), terminating: p.metadata.deletion_timestamp.is_some(), ready: pod_ready(p) })
        .collect();
    let mut node_obs: Vec<NodeObs> = nodes.iter().map(observe_node).collect();
    let spec = &pool.spec;
    let layout = Layout { min: spec.ports.min, max: spec.ports.max, size: spec.ports.slot_size };
    let hash = template_hash(spec);
    let now = Timestamp::now();
    judged_from(&mut node_obs, ctx.view_since(&format!("{ns}/{name}"), now));
    let (replicas, autoscaling, autoscale_wake) = autoscale_step(ctx, pool, &pools, &pod_obs, &node_obs, layout, now).await?;
    let obs = PoolObs {
        name: name.to_string(),
        replicas,
        layout,
        quarantine: SignedDuration::from_secs(spec.quarantine_seconds as i64),
        drain_timeout: SignedDuration::from_secs(spec.drain_timeout_seconds as i64),
        template_hash: hash.clone(),
        max_surge: spec.rollout.max_surge,
        max_unavailable: spec.rollout.max_unavailable,
    };
    let decided = plan(&obs, &pod_obs, &node_obs, now);

    for action in &decided.actions {
        match action {
            Action::Create { name: node, ports } => {
                let mn = resources::media_node(pool, node, *ports, &hash);
                nodes_api.patch(node, &apply(), &Patch::Apply(&mn)).await?;
                match pods_api.create(&PostParams::default(), &resources::node_pod(pool, node, *ports, &hash)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                info!(pool = name, node, slot = ports.slot, "node created");
                publish(
                    ctx,
                    pool,
                    EventType::Normal,
                    "NodeCreated",
                    format!("node {node} on slot {} (UDP {}-{})", ports.slot, ports.udp_min, ports.udp_max),
                )
                .await;
            }
            Action::Tombstone { name: node } => {
                let patch = json!({"metadata": {"annotations": {RELEASED_AT_ANNOTATION: now.to_string()}}});
                nodes_api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                publish(
                    ctx,
                    pool,
                    EventType::Normal,
                    "SlotReleased",
                    format!("node {node} is gone; its slot is quarantined for {}s", spec.quarantine_seconds),
                )
                .await;
            }
            Action::Forget { name: node } => match nodes_api.delete(node, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            },
            Action::Drain { name: node, deadline, reason } => {
                let patch = json!({"spec": {"draining": true, "drainDeadline": deadline.to_string()}});
                nodes_api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                let (kind, why) = match reason {
                    crate::decide::plan::DrainReason::Unhealthy => (EventType::Warning, "NodeUnhealthy"),
                    _ => (EventType::Normal, "NodeDraining"),
                };
                info!(pool = name, node, reason = reason.as_str(), "draining node");
                publish(
                    ctx,
                    pool,
                    kind,
                    why,
                    format!("node {node} takes no new calls ({}); removed when its calls end or at {deadline}", reason.as_str()),
                )
                .await;
            }
            Action::Undrain { name: node } => {
                let patch = json!({"spec": {"draining": false, "drainDeadline": null}});
                nodes_api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                publish(ctx, pool, EventType::Normal, "NodeUndrained", format!("node {node} serves again")).await;
            }
            Action::DeletePod { name: pod } => match pods_api.delete(pod, &DeleteParams::default()).await {
                Ok(_) => publish(ctx, pool, EventType::Normal, "NodeRemoved", format!("pod {pod} deleted")).await,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    if decided.slots_exhausted {
        publish(ctx, pool, EventType::Warning, "SlotsExhausted", "no free slot for another node".into()).await;
    }

    let status = pool_status(StatusInput {
        pool_name: name,
        desired: replicas,
        generation: pool.metadata.generation,
        pods: &pod_obs,
        nodes: &node_obs,
        plan: &decided,
        previous: pool.status.as_ref(),
        template_hash: &hash,
        autoscaling,
        now,
    });
    let m = &ctx.metrics;
    m.pool_nodes.with_label_values(&[ns, name, "ready"]).set(status.ready_replicas as i64);
    m.pool_nodes.with_label_values(&[ns, name, "draining"]).set(status.draining_replicas as i64);
    m.pool_nodes.with_label_values(&[ns, name, "total"]).set(status.replicas as i64);
    m.pool_sessions.with_label_values(&[ns, name]).set(status.active_sessions);
    m.pool_free_ports.with_label_values(&[ns, name]).set(status.ports.free);
    if pool.status.as_ref() != Some(&status) {
        let body = json!({"apiVersion": "media.sentiric.cloud/v1alpha1", "kind": "MediaPool", "status": status});
        pools.patch_status(name, &apply(), &Patch::Apply(&body)).await?;
    }

    // Come back when something scheduled falls due, and at least every RESYNC.
    let mut after = RESYNC;
    for w in decided.wake_at.into_iter().chain(autoscale_wake) {
        let until = w.duration_since(now).as_millis().max(100) as u64;
        after = after.min(Duration::from_millis(until));
    }
    Ok(Requeue::requeue(after))
}

/// With `spec.autoscaling`, sets `spec.replicas` through the scale subresource (as an
/// HPA would) from the serving nodes' occupancy. Returns the replicas to plan for,
/// the autoscaler's status, and when a pending scale-down falls due.
async fn autoscale_step(
    ctx: &Ctx,
    pool: &MediaPool,
    pools: &Api<MediaPool>,
    pods: &[PodObs],
    nodes: &[NodeObs],
    layout: Layout,
    now: Timestamp,
) -> Result<(i32, Option<AutoscalingStatus>, Option<Timestamp>), Error> {
    let spec = &pool.spec;
    let Some(a) = &spec.autoscaling else {
        return Ok((spec.replicas, None, None));
    };
    let policy = autoscale::Policy {
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        free_sessions: a.free_sessions.map(i64::from),
        free_percent: a.free_percent.map(i64::from),
        scale_down_delay: SignedDuration::from_secs(a.scale_down_delay_seconds as i64),
    };
    let used: i64 = live_nodes(nodes, pods).filter(|n| !n.draining).filter_map(|n| n.report.as_ref()).map(|r| r.held_ports()).sum();
    // Read fresh, not from the cache: a scale changes the spec, and the reconcile that
    // change triggers can see a cached pool older than the status the previous
    // reconcile wrote, which would put back an older lastScaleTime and restart a
    // pending scale-down's delay.
    let name = pool.name_any();
    let previous = pools.get_status(&name).await?.status.and_then(|s| s.autoscaling).unwrap_or_default();
    let observed = autoscale::Observed {
        replicas: spec.replicas,
        capacity_per_node: spec.ports.slot_size as i64 / 2,
        used,
        slots: layout.count(),
        scale_down_since: previous.scale_down_since.as_deref().and_then(parse_time),
    };
    let d = autoscale::decide(&policy, &observed, now);
    let mut last_scale_time = previous.last_scale_time.clone();
    if d.replicas != spec.replicas {
        pools.patch_scale(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": d.replicas}}))).await?;
        last_scale_time = Some(now.to_string());
        info!(pool = %name, from = spec.replicas, to = d.replicas, used, "autoscaled");
        publish(
            ctx,
            pool,
            EventType::Normal,
            "Autoscaled",
            format!("replicas {} -> {} ({used} calls held, buffer per policy)", spec.replicas, d.replicas),
        )
        .await;
    }
    let limited_by = d.limited_by.map(|l| l.as_str().to_string());
    if limited_by != previous.limited_by {
        if let Some(l @ (Limit::MaxReplicas | Limit::Slots)) = d.limited_by {
            publish(
                ctx,
                pool,
                EventType::Warning,
                "ScaleLimited",
                format!("occupancy calls for more nodes than {} allows ({} nodes)", l.as_str(), d.desired),
            )
            .await;
        }
    }
    let status = AutoscalingStatus {
        recommended_replicas: d.recommended.unwrap_or(d.desired),
        desired_replicas: d.desired,
        used_sessions: used,
        limited_by,
        last_scale_time,
        scale_down_since: d.scale_down_since.map(|t| t.to_string()),
    };
    Ok((d.replicas, Some(status), d.wake_at))
}

fn error_policy(_pool: Arc<MediaPool>, err: &Error, _ctx: Arc<Ctx>) -> Requeue {
    warn!(error = %err, "reconcile failed");
    Requeue::requeue(Duration::from_secs(2))
}

/// Runs the controller over all namespaces (or one) until `stop`.
pub async fn run(ctx: Arc<Ctx>, namespace: Option<String>, stop: CancellationToken) {
    let client = ctx.client.clone();
    let (pools, pods, nodes): (Api<MediaPool>, Api<Pod>, Api<MediaNode>) = match &namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let labelled = watcher::Config::default().labels(POOL_LABEL);
    Controller::new(pools, watcher::Config::default())
        .owns(pods, labelled.clone())
        .owns(nodes, labelled)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
