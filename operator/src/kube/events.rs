//! Publishing Kubernetes Events (events.k8s.io/v1) about a pool; which writes are new
//! events and which repeat one is `decide::events`.

use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::decide::events::{Emit, EventKey, EventSeries};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

pub struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<EventSeries>,
}

impl EventRecorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> EventRecorder {
        EventRecorder { client, controller: controller.into(), instance: instance.into(), series: Mutex::default() }
    }

    pub async fn publish(&self, regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name = regarding.name.clone().unwrap_or_else(|| self.controller.clone());
        let key = EventKey::new(&namespace, &name, type_ == EventType::Warning, reason, note);
        let now = Timestamp::now();
        let emit = self.series.lock().unwrap_or_else(|e| e.into_inner()).record(&key, now);
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let written = match &emit {
            Emit::Create { name } => {
                let event = Event {
                    metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace.clone()), ..Default::default() },
                    action: Some(reason.into()),
                    reason: Some(reason.into()),
                    note: Some(key.note.clone()),
                    type_: Some(format!("{type_:?}")),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Default::default()
                };
                events.create(&PostParams::default(), &event).await.map(drop)
            }
            Emit::Repeat { name, count } => {
                let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
                events.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(drop)
            }
        };
        if written.is_err() {
            // Deleted by hand, or the API server was away: the next one starts anew.
            self.series.lock().unwrap_or_else(|e| e.into_inner()).forget(&key);
        }
        written
    }
}
