//! Services plugins share without importing each other.
//!
//! A plugin that has something to share **offers** it ([`crate::Registrar::offer`]): a value of a
//! type defined here, in the plugin API, so that neither side names the other's crate. A plugin
//! that uses it **needs** it ([`crate::Registrar::need`]: without it the plugin cannot work, and the
//! host treats it like a failed registration) or **wants** it ([`crate::Registrar::want`]: it
//! works either way). Both get a [`Wanted`] handle at registration, which the host fills in once
//! every plugin has registered and the active set is known; an offer of a plugin that failed or
//! was disabled never reaches anyone.
//!
//! The services the bundled plugins share:
//!
//! * [`MediaRelay`], offered by the media plugin and wanted by the twilio plugin: when present,
//!   calls with a media server are streamed through this host's relay instead of straight to the
//!   media server.
//! * [`CallLedger`], offered by the twilio plugin and needed by the media plugin: whether a call
//!   was answered with a stream for a business, and the call's timeline.
//! * [`crate::CallBook`], offered by the twilio plugin and needed by the console: a business's
//!   recent calls with their verdicts, and one call's trace.

use std::any::{Any, TypeId};
use std::sync::{Arc, OnceLock};

use futures_util::future::LocalBoxFuture;

/// A handle on a service another plugin may offer, filled in by the host after every plugin has
/// registered (so it is empty while `register` runs, and in `check` and `routes`).
pub struct Wanted<T: ?Sized>(Arc<OnceLock<Arc<T>>>);

impl<T: ?Sized> Wanted<T> {
    /// The service, when an active plugin offers it.
    pub fn get(&self) -> Option<&T> {
        self.0.get().map(|service| &**service)
    }
}

impl<T: ?Sized> Clone for Wanted<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: ?Sized> std::fmt::Debug for Wanted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Wanted")
            .field(&std::any::type_name::<T>())
            .field(&self.0.get().is_some())
            .finish()
    }
}

/// A service a plugin offers (see [`crate::Registrar::offer`]).
pub struct Offer {
    /// The service's type.
    pub type_id: TypeId,
    /// The service's type name, for findings.
    pub type_name: &'static str,
    /// An `Arc<T>` behind `Any`.
    value: Arc<dyn Any + Send + Sync>,
}

impl Offer {
    pub(crate) fn new<T: ?Sized + Send + Sync + 'static>(service: Arc<T>) -> Self {
        Self {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            value: Arc::new(service),
        }
    }
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.type_name)
    }
}

/// A service a plugin asked for (see [`crate::Registrar::need`] and [`crate::Registrar::want`]).
pub struct Want {
    /// The service's type.
    pub type_id: TypeId,
    /// The service's type name, for findings.
    pub type_name: &'static str,
    /// Whether the plugin cannot work without it.
    pub required: bool,
    fill: Box<dyn Fn(&Offer) + Send + Sync>,
}

impl Want {
    pub(crate) fn new<T: ?Sized + Send + Sync + 'static>(required: bool) -> (Self, Wanted<T>) {
        let slot: Arc<OnceLock<Arc<T>>> = Arc::default();
        let filled = slot.clone();
        let want = Self {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            required,
            fill: Box::new(move |offer| {
                if let Some(service) = offer.value.downcast_ref::<Arc<T>>() {
                    // A second fill (a test host resolving twice) keeps the first.
                    let _ = filled.set(service.clone());
                }
            }),
        };
        (want, Wanted(slot))
    }

    /// Fills the plugin's [`Wanted`] handle with `offer` (of the same type).
    pub fn fill(&self, offer: &Offer) {
        if offer.type_id == self.type_id {
            (self.fill)(offer);
        }
    }
}

impl std::fmt::Debug for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}",
            self.type_name,
            if self.required { " (required)" } else { "" }
        )
    }
}

/// The type names of the services `needs` requires that none of `offers` provides.
pub fn unmet<'a>(needs: &'a [Want], offers: &[&Offer]) -> Vec<&'a str> {
    needs
        .iter()
        .filter(|w| w.required && !offers.iter().any(|o| o.type_id == w.type_id))
        .map(|w| w.type_name)
        .collect()
}

/// Fills each of `wants` from the first of `offers` of its type.
pub fn fill(wants: &[Want], offers: &[&Offer]) {
    for want in wants {
        if let Some(offer) = offers.iter().find(|o| o.type_id == want.type_id) {
            want.fill(offer);
        }
    }
}

/// A Twilio Media Streams relay served by this host (offered by the media plugin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRelay {
    /// The WebSocket route Twilio connects to (`/ws/twilio/media`): the `<Stream url>` is
    /// `wss://` + the public host + this path.
    pub path: &'static str,
    /// The signed webhook Twilio reports the stream's events to (`<Stream statusCallback>`).
    pub status_callback: &'static str,
}

/// Where the media of a call goes, as the [`CallLedger`] knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamTarget {
    /// The call was answered with a stream for this business: its media server's URL.
    Agent(String),
    /// No call with this CallSid was answered with a stream for this business.
    Unknown,
    /// The calls cannot be looked up right now (the database is away and this instance did not
    /// answer the call): why.
    Unavailable(String),
}

/// One step of a call's timeline contributed by another plugin (the media relay's `start`,
/// `agent_connected`, `agent_failed`, `stop`, Twilio's stream events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallNote {
    /// Twilio's CallSid.
    pub call_sid: String,
    /// When (Unix milliseconds).
    pub at_ms: i64,
    /// Who noted it (`stream`).
    pub source: &'static str,
    /// What happened, one word (`start`, `agent_connected`, `agent_failed`, `stop`, `stream-error`).
    pub step: String,
    /// The details, as the trace line shows them (`stream_sid=MZ… tracks=inbound`).
    pub detail: String,
    /// The instance that saw it.
    pub instance_id: String,
    /// The request id of the request it belongs to.
    pub request_id: Option<String>,
}

/// The calls as the plugin that answers them keeps them (offered by the twilio plugin).
pub trait CallLedger: Send + Sync {
    /// Where the media of `call_sid` goes, if it was answered with a stream for `business_id`.
    fn stream_target<'a>(&'a self, call_sid: &'a str, business_id: i64) -> LocalBoxFuture<'a, StreamTarget>;

    /// Adds `note` to the call's timeline (`callplane trace`). Returns at once: the write is the
    /// ledger's business, and a note that cannot be stored is logged, never an error of the caller.
    fn note(&self, note: CallNote);
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Greeter: Send + Sync {
        fn hello(&self) -> &'static str;
    }
    struct English;
    impl Greeter for English {
        fn hello(&self) -> &'static str {
            "hello"
        }
    }

    #[test]
    fn an_offer_fills_wants_of_its_type_only() {
        let offer = Offer::new::<dyn Greeter>(Arc::new(English));
        let (want, wanted) = Want::new::<dyn Greeter>(true);
        let (other, unrelated) = Want::new::<MediaRelay>(false);
        assert!(wanted.get().is_none());
        other.fill(&offer);
        want.fill(&offer);
        assert_eq!(wanted.get().map(Greeter::hello), Some("hello"));
        assert!(unrelated.get().is_none());
        assert_eq!(
            format!("{want:?}"),
            format!("{} (required)", std::any::type_name::<dyn Greeter>())
        );
    }
}
