//! Trusted proxies: whose `X-Forwarded-*` and `X-Request-Id` headers are believed.

use std::net::IpAddr;
use std::str::FromStr;

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

    /// The client address: the peer itself unless it is trusted; then the right-most address of
    /// `X-Forwarded-For` that is not a trusted proxy (the left-most when all are). An unparsable
    /// entry stops the walk: what lies left of it cannot be believed.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        let Some(header) = forwarded_for.filter(|_| self.contains(peer)) else {
            return peer;
        };
        let mut client = peer;
        for entry in header.rsplit(',') {
            match IpAddr::from_str(entry.trim()) {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.contains(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
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

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        assert_eq!(p.client_ip(ip("203.0.113.9"), Some("1.2.3.4")), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), Some("1.2.3.4")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_for_walks_right_to_left_through_trusted_hops() {
        let p = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // The client forged the first entry; the proxy appended the real one.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), Some("6.6.6.6, 198.51.100.7, 10.0.0.9")),
            ip("198.51.100.7")
        );
        assert_eq!(p.client_ip(ip("10.0.0.2"), Some("10.0.0.5")), ip("10.0.0.5"));
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), Some("garbage, 198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), Some("198.51.100.7, not an ip")),
            ip("10.0.0.2")
        );
        assert_eq!(p.client_ip(ip("10.0.0.2"), Some("")), ip("10.0.0.2"));
    }
}
