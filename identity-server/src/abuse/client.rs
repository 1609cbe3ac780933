//! Who is calling: the client IP, from the socket peer or, behind trusted proxies, from the
//! forwarding header they append to; and whether a caller's W3C trace context is continued
//! ([`TraceContextTrust`]).
//!
//! The rule: the peer is the client unless it lies inside [`TrustedProxies`]. Then the hops of
//! the configured [`ForwardedHeader`] are walked from the right (the hop the nearest proxy
//! appended comes last), skipping trusted addresses; the first untrusted address is the
//! client. Headers from an untrusted peer are never read, so a caller cannot choose its own
//! identity by sending one.
//!
//! Two edge cases, both decided so that no caller can pick a spoofed identity:
//! - a hop that is not an IP address (garbage, `unknown`, an obfuscated RFC 7239 name, a
//!   missing `for=`): the walk stops there and the client is the trusted hop that reported it
//!   (the address to its right). Everything to its left was written by someone no trusted
//!   proxy vouches for, so falling through to it would let a caller choose its key. Clients
//!   behind such a proxy share its bucket: strict, never lax.
//! - every hop trusted (an internal caller going through the proxy): the leftmost hop is the
//!   client; with no header at all, the trusted peer itself is.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use http::HeaderMap;

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this network. An IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let bits = u32::from(ip);
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(bits & mask)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let bits = u128::from(ip);
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    Ipv6Addr::from(bits & mask)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (address, prefix) = match raw.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw, None),
        };
        let network = address
            .parse::<IpAddr>()
            .map_err(|_| format!("{raw:?} is not an IP address or CIDR network"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{raw:?}: the prefix length must be 0 to {max}"))?,
        };
        let masked = match network {
            IpAddr::V4(ip) => IpAddr::V4(mask_v4(ip, prefix)),
            IpAddr::V6(ip) => IpAddr::V6(mask_v6(ip, prefix)),
        };
        if masked != network {
            return Err(format!(
                "{raw:?} has host bits set; did you mean {masked}/{prefix}?"
            ));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose forwarding headers are believed (IDENTITY_TRUSTED_PROXIES); empty trusts
/// none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Trusts the given networks.
    pub fn new(networks: Vec<Cidr>) -> Self {
        Self(networks)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many networks are trusted.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The header trusted proxies append the client's address to. Only one is read: reading
/// whichever is present would let a caller send the other one through a proxy that does not
/// touch it, and pick its own identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardedHeader {
    /// `x-forwarded-for: client, proxy1, proxy2` (de facto standard; nginx, Envoy, most BFFs).
    #[default]
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `forwarded: for=client, for="[2001:db8::1]:443"`.
    #[value(name = "forwarded")]
    Forwarded,
}

impl ForwardedHeader {
    fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// The client's IP address as the limits see it: IPv4 (mapped addresses included) as is,
/// IPv6 reduced to its /64, the smallest block one subscriber usually holds (its /48 and /32
/// have limits of their own too: [`ClientIp::ipv6_network`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    /// The client behind `ip`.
    pub fn new(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => Self(IpAddr::V6(mask_v6(v6, 64))),
        }
    }
}

impl ClientIp {
    /// The IPv6 network of `prefix` bits (at most 64) this client lies in, e.g. its /48;
    /// `None` for an IPv4 client.
    pub fn ipv6_network(&self, prefix: u8) -> Option<Cidr> {
        let IpAddr::V6(ip) = self.0 else {
            return None;
        };
        let prefix = prefix.min(64);
        Some(Cidr {
            network: IpAddr::V6(mask_v6(ip, prefix)),
            prefix,
        })
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}"),
            IpAddr::V6(ip) => write!(f, "{ip}/64"),
        }
    }
}

/// Whose W3C trace context (`traceparent`, `tracestate`) a call continues. A call that does not
/// continue its caller's trace starts one of its own, sampled by the server's own decision, and
/// links to the caller's span: a caller on the public edge can neither switch the server's
/// sampling on or off nor make its trace part of ours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceContextTrust {
    /// Callers whose socket peer is a trusted proxy (your BFF, your ingress).
    #[default]
    #[value(name = "trusted-proxies")]
    TrustedProxies,
    /// Every caller: for a server that only your own services can reach.
    #[value(name = "all")]
    All,
    /// No caller: every call starts a trace of its own.
    #[value(name = "none")]
    None,
}

/// How the client IP is found (which peers are trusted and which header they write), and whose
/// trace context is continued.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    /// Peers whose header is believed.
    pub trusted_proxies: TrustedProxies,
    /// The header they append to.
    pub header: ForwardedHeader,
    /// Whose trace context a call continues.
    pub trace_context: TraceContextTrust,
}

impl ClientIdentity {
    /// Whether a call from socket peer `peer` (`None`: no TCP peer) continues the trace context
    /// it carries, rather than only linking to it.
    pub fn continues_trace_of(&self, peer: Option<IpAddr>) -> bool {
        match self.trace_context {
            TraceContextTrust::All => true,
            TraceContextTrust::None => false,
            TraceContextTrust::TrustedProxies => {
                peer.is_some_and(|peer| self.trusted_proxies.contains(peer.to_canonical()))
            }
        }
    }

    /// The client of a call from socket peer `peer` carrying `headers`; see the module
    /// documentation for the rule.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> ClientIp {
        let mut client = peer.to_canonical();
        if !self.trusted_proxies.contains(client) {
            return ClientIp::new(client);
        }
        // Several header lines form one list, in order.
        let values = headers
            .get_all(self.header.name())
            .iter()
            .map(|value| value.to_str().ok());
        let mut hops: Vec<Option<IpAddr>> = Vec::new();
        for value in values {
            match value {
                Some(value) => match self.header {
                    ForwardedHeader::XForwardedFor => {
                        hops.extend(value.split(',').map(parse_x_forwarded_for_hop));
                    }
                    ForwardedHeader::Forwarded => hops.extend(forwarded_hops(value)),
                },
                // Not visible ASCII: one unreadable hop.
                None => hops.push(None),
            }
        }
        for hop in hops.into_iter().rev() {
            match hop {
                // Garbage: the nearest trusted hop stays the client.
                None => break,
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.trusted_proxies.contains(client) {
                        break;
                    }
                }
            }
        }
        ClientIp::new(client)
    }
}

/// One `x-forwarded-for` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`).
fn parse_x_forwarded_for_hop(raw: &str) -> Option<IpAddr> {
    parse_node(raw.trim())
}

/// An address with an optional port and optional brackets around IPv6.
fn parse_node(raw: &str) -> Option<IpAddr> {
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = raw.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    // "[v6]" without a port.
    raw.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
    // IPv4 with a port is handled by SocketAddr above; anything else (`unknown`, `_hidden`,
    // text) is not an address.
}

/// The `for=` of each element of an RFC 7239 `forwarded` value, in order; `None` for an element
/// whose `for` is missing, `unknown`, obfuscated or malformed.
fn forwarded_hops(value: &str) -> Vec<Option<IpAddr>> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(|element| {
            let mut node = None;
            for pair in split_outside_quotes(element, ';') {
                let (name, value) = pair.split_once('=')?;
                if name.trim().eq_ignore_ascii_case("for") {
                    if node.is_some() {
                        // Two `for`s in one element: malformed.
                        return None;
                    }
                    node = Some(unquote(value.trim())?);
                }
            }
            node.and_then(|node| parse_node(&node))
        })
        .collect()
}

/// Splits at `separator` except inside double quotes (where a backslash escapes a character).
fn split_outside_quotes(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&value[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&value[start..]);
    parts
}

/// A token as is, or a quoted string without its quotes and escapes; `None` if malformed.
fn unquote(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix('"') else {
        return (!raw.is_empty() && !raw.contains('"')).then(|| raw.to_owned());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("test address")
    }

    fn identity(trusted: &[&str], header: ForwardedHeader) -> ClientIdentity {
        ClientIdentity {
            trusted_proxies: TrustedProxies::new(
                trusted
                    .iter()
                    .map(|c| c.parse().expect("test CIDR"))
                    .collect(),
            ),
            header,
            trace_context: TraceContextTrust::default(),
        }
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, value.parse().expect("test header"));
        }
        map
    }

    fn xff(trusted: &[&str], peer: &str, values: &[&str]) -> String {
        identity(trusted, ForwardedHeader::XForwardedFor)
            .client_ip(ip(peer), &headers("x-forwarded-for", values))
            .to_string()
    }

    fn fwd(trusted: &[&str], peer: &str, values: &[&str]) -> String {
        identity(trusted, ForwardedHeader::Forwarded)
            .client_ip(ip(peer), &headers("forwarded", values))
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_its_headers_say() {
        assert_eq!(xff(&[], "198.51.100.7", &["203.0.113.1"]), "198.51.100.7");
        assert_eq!(
            xff(&["10.0.0.0/8"], "198.51.100.7", &["203.0.113.1"]),
            "198.51.100.7"
        );
        assert_eq!(
            fwd(&["10.0.0.0/8"], "198.51.100.7", &["for=203.0.113.1"]),
            "198.51.100.7"
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_skipping_trusted_hops() {
        let trusted = ["10.0.0.0/8", "192.168.1.1"];
        // The leftmost entry is whatever the client sent: never used past an untrusted hop.
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["6.6.6.6, 203.0.113.9, 192.168.1.1"]),
            "203.0.113.9"
        );
        // Several header lines are one list; ports and spaces are tolerated.
        assert_eq!(
            xff(
                &trusted,
                "10.0.0.1",
                &["6.6.6.6", " 203.0.113.9:4711 ,10.1.2.3"]
            ),
            "203.0.113.9"
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["[2001:db8:a:b:1:2:3:4]:443"]),
            "2001:db8:a:b::/64"
        );
    }

    #[test]
    fn a_garbage_hop_stops_the_walk_at_the_trusted_hop_that_reported_it() {
        let trusted = ["10.0.0.0/8"];
        // Never the spoofable 6.6.6.6 further left.
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["6.6.6.6, nonsense"]),
            "10.0.0.1"
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["6.6.6.6, unknown, 10.0.0.2"]),
            "10.0.0.2"
        );
        assert_eq!(xff(&trusted, "10.0.0.1", &["6.6.6.6,"]), "10.0.0.1");
    }

    #[test]
    fn an_all_trusted_chain_makes_its_leftmost_hop_the_client() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["10.9.9.9, 10.0.0.2"]),
            "10.9.9.9"
        );
        assert_eq!(xff(&trusted, "10.0.0.1", &[]), "10.0.0.1");
    }

    #[test]
    fn forwarded_for_values_are_parsed_per_rfc_7239() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(
            fwd(
                &trusted,
                "10.0.0.1",
                &["for=6.6.6.6, for=203.0.113.9;proto=https"]
            ),
            "203.0.113.9"
        );
        assert_eq!(
            fwd(
                &trusted,
                "10.0.0.1",
                &[r#"for="[2001:db8:cafe::17]:4711";by=10.0.0.1, For=10.0.0.2"#]
            ),
            "2001:db8:cafe::/64"
        );
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &[r#"for="203.0.113.9:80""#]),
            "203.0.113.9"
        );
        // A quoted comma does not split elements.
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &[r#"for=203.0.113.9;ext="a,b""#]),
            "203.0.113.9"
        );
    }

    #[test]
    fn unknown_obfuscated_or_missing_forwarded_nodes_stop_the_walk() {
        let trusted = ["10.0.0.0/8"];
        for value in [
            "for=6.6.6.6, for=unknown",
            "for=6.6.6.6, for=_hidden",
            "for=6.6.6.6, proto=https",
            r#"for=6.6.6.6, for="unterminated"#,
            "for=6.6.6.6, for=1.2.3.4;for=5.6.7.8",
            "for=6.6.6.6, garbage",
        ] {
            assert_eq!(fwd(&trusted, "10.0.0.1", &[value]), "10.0.0.1", "{value}");
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_slash_64() {
        assert_eq!(
            xff(&[], "2001:db8:1:2:aaaa:bbbb:cccc:dddd", &[]),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            ClientIp::new(ip("2001:db8:1:2::1")),
            ClientIp::new(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientIp::new(ip("2001:db8:1:2::1")),
            ClientIp::new(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn an_ipv6_client_names_its_wider_networks_and_an_ipv4_client_none() {
        let client = ClientIp::new(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"));
        let network = |prefix| client.ipv6_network(prefix).map(|c| c.to_string());
        assert_eq!(network(48).as_deref(), Some("2001:db8:1::/48"));
        assert_eq!(network(32).as_deref(), Some("2001:db8::/32"));
        assert_eq!(
            ClientIp::new(ip("2001:db8:1:ffff::1")).ipv6_network(48),
            client.ipv6_network(48)
        );
        assert_eq!(ClientIp::new(ip("203.0.113.9")).ipv6_network(48), None);
        assert_eq!(
            ClientIp::new(ip("::ffff:203.0.113.9")).ipv6_network(48),
            None
        );
    }

    #[test]
    fn only_a_trusted_proxy_s_trace_context_is_continued_by_default() {
        let mut callers = identity(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        assert!(callers.continues_trace_of(Some(ip("10.1.2.3"))));
        assert!(callers.continues_trace_of(Some(ip("::ffff:10.1.2.3"))));
        assert!(!callers.continues_trace_of(Some(ip("203.0.113.9"))));
        assert!(!callers.continues_trace_of(None));
        callers.trace_context = TraceContextTrust::All;
        assert!(callers.continues_trace_of(Some(ip("203.0.113.9"))));
        assert!(callers.continues_trace_of(None));
        callers.trace_context = TraceContextTrust::None;
        assert!(!callers.continues_trace_of(Some(ip("10.1.2.3"))));
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(xff(&[], "::ffff:203.0.113.9", &[]), "203.0.113.9");
        // A mapped peer inside an IPv4 trusted network is trusted.
        assert_eq!(
            xff(
                &["127.0.0.0/8"],
                "::ffff:127.0.0.2",
                &["::ffff:203.0.113.9"]
            ),
            "203.0.113.9"
        );
    }

    #[test]
    fn cidrs_parse_with_clear_errors() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().map(|c| c.to_string()),
            Ok("10.0.0.0/8".to_owned())
        );
        assert_eq!(
            "::1".parse::<Cidr>().map(|c| c.to_string()),
            Ok("::1/128".to_owned())
        );
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .expect_err("host bits")
                .contains("10.0.0.0/8")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .is_ok_and(|c| c.contains(ip("8.8.8.8")))
        );
    }
}
