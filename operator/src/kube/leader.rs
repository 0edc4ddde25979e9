//! Leader election on a coordination.k8s.io Lease: only the holder runs the
//! controller (and so only the holder writes). A replica that loses the lease, or
//! cannot renew it before it would expire, stops its controller at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

enum Attempt {
    Leading,
    Following(String),
}

async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<Attempt, kube::Error> {
    let now = Timestamp::now();
    let secs = cfg.duration.as_secs() as i32;
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": {"holderIdentity": cfg.identity, "leaseDurationSeconds": secs,
                         "acquireTime": MicroTime(now), "renewTime": MicroTime(now), "leaseTransitions": 0}
            }))
            .expect("lease JSON");
            api.create(&PostParams::default(), &lease).await?;
            Ok(Attempt::Leading)
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
            let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(secs) as i64);
            let expired = now > renewed + duration;
            if holder != cfg.identity && !expired && !holder.is_empty() {
                return Ok(Attempt::Following(holder));
            }
            if holder != cfg.identity {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(cfg.identity.clone());
            spec.lease_duration_seconds = Some(secs);
            spec.renew_time = Some(MicroTime(now));
            // The resourceVersion in `lease` makes this a compare-and-swap: a racing
            // replica's write makes ours fail with a conflict.
            api.replace(&cfg.name, &PostParams::default(), &lease).await?;
            Ok(Attempt::Leading)
        }
    }
}

/// Runs `lead` while this replica holds the lease, until `shutdown`.
pub async fn run<F, Fut>(client: Client, cfg: LeaseConfig, shutdown: CancellationToken, on_change: impl Fn(bool), lead: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let renew_every = cfg.duration / 3;
    let mut leading: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    loop {
        let attempt = try_acquire(&api, &cfg).await;
        match (&attempt, leading.is_some()) {
            (Ok(Attempt::Leading), false) => {
                info!(identity = %cfg.identity, "acquired leadership");
                on_change(true);
                let token = shutdown.child_token();
                let handle = tokio::spawn(lead(token.clone()));
                leading = Some((token, handle));
            }
            (Ok(Attempt::Leading), true) => {}
            (Ok(Attempt::Following(holder)), was) => {
                if was {
                    warn!(%holder, "lost leadership");
                }
                stop(&mut leading, &on_change).await;
            }
            (Err(e), true) => {
                // Could not renew: stop writing before the lease can expire under us.
                warn!(error = %e, "lease renewal failed; stepping down");
                stop(&mut leading, &on_change).await;
            }
            (Err(e), false) => warn!(error = %e, "lease acquisition failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(renew_every) => {}
        }
    }
    stop(&mut leading, &on_change).await;
    // Hand over at once: an expired lease lets the next replica take over now.
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() == Some(cfg.identity.as_str()) {
                spec.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
                let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
            }
        }
    }
}

async fn stop(leading: &mut Option<(CancellationToken, tokio::task::JoinHandle<()>)>, on_change: &impl Fn(bool)) {
    if let Some((token, handle)) = leading.take() {
        token.cancel();
        let _ = handle.await;
        on_change(false);
    }
}
