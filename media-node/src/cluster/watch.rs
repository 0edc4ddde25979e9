//! Watches the MediaNodes of this node's pool (a reflector over one label selector):
//! the peers feed placement and forwarding, and this node's own object carries the
//! operator's drain flag. The watch resumes by itself after an API server outage;
//! meanwhile the last known peers stay in use.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use media_crds::{MediaNode, POOL_LABEL, RELEASED_AT_ANNOTATION};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::fleet::Peer;
use crate::node::Node;

/// A MediaNode as a peer; None for this node, a released slot, or a node that has
/// not reported where it serves.
pub fn peer_of(mn: &MediaNode, me: &str) -> Option<Peer> {
    if mn.name_any() == me || mn.annotations().contains_key(RELEASED_AT_ANNOTATION) {
        return None;
    }
    let st = mn.status.as_ref()?;
    let endpoint = st.grpc_endpoint.clone().filter(|e| !e.is_empty())?;
    Some(Peer {
        name: mn.name_any(),
        endpoint,
        udp_min: u16::try_from(mn.spec.udp_min).ok()?,
        udp_max: u16::try_from(mn.spec.udp_max).ok()?,
        // An overloaded node takes no new calls from placement (it would refuse them).
        ready: st.ready && !st.draining && !st.overloaded && !mn.spec.draining,
        used: st.ports.allocated + st.ports.quarantined,
        total: st.ports.total,
        heartbeat: st.heartbeat_time.as_deref().and_then(|t| t.parse().ok()),
    })
}

/// Whether the reflector's store changed with this event. The objects of a (re)list
/// reach the store all at once when the list ends (InitDone), not one by one as they
/// arrive: reading the store at each InitApply, or only at later changes, left a node
/// that started into a reporting pool without its peers (or its drain flag) until the
/// next change, in an idle pool the next heartbeat some 10 s later.
fn store_changed<K>(event: &watcher::Event<K>) -> bool {
    matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)
}

/// How the watch comes back after an error: from 0.5 s doubling to 5 s (with jitter, at
/// most 10 s). kube's default is client-go's, up to 30 s and with jitter up to a minute:
/// after an API server outage of two minutes a node stayed blind to its drain flag for
/// most of a minute more, and a scale-down waited on it. A node watches only its own
/// pool's few MediaNodes, so retrying this often costs the API server little.
fn rewatch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

pub async fn run(node: Arc<Node>, client: Client, namespace: String, name: String, pool: String, shutdown: CancellationToken) {
    let api: Api<MediaNode> = Api::namespaced(client, &namespace);
    let (reader, writer) = reflector::store::<MediaNode>();
    let cfg = watcher::Config::default().labels(&format!("{POOL_LABEL}={pool}"));
    let stream = reflector(writer, watcher(api, cfg)).backoff(rewatch_backoff());
    futures::pin_mut!(stream);
    let mut failing = false;
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(event)) => {
                if failing {
                    info!("watching the pool's nodes again");
                    failing = false;
                }
                if !store_changed(&event) {
                    continue;
                }
                let all = reader.state();
                if let Some(me) = all.iter().find(|m| m.name_any() == name) {
                    if me.spec.draining && !node.is_draining() {
                        info!("operator marked this node draining: taking no new calls");
                        node.start_draining();
                    }
                }
                let peers: Vec<Peer> = all.iter().filter_map(|m| peer_of(m, &name)).collect();
                node.metrics.fleet_peers.set(peers.len() as i64);
                node.fleet.set_peers(peers);
            }
            Some(Err(e)) => {
                if !failing {
                    warn!(error = %e, "watch of the pool's nodes failed; retrying with the last known peers");
                    failing = true;
                }
            }
            None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_table_is_read_when_the_initial_list_is_in_and_at_every_change() {
        assert!(store_changed::<()>(&watcher::Event::InitDone));
        assert!(store_changed(&watcher::Event::Apply(())));
        assert!(store_changed(&watcher::Event::Delete(())));
        assert!(!store_changed::<()>(&watcher::Event::Init), "the store still holds the old list");
        assert!(!store_changed(&watcher::Event::InitApply(())), "buffered until InitDone");
    }
}
