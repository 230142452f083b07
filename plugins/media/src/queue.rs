//! The bounded queue between a reader and a writer of one direction of a stream. Real-time audio
//! is never buffered without limit: past `media_cap` queued media frames the oldest is dropped
//! (late audio is worth nothing), while every other message (`mark`, `stop`, `dtmf`, `clear`,
//! `start`) is kept, up to a hard cap that only a misbehaving peer reaches.
//!
//! A queue belongs to one stream, which runs on one worker thread: no lock, no atomics.

use std::cell::RefCell;
use std::collections::VecDeque;

use tokio::sync::Notify;

/// Messages other than media a queue keeps at most: a peer that sends this many `mark`s faster
/// than the other side reads is ending its own stream.
pub const CONTROL_CAP: usize = 1024;

/// What [`Queue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued, and the oldest media frame dropped to make room.
    DroppedOldest,
    /// Not queued: [`CONTROL_CAP`] messages are waiting already.
    Overflow,
}

#[derive(Debug)]
struct Inner<T> {
    items: VecDeque<(T, bool)>,
    media: usize,
    closed: bool,
}

/// One direction's queue of messages `T`.
#[derive(Debug)]
pub struct Queue<T> {
    inner: RefCell<Inner<T>>,
    ready: Notify,
    media_cap: usize,
}

impl<T> Queue<T> {
    /// A queue keeping at most `media_cap` media frames.
    pub fn new(media_cap: usize) -> Self {
        Self {
            inner: RefCell::new(Inner {
                items: VecDeque::new(),
                media: 0,
                closed: false,
            }),
            ready: Notify::new(),
            media_cap: media_cap.max(1),
        }
    }

    /// Queues `message`; `media` says whether it may be dropped for newer audio.
    pub fn push(&self, message: T, media: bool) -> Pushed {
        let mut inner = self.inner.borrow_mut();
        let mut pushed = Pushed::Queued;
        if media {
            if inner.media >= self.media_cap {
                if let Some(oldest) = inner.items.iter().position(|(_, m)| *m) {
                    inner.items.remove(oldest);
                    inner.media -= 1;
                }
                pushed = Pushed::DroppedOldest;
            }
            inner.media += 1;
        } else if inner.items.len() - inner.media >= CONTROL_CAP {
            return Pushed::Overflow;
        }
        inner.items.push_back((message, media));
        drop(inner);
        self.ready.notify_one();
        pushed
    }

    /// No more messages: [`Queue::pop`] answers `None` once the queue is empty.
    pub fn close(&self) {
        self.inner.borrow_mut().closed = true;
        self.ready.notify_one();
    }

    /// The next message, waiting for one; `None` when closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            {
                let mut inner = self.inner.borrow_mut();
                if let Some((message, media)) = inner.items.pop_front() {
                    if media {
                        inner.media -= 1;
                    }
                    return Some(message);
                }
                if inner.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.inner.borrow().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use bytestring::ByteString;

    use super::*;

    #[actix_rt::test]
    async fn the_oldest_media_makes_room_and_control_messages_are_never_dropped() {
        let q: Queue<ByteString> = Queue::new(3);
        assert_eq!(q.push(ByteString::from_static("start"), false), Pushed::Queued);
        for i in 0..3 {
            assert_eq!(q.push(ByteString::from(format!("m{i}")), true), Pushed::Queued);
        }
        assert_eq!(q.push(ByteString::from_static("mark"), false), Pushed::Queued);
        assert_eq!(q.push(ByteString::from_static("m3"), true), Pushed::DroppedOldest);
        assert_eq!(q.push(ByteString::from_static("m4"), true), Pushed::DroppedOldest);
        q.push(ByteString::from_static("stop"), false);
        q.close();
        let mut out = Vec::new();
        while let Some(text) = q.pop().await {
            out.push(text.to_string());
        }
        assert_eq!(out, ["start", "m2", "mark", "m3", "m4", "stop"]);
        assert!(q.is_empty());
    }

    #[actix_rt::test]
    async fn control_messages_have_a_hard_cap() {
        let q: Queue<ByteString> = Queue::new(1);
        for _ in 0..CONTROL_CAP {
            assert_eq!(q.push(ByteString::from_static("mark"), false), Pushed::Queued);
        }
        assert_eq!(q.push(ByteString::from_static("mark"), false), Pushed::Overflow);
        assert_eq!(
            q.push(ByteString::from_static("m"), true),
            Pushed::Queued,
            "media still has its room"
        );
        assert_eq!(q.len(), CONTROL_CAP + 1);
    }

    #[actix_rt::test]
    async fn pop_waits_for_a_push() {
        let q = std::rc::Rc::new(Queue::<ByteString>::new(2));
        let waiting = actix_rt::spawn({
            let q = q.clone();
            async move { q.pop().await }
        });
        tokio::task::yield_now().await;
        q.push(ByteString::from_static("late"), true);
        assert_eq!(waiting.await.unwrap().as_deref(), Some("late"));
    }
}
