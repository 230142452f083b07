//! The relay's series (prefixed `callplane_media_`): streams active, opened and closed by outcome,
//! frames relayed, dropped and refused by direction, and how long media servers take to accept.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrameLabels {
    direction: &'static str,
    fate: &'static str,
}

/// The relay's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    active: Gauge,
    opened: Counter,
    closed: Family<OutcomeLabels, Counter>,
    frames: Family<FrameLabels, Counter>,
    connect: Histogram,
}

/// A stream's share of [`Metrics::active`]: decremented when dropped, however the stream ends.
#[derive(Debug)]
pub struct Active(Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The frame counters of one direction, resolved once per stream (a frame costs an atomic add).
#[derive(Debug, Clone)]
pub struct Frames {
    /// Passed on.
    pub relayed: Counter,
    /// Media dropped for newer audio (the other side too slow).
    pub dropped: Counter,
    /// Not relayed: not a message the receiving side accepts.
    pub refused: Counter,
}

impl Metrics {
    /// Registers the series in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            active: Gauge::default(),
            opened: Counter::default(),
            closed: Family::default(),
            frames: Family::default(),
            connect: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        };
        registry.register(
            "streams_active",
            "Media streams being relayed now",
            metrics.active.clone(),
        );
        registry.register("streams_opened", "Media streams Twilio opened", metrics.opened.clone());
        registry.register(
            "streams_closed",
            "Media streams ended, by outcome (stopped, twilio_gone, idle, agent_closed, agent_error, agent_failed, refused, overflow)",
            metrics.closed.clone(),
        );
        registry.register(
            "frames",
            "Stream messages by direction (to_agent, to_twilio) and fate (relayed, dropped, refused)",
            metrics.frames.clone(),
        );
        registry.register(
            "agent_connect_seconds",
            "Time for a media server to accept the relay's socket",
            metrics.connect.clone(),
        );
        metrics
    }

    /// Streams being relayed now.
    pub fn active(&self) -> i64 {
        self.active.get()
    }

    /// Counts a stream Twilio opened; it is active while the guard lives.
    pub fn opened(&self) -> Active {
        self.opened.inc();
        self.active.inc();
        Active(self.active.clone())
    }

    /// Counts a stream that ended with `outcome`.
    pub fn closed(&self, outcome: &'static str) {
        self.closed.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records how long a media server took to accept.
    pub fn connected_in(&self, seconds: f64) {
        self.connect.observe(seconds);
    }

    /// The counters of `direction` (`to_agent`, `to_twilio`).
    pub fn frames(&self, direction: &'static str) -> Frames {
        let of = |fate| self.frames.get_or_create(&FrameLabels { direction, fate }).clone();
        Frames {
            relayed: of("relayed"),
            dropped: of("dropped"),
            refused: of("refused"),
        }
    }
}
