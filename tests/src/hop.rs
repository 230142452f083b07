//! A TCP hop between callplane and PostgreSQL that can be cut: the database "goes away" for the
//! instances (open connections shut, new ones closed at once, as when the server stops) while the
//! server itself, shared with other tests, keeps running.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A hop to one PostgreSQL server; [`DbHop::url`] is the database URL through it.
#[derive(Debug)]
pub struct DbHop {
    url: String,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl DbHop {
    /// A hop to the server of `url` (a `postgres://user@host:port/database` URL), up.
    ///
    /// # Panics
    /// When the URL has no `user@host:port/` part, or no local port can be bound.
    pub fn start(url: &str) -> Self {
        let (head, rest) = url.split_once('@').expect("a postgres://user@host:port/db URL");
        let end = rest.find('/').expect("a postgres://user@host:port/db URL");
        let target = rest[..end]
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("the URL's host:port resolves");
        let listener = TcpListener::bind("127.0.0.1:0").expect("a local port for the hop");
        let local = listener.local_addr().expect("the hop's address");
        let hop = Self {
            url: format!("{head}@{local}{}", &rest[end..]),
            up: Arc::new(AtomicBool::new(true)),
            open: Arc::default(),
        };
        let (up, open) = (hop.up.clone(), hop.open.clone());
        std::thread::spawn(move || relay(&listener, target, &up, &open));
        hop
    }

    /// The database URL through the hop.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database goes away: open connections are shut, new ones closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::Relaxed);
        for stream in self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The database is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::Relaxed);
    }
}

fn relay(listener: &TcpListener, target: SocketAddr, up: &AtomicBool, open: &Mutex<Vec<TcpStream>>) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if !up.load(Ordering::Relaxed) {
            continue; // dropped: closed at once
        }
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        let (Ok(client2), Ok(server2), Ok(client3), Ok(server3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        open.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend([client3, server3]);
        for (mut from, mut to) in [(client2, server2), (server, client)] {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Both);
            });
        }
    }
}
