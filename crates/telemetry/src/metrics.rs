//! HTTP request metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one request: the route *pattern* (never the raw path, so ids do not explode the
/// series count), the method and the status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route pattern such as `/api/calls/{call_sid}`, or `unmatched`.
    pub route: String,
    /// HTTP method.
    pub method: &'static str,
    /// Response status code.
    pub status: u16,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route pattern, or `unmatched`.
    pub route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Request counters and latency histograms, shared by every worker (clones share the series).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    panics: Family<RouteLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

impl HttpMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: HistogramFamily::new_with_constructor(latency_histogram),
            panics: Family::default(),
        };
        registry.register(
            "log_write_errors",
            "Failed writes to the log file (the console still gets every line)",
            crate::logging::write_errors().clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route pattern, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route pattern",
            metrics.duration.clone(),
        );
        registry.register(
            "http_handler_panics",
            "Handler panics turned into 500 answers, by route pattern",
            metrics.panics.clone(),
        );
        metrics
    }

    /// Counts a handler panic on `route`.
    pub fn panicked(&self, route: &str) {
        self.panics
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .inc();
    }

    /// Records one finished request.
    pub fn observe(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        let route = RouteLabels { route };
        self.duration.get_or_create(&route).observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                route: route.route,
                method,
                status,
            })
            .inc();
    }
}
