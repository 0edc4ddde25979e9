//! The operator's one Prometheus registry.

use prometheus::{exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct OperatorMetrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_seconds: HistogramVec,
    pub leader: IntGauge,
    pub pool_nodes: IntGaugeVec,
    pub pool_sessions: IntGaugeVec,
    pub pool_free_ports: IntGaugeVec,
}

impl OperatorMetrics {
    pub fn new() -> OperatorMetrics {
        let registry = Registry::new();
        let m = OperatorMetrics {
            reconciles: IntCounterVec::new(Opts::new("media_operator_reconciles_total", "Reconciles by result"), &["result"]).unwrap(),
            reconcile_seconds: HistogramVec::new(
                HistogramOpts::new("media_operator_reconcile_duration_seconds", "Reconcile time")
                    .buckets(exponential_buckets(0.001, 2.0, 14).unwrap()),
                &["pool"],
            )
            .unwrap(),
            leader: IntGauge::new("media_operator_leader", "1 while this replica holds the lease").unwrap(),
            pool_nodes: IntGaugeVec::new(
                Opts::new("media_operator_pool_nodes", "Nodes per pool by state"),
                &["namespace", "pool", "state"],
            )
            .unwrap(),
            pool_sessions: IntGaugeVec::new(Opts::new("media_operator_pool_sessions", "Calls per pool"), &["namespace", "pool"]).unwrap(),
            pool_free_ports: IntGaugeVec::new(
                Opts::new("media_operator_pool_free_ports", "Free RTP ports per pool"),
                &["namespace", "pool"],
            )
            .unwrap(),
            registry,
        };
        m.registry.register(Box::new(m.reconciles.clone())).unwrap();
        m.registry.register(Box::new(m.reconcile_seconds.clone())).unwrap();
        m.registry.register(Box::new(m.leader.clone())).unwrap();
        m.registry.register(Box::new(m.pool_nodes.clone())).unwrap();
        m.registry.register(Box::new(m.pool_sessions.clone())).unwrap();
        m.registry.register(Box::new(m.pool_free_ports.clone())).unwrap();
        m
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}
