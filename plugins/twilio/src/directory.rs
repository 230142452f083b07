//! The business directory: which business a called number belongs to, cached so that a slow or
//! absent database still answers calls.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use callplane_plugin_api::storage::Db;
use callplane_plugin_api::storage::sqlx::{self, Row};
use callplane_plugin_api::{MediaRelay, Wanted};

use crate::event::AnswerKind;
use crate::records::Outage;
use crate::twiml;

/// How long a business lookup waits before falling back to the cache.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a cached business is used without asking the database again.
const CACHE_TTL: Duration = Duration::from_secs(30);

/// A business as the webhooks need it, as read from the database ([`Business::new`] renders its
/// greeting; the business is shared read-only from then on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Business {
    /// Id.
    pub id: i64,
    /// What callers hear.
    pub greeting: String,
    /// Optional media-stream URL.
    pub media_stream_url: Option<String>,
    /// The greeting as TwiML, rendered (and escaped) once when the business is read: every call
    /// to the number is answered with it.
    greeting_twiml: Bytes,
}

impl Business {
    /// A business, its greeting rendered.
    pub fn new(id: i64, greeting: String, media_stream_url: Option<String>) -> Self {
        Self {
            greeting_twiml: twiml::say(&greeting, false).into(),
            id,
            greeting,
            media_stream_url,
        }
    }

    /// What a caller hears: the business's media stream (through `relay` when this host relays
    /// streams), else its greeting.
    pub fn answer(&self, call_sid: &str, relay: Option<&RelayUrls>) -> (AnswerKind, Bytes) {
        match (&self.media_stream_url, relay) {
            (Some(_), Some(relay)) => (
                AnswerKind::Stream,
                twiml::relayed_stream(&relay.stream, &relay.status_callback, call_sid, self.id).into(),
            ),
            (Some(url), None) => (AnswerKind::Stream, twiml::stream(url, call_sid, self.id).into()),
            (None, _) => (AnswerKind::Greeting, self.greeting_twiml.clone()),
        }
    }
}

/// The URLs of this host's media relay, as the TwiML names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrls {
    /// `wss://` + the public host + the relay's path (`ws://` under an `http://` public URL,
    /// which only a laptop has: Twilio refuses it).
    pub stream: String,
    /// The signed webhook the stream's events go to.
    pub status_callback: String,
}

/// How calls with a media server are streamed: through the relay another plugin offers
/// ([`MediaRelay`]), or straight to the media server when no plugin does.
#[derive(Debug, Clone)]
pub struct StreamRoute {
    relay: Wanted<MediaRelay>,
    public_base_url: String,
    urls: Arc<OnceLock<Option<RelayUrls>>>,
}

impl StreamRoute {
    /// Streams through `relay` once the host has filled it in, under `public_base_url`.
    pub fn new(relay: Wanted<MediaRelay>, public_base_url: String) -> Self {
        Self {
            relay,
            public_base_url,
            urls: Arc::default(),
        }
    }

    /// The relay's URLs; `None` when no active plugin relays streams. Decided at the first call
    /// (the host fills the relay in before it serves anything).
    pub fn urls(&self) -> Option<&RelayUrls> {
        self.urls
            .get_or_init(|| {
                let relay = self.relay.get()?;
                let base = &self.public_base_url;
                Some(RelayUrls {
                    stream: format!("{}{}", crate::signature::websocket_url(base), relay.path),
                    status_callback: format!("{base}{}", relay.status_callback),
                })
            })
            .as_ref()
    }
}

/// The answer of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The number belongs to this business.
    Known(Arc<Business>),
    /// No business has this number.
    Unknown,
    /// The database did not answer and nothing is cached.
    Unavailable,
}

/// A number's business (or its absence) and when that was read.
type CacheEntry = (Option<Arc<Business>>, Instant);

/// Businesses by phone number, cached so that a database outage does not silence known numbers.
#[derive(Debug, Clone)]
pub struct Directory {
    db: Db,
    outage: Outage,
    cache: Arc<RwLock<HashMap<String, CacheEntry>>>,
}

impl Directory {
    /// A directory over `db`; while `outage` is on, a cached number is answered from the cache
    /// however old its entry, and a number not in the cache is [`Lookup::Unavailable`] at once.
    pub fn new(db: Db, outage: Outage) -> Self {
        Self {
            db,
            outage,
            cache: Arc::default(),
        }
    }

    /// The business that owns `number`.
    pub async fn by_number(&self, number: &str) -> Lookup {
        let cached = self.cache.read().ok().and_then(|c| c.get(number).cloned());
        if let Some((entry, at)) = &cached
            && (at.elapsed() < CACHE_TTL || self.outage.is_on())
        {
            return entry.clone().map_or(Lookup::Unknown, Lookup::Known);
        }
        if cached.is_none() && self.outage.is_on() {
            // Nothing to fall back on, and a lookup would wait for a database that is away.
            return Lookup::Unavailable;
        }
        let query = self.db.run(|pool| {
            sqlx::query("SELECT id, greeting, media_stream_url FROM businesses WHERE phone_number = $1")
                .bind(number)
                .fetch_optional(pool)
        });
        match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
            Ok(Ok(row)) => {
                let business = row.and_then(|r| {
                    Some(Arc::new(Business::new(
                        r.try_get(0).ok()?,
                        r.try_get(1).ok()?,
                        r.try_get(2).ok()?,
                    )))
                });
                if let Ok(mut cache) = self.cache.write() {
                    cache.insert(number.to_owned(), (business.clone(), Instant::now()));
                }
                business.map_or(Lookup::Unknown, Lookup::Known)
            }
            _ => {
                self.outage.begins();
                tracing::warn!(number = %number, cached = cached.is_some(), "[TWILIO] business lookup failed; using the cache");
                match cached {
                    Some((entry, _)) => entry.map_or(Lookup::Unknown, Lookup::Known),
                    None => Lookup::Unavailable,
                }
            }
        }
    }

    /// The business with `id` (for outbound webhooks, which carry it).
    pub async fn by_id(&self, id: i64) -> Option<Business> {
        let query = self.db.run(|pool| {
            sqlx::query("SELECT id, greeting, media_stream_url FROM businesses WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
        });
        let row = tokio::time::timeout(LOOKUP_TIMEOUT, query).await.ok()?.ok()??;
        Some(Business::new(
            row.try_get(0).ok()?,
            row.try_get(1).ok()?,
            row.try_get(2).ok()?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_business_answers_with_its_greeting_rendered_once_or_its_stream() {
        let business = Business::new(7, "Tom & Jerry's".into(), None);
        let (kind, answer) = business.answer("CA1", None);
        assert_eq!(kind, AnswerKind::Greeting);
        assert!(
            answer.ends_with(b"<Say>Tom &amp; Jerry&apos;s</Say></Response>"),
            "{answer:?}"
        );
        assert_eq!(
            answer.as_ptr(),
            business.answer("CA2", None).1.as_ptr(),
            "every call shares the rendered greeting"
        );
        let streamed = Business::new(7, "hi".into(), Some("wss://media.example/s".into()));
        let (kind, answer) = streamed.answer("CA3", None);
        assert_eq!(kind, AnswerKind::Stream);
        let answer = String::from_utf8(answer.to_vec()).unwrap();
        assert!(
            answer.contains(r#"<Stream url="wss://media.example/s"><Parameter name="call_sid" value="CA3"/>"#),
            "{answer}"
        );
        let relay = RelayUrls {
            stream: "wss://v.example/ws/twilio/media".into(),
            status_callback: "https://v.example/webhook/stream_status".into(),
        };
        let (kind, answer) = streamed.answer("CA4", Some(&relay));
        assert_eq!(kind, AnswerKind::Stream);
        let answer = String::from_utf8(answer.to_vec()).unwrap();
        assert!(
            answer.contains(r#"<Stream url="wss://v.example/ws/twilio/media" statusCallback="https://v.example/webhook/stream_status""#)
                && !answer.contains("media.example"),
            "the relay's URL, never the media server's: {answer}"
        );
        let (kind, _) = business.answer("CA5", Some(&relay));
        assert_eq!(kind, AnswerKind::Greeting, "no media server, no stream");
    }
}
