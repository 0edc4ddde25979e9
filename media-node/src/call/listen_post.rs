//! Live-listen frames leave the media threads in rounds, not one by one.
//!
//! Every call makes a listener frame each time a caller packet arrives, 50 a second, at
//! its own moment. Handed over one by one, each frame woke the gRPC side on its own and
//! went out in its own TCP write: at 400 calls that was 20,000 writes and as many
//! cross-thread wake-ups a second, the largest single cost of a call. The post collects
//! what the calls produce while the media runtime has ready work (the packets of one
//! poll of its reactor, the ticks of one timer slot) and hands it over when that work
//! is done: the serving threads wake once per round, and HTTP/2 writes the frames of a
//! connection together (see `grpc::conn`). No timer is involved: a frame waits only for
//! the calls already running, microseconds at low load; under load rounds grow by
//! themselves, which is when batching pays.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;
use crate::sync::lock;

pub struct ListenerPost {
    queue: Mutex<Vec<(mpsc::Sender<Bytes>, Bytes)>>,
    /// Rung by the first frame into an empty queue, and when the post is dropped.
    bell: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl ListenerPost {
    /// A post whose courier runs on the media runtime until the post is dropped.
    pub fn start(metrics: Arc<Metrics>) -> Arc<ListenerPost> {
        let bell = Arc::new(Notify::new());
        let post = Arc::new(ListenerPost { queue: Mutex::new(Vec::new()), bell: bell.clone(), metrics });
        super::runtime::handle().spawn(courier(Arc::downgrade(&post), bell));
        post
    }

    /// Queues a frame for a listener; frames to one listener keep their order.
    pub fn post(&self, to: &mpsc::Sender<Bytes>, frame: Bytes) {
        let mut q = lock(&self.queue);
        let first = q.is_empty();
        q.push((to.clone(), frame));
        drop(q);
        if first {
            self.bell.notify_one();
        }
    }

    /// Hands every queued frame to its listener. A listener that has fallen
    /// `LISTENER_QUEUE` frames behind loses the frame (counted); one that has gone is
    /// skipped (its call drops it on its next packet).
    fn deliver(&self, round: &mut Vec<(mpsc::Sender<Bytes>, Bytes)>) {
        std::mem::swap(&mut *lock(&self.queue), round);
        for (to, frame) in round.drain(..) {
            if let Err(mpsc::error::TrySendError::Full(_)) = to.try_send(frame) {
                self.metrics.listener_frames_dropped.inc();
            }
        }
    }
}

impl Drop for ListenerPost {
    fn drop(&mut self) {
        self.bell.notify_one();
    }
}

async fn courier(post: Weak<ListenerPost>, bell: Arc<Notify>) {
    let mut round = Vec::new();
    loop {
        bell.notified().await;
        // Let every task that is ready now run first (tokio defers a yielded task until
        // the worker has polled its reactor again); their frames join this round.
        tokio::task::yield_now().await;
        let Some(post) = post.upgrade() else { return };
        post.deliver(&mut round);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn frames_arrive_in_order_and_a_full_listener_loses_frames_counted() {
        let metrics = Arc::new(Metrics::new());
        let post = ListenerPost::start(metrics.clone());
        let (tx, mut rx) = mpsc::channel(3);
        for i in 0..5u8 {
            post.post(&tx, Bytes::from(vec![i]));
        }
        // The courier runs on the media runtime's threads and may split these frames
        // over rounds; nothing is taken from the channel until all five are handed over.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while metrics.listener_frames_dropped.get() < 2 {
            assert!(std::time::Instant::now() < deadline, "two frames should have been dropped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()[0]);
        }
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(metrics.listener_frames_dropped.get(), 2);
        // The next round goes out too: the courier keeps running.
        post.post(&tx, Bytes::from_static(&[9]));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()[0], 9);
    }

    #[tokio::test]
    async fn frames_to_a_gone_listener_are_skipped_not_counted_as_dropped() {
        let metrics = Arc::new(Metrics::new());
        let post = ListenerPost::start(metrics.clone());
        let (tx, rx) = mpsc::channel(3);
        drop(rx);
        post.post(&tx, Bytes::from_static(&[1]));
        let (live, mut live_rx) = mpsc::channel(3);
        post.post(&live, Bytes::from_static(&[2]));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), live_rx.recv()).await.unwrap().unwrap()[0], 2);
        assert_eq!(metrics.listener_frames_dropped.get(), 0);
    }
}
