//! Trusted proxies: whose `X-Forwarded-*` and `X-Request-Id` headers are believed.

use std::net::IpAddr;
use std::str::FromStr;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// A set of CIDRs. Forwarding headers are honoured only when the TCP peer is inside one of them;
/// from anyone else they are ignored, so a client cannot forge its address or request id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// A trusted-proxy entry that is neither an IP address nor a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, 127.0.0.1, ::1/128)")]
pub struct BadProxy(pub String);

impl TrustedProxies {
    /// Parses entries such as `10.0.0.0/8`, `127.0.0.1` or `::1`.
    ///
    /// # Errors
    /// The first entry that is not an address or CIDR.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadProxy> {
        let nets = entries
            .iter()
            .map(|raw| {
                let raw = raw.as_ref().trim();
                IpNet::from_str(raw)
                    .or_else(|_| IpAddr::from_str(raw).map(IpNet::from))
                    .map_err(|_| BadProxy(raw.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nets })
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The configured networks.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Where a request really came from. From an untrusted peer: the peer itself over plain http,
    /// whatever headers it sent. From a trusted proxy: the hops of `X-Forwarded-For` or, when there
    /// is none, of `Forwarded` (RFC 7239), walked right to left past trusted proxies; the client is
    /// the first untrusted hop (the left-most when all are trusted). An unparsable or obfuscated hop
    /// stops the walk: what lies left of it cannot be believed. The scheme is the last
    /// `X-Forwarded-Proto` value (also when it comes without `X-Forwarded-For`), or the `proto` of
    /// the client's `Forwarded` hop; only `http` and `https` count.
    ///
    /// `X-Forwarded-For` wins because almost every balancer (nginx, HAProxy, cloud balancers) sets
    /// it and passes a client's own `Forwarded` through untouched: preferring `Forwarded` would let
    /// any client choose its address. A proxy that sets only `Forwarded` must drop incoming
    /// `X-Forwarded-For`.
    pub fn origin(&self, peer: IpAddr, headers: &HeaderMap) -> ClientOrigin {
        let peer = peer.to_canonical();
        let direct = ClientOrigin {
            ip: peer,
            scheme: Scheme::Http,
        };
        if !self.contains(peer) {
            return direct;
        }
        let proto = headers
            .get_all("x-forwarded-proto")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(Scheme::parse);
        let forwarded_for = joined(headers, "x-forwarded-for");
        let hops: Vec<Hop> = if !forwarded_for.trim().is_empty() {
            forwarded_for
                .split(',')
                .filter(|entry| !entry.trim().is_empty())
                .map(|entry| Hop {
                    ip: IpAddr::from_str(entry.trim()).ok(),
                    scheme: proto,
                })
                .collect()
        } else {
            rfc7239::parse(&joined(headers, "forwarded"))
                .map(|element| match element {
                    Ok(element) => Hop {
                        ip: element.forwarded_for.as_ref().and_then(|node| node.ip()).copied(),
                        scheme: element.protocol.and_then(Scheme::parse),
                    },
                    Err(_) => Hop { ip: None, scheme: None },
                })
                .collect()
        };
        // With no hop at all, the proxy itself is the client; how it was reached, it may still say
        // (a proxy that sets only `X-Forwarded-Proto`).
        let mut origin = ClientOrigin {
            scheme: proto.unwrap_or(Scheme::Http),
            ..direct
        };
        for hop in hops.iter().rev() {
            let Some(ip) = hop.ip else { break };
            origin = ClientOrigin {
                ip: ip.to_canonical(),
                scheme: hop.scheme.unwrap_or(Scheme::Http),
            };
            if !self.contains(origin.ip) {
                break;
            }
        }
        origin
    }
}

/// Every line of header `name`, joined with commas: a proxy may add its own line instead of
/// appending to the last one.
fn joined(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// One forwarding hop: the address it received the request from (when parsable) and the scheme.
struct Hop {
    ip: Option<IpAddr>,
    scheme: Option<Scheme>,
}

/// How the client reached the first proxy (or us).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS (terminated by a trusted proxy: callplane itself speaks plain HTTP).
    Https,
}

impl Scheme {
    fn parse(value: &str) -> Option<Self> {
        let value = value.trim().trim_matches('"');
        if value.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else if value.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else {
            None
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// The client of a request under the trusted-proxy rules (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOrigin {
    /// The client's address.
    pub ip: IpAddr,
    /// How it reached the edge.
    pub scheme: Scheme,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_cidrs() {
        let p = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.1", " ::1 "]).unwrap();
        assert!(p.contains(ip("10.1.2.3")));
        assert!(p.contains(ip("127.0.0.1")));
        assert!(
            p.contains(ip("::ffff:127.0.0.1")),
            "IPv4-mapped peers are canonicalised"
        );
        assert!(p.contains(ip("::1")));
        assert!(!p.contains(ip("192.168.0.1")));
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/33"]).unwrap_err(),
            BadProxy("10.0.0.0/33".into())
        );
        assert!(TrustedProxies::parse(&["proxy.internal"]).is_err());
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                actix_web::http::header::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn client(p: &TrustedProxies, peer: &str, pairs: &[(&str, &str)]) -> (IpAddr, Scheme) {
        let origin = p.origin(ip(peer), &headers(pairs));
        (origin.ip, origin.scheme)
    }

    #[test]
    fn forwarding_headers_are_ignored_from_untrusted_peers() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let forged = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=1.2.3.4;proto=https"),
        ];
        assert_eq!(client(&p, "203.0.113.9", &forged), (ip("203.0.113.9"), Scheme::Http));
        assert_eq!(
            client(&TrustedProxies::default(), "10.0.0.1", &forged),
            (ip("10.0.0.1"), Scheme::Http)
        );
    }

    #[test]
    fn forwarded_for_walks_right_to_left_through_trusted_hops() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let xff = |value: &str| client(&p, "10.0.0.2", &[("x-forwarded-for", value)]).0;
        // The client forged the first entry; the proxy appended the real one.
        assert_eq!(xff("6.6.6.6, 198.51.100.7, 10.0.0.9"), ip("198.51.100.7"));
        assert_eq!(xff("10.0.0.5"), ip("10.0.0.5"));
        assert_eq!(xff("garbage, 198.51.100.7"), ip("198.51.100.7"));
        assert_eq!(xff("198.51.100.7, not an ip"), ip("10.0.0.2"));
        assert_eq!(xff(""), ip("10.0.0.2"));
        assert_eq!(
            xff("::ffff:198.51.100.7"),
            ip("198.51.100.7"),
            "mapped addresses are canonical"
        );
    }

    #[test]
    fn the_scheme_comes_from_the_trusted_proxy() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let via_nginx = [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "https")];
        assert_eq!(client(&p, "10.0.0.2", &via_nginx), (ip("198.51.100.7"), Scheme::Https));
        // A forged first value is overridden by the one the proxy added last.
        let appended = [
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https, http"),
        ];
        assert_eq!(client(&p, "10.0.0.2", &appended).1, Scheme::Http);
        let odd = [("x-forwarded-for", "198.51.100.7"), ("x-forwarded-proto", "gopher")];
        assert_eq!(client(&p, "10.0.0.2", &odd).1, Scheme::Http);
        // No forwarding headers at all: the proxy itself is the client, over http.
        assert_eq!(client(&p, "10.0.0.2", &[]), (ip("10.0.0.2"), Scheme::Http));
        // X-Forwarded-Proto on its own still tells the scheme (and only from a trusted proxy).
        let proto_only = [("x-forwarded-proto", "https")];
        assert_eq!(client(&p, "10.0.0.2", &proto_only), (ip("10.0.0.2"), Scheme::Https));
        assert_eq!(
            client(&p, "203.0.113.9", &proto_only),
            (ip("203.0.113.9"), Scheme::Http)
        );
    }

    #[test]
    fn rfc7239_forwarded_counts_only_without_x_forwarded_for() {
        let p = TrustedProxies::parse(&["10.0.0.0/8", "2001:db8::/32"]).unwrap();
        // nginx sets X-Forwarded-For and passes the client's own Forwarded through: ignored.
        let both = [
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-forwarded-for", "192.0.2.1"),
        ];
        assert_eq!(client(&p, "10.0.0.2", &both), (ip("192.0.2.1"), Scheme::Http));
        let chain = [(
            "forwarded",
            r#"for=6.6.6.6;proto=http, for="[2001:db8:cafe::17]:4711";proto=https"#,
        )];
        // 2001:db8::/32 is trusted, so the walk goes on to the untrusted 6.6.6.6.
        assert_eq!(client(&p, "10.0.0.2", &chain), (ip("6.6.6.6"), Scheme::Http));
        let edge = [("forwarded", "for=198.51.100.7;proto=https;by=10.0.0.1")];
        assert_eq!(client(&p, "10.0.0.2", &edge), (ip("198.51.100.7"), Scheme::Https));
        let obfuscated = [("forwarded", "for=198.51.100.7, for=_hidden, for=10.0.0.3")];
        assert_eq!(
            client(&p, "10.0.0.2", &obfuscated).0,
            ip("10.0.0.3"),
            "the walk stops at _hidden"
        );
        let broken = [("forwarded", "for=198.51.100.7, nonsense")];
        assert_eq!(client(&p, "10.0.0.2", &broken).0, ip("10.0.0.2"));
    }
}
