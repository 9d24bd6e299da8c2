//! The destination guard: which addresses a postback may be sent to.
//!
//! A producer chooses the URL, so without a guard deliver would connect
//! wherever it is told: Redis' own port, ingest, the admin listeners, a
//! cloud metadata service, the private network. By default only public
//! unicast addresses are allowed. [`DestinationPolicy`] decides for one
//! resolved address and port; deliver asks it at connect time, for every
//! address a name resolved to, and connects only to an address it allowed
//! (no second lookup, so DNS rebinding cannot slip past). ingest asks it
//! for hosts written as IP literals, to refuse those at once.
//!
//! Denied by default: IPv4 0/8, 10/8, 100.64/10 (CGNAT), 127/8, 169.254/16,
//! 172.16/12, 192.0.0/24, 192.0.2/24, 192.88.99/24, 192.168/16, 198.18/15,
//! 198.51.100/24, 203.0.113/24, multicast 224/4, 240/4 (reserved and
//! broadcast); IPv6 `::`, `::1`, 64:ff9b:1::/48, 100::/64, 2001::/23 (IETF
//! protocol assignments, Teredo included), 2001:db8::/32, 3fff::/20,
//! fc00::/7 (ULA), fe80::/10, fec0::/10, ff00::/8; and every IPv4-mapped
//! (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64
//! (64:ff9b::/96) and 6to4 (2002::/16) address whose embedded IPv4 address
//! is denied.
//!
//! `POSTBACK_ALLOW_DESTINATIONS` opens exceptions and
//! `POSTBACK_DENY_DESTINATIONS` adds denials, each a comma-separated list
//! of addresses or CIDRs, each optionally with a port (`10.1.0.0/16`,
//! `127.0.0.1:9000`, `[::1]:9000`, `[fd00::/8]:443`). A denial wins over an
//! exception, and the metadata address 169.254.169.254 is opened only by an
//! exception that names it exactly (`169.254.169.254/32`, with or without a
//! port), never by a wider range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The cloud metadata address, opened only when named exactly.
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// IPv4 ranges that are not public unicast.
const DENIED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 ranges that are not public unicast (the forms that embed an IPv4
/// address are judged by that address instead, see [`embedded_v4`]).
const DENIED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128),
    (Ipv6Addr::LOCALHOST, 128),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4 range never holds an IPv6
    /// address: callers pass embedded IPv4 addresses as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix),
            _ => false,
        }
    }

    fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

/// One entry of an allow or deny list: a range, and a port if it names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    range: Cidr,
    port: Option<u16>,
}

impl Rule {
    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.range.contains(ip) && self.port.is_none_or(|p| p == port)
    }

    /// `10.1.0.0/16`, `127.0.0.1:9000`, `::1`, `[::1]:9000`, `[fd00::/8]:443`.
    fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        let (range, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: a '[' without its ']'"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{text:?}: expected :PORT after ']'"))?,
                ),
            };
            (inside, port)
        } else if text.matches(':').count() == 1 {
            let (range, port) = text.split_once(':').unwrap_or((text, ""));
            (range, Some(port))
        } else {
            (text, None)
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| format!("{text:?}: {p:?} is not a port")))
            .transpose()?;
        Ok(Rule {
            range: Cidr::parse(range)?,
            port,
        })
    }

    fn parse_list(text: &str) -> Result<Vec<Rule>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Rule::parse)
            .collect()
    }
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not public unicast, and no exception opens it.
    NotPublic,
    /// Named by `POSTBACK_DENY_DESTINATIONS`.
    Denied,
}

/// Which destinations are allowed: public unicast addresses, plus the
/// exceptions, minus the denials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl DestinationPolicy {
    /// The policy of the two lists' texts (see the module doc); an error
    /// names the entry that does not parse.
    pub fn parse(allow: &str, deny: &str) -> Result<Self, String> {
        Ok(DestinationPolicy {
            allow: Rule::parse_list(allow)?,
            deny: Rule::parse_list(deny)?,
        })
    }

    /// Whether a connection to `addr` is allowed; `Err` says why not.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let port = addr.port();
        // An address that embeds an IPv4 address is that address.
        let ip = match addr.ip() {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let named = |rules: &[Rule]| rules.iter().any(|r| r.matches(ip, port) || r.matches(addr.ip(), port));
        if named(&self.deny) {
            return Err(Refusal::Denied);
        }
        if is_public(ip) {
            return Ok(());
        }
        let opened = self.allow.iter().any(|rule| {
            (rule.matches(ip, port) || rule.matches(addr.ip(), port))
                && (ip != IpAddr::V4(METADATA) || rule.range.prefix == 32)
        });
        if opened {
            Ok(())
        } else {
            Err(Refusal::NotPublic)
        }
    }
}

/// Whether `ip` (with embedded IPv4 addresses already taken out) is public
/// unicast.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !DENIED_V4
            .iter()
            .any(|(net, prefix)| prefix_eq(u32::from(*net).into(), u32::from(v4).into(), 32, *prefix)),
        IpAddr::V6(v6) => !DENIED_V6
            .iter()
            .any(|(net, prefix)| prefix_eq(u128::from(*net), u128::from(v6), 128, *prefix)),
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`),
/// IPv4-compatible (`::/96`, but `::` and `::1`), NAT64 (`64:ff9b::/96`) or
/// 6to4 (`2002::/16`) address.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    let s = ip.segments();
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low32),
        [0, 0, 0, 0, 0, 0, _, _] if bits > 1 => Some(low32),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low32),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

/// Reads an IPv4 address the way the C library's `inet_aton` does, which
/// is how a resolver reads a host name made of numbers: one to four parts,
/// each decimal, octal (leading `0`) or hex (`0x`), the last filling the
/// remaining bytes (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`).
pub fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    // Without allocating: ingest asks this of every request's host.
    let mut numbers = [0u32; 4];
    let mut count = 0;
    for part in host.split('.') {
        if count == 4 {
            return None;
        }
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
        // from_str_radix would take a sign; a resolver would not.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        numbers[count] = u32::from_str_radix(digits, radix).ok()?;
        count += 1;
    }
    let (last, leading) = numbers[..count].split_last()?;
    if leading.iter().any(|n| *n > 255) || u64::from(*last) >= 1u64 << (8 * (5 - count)) {
        return None;
    }
    let mut value = *last;
    for (i, n) in leading.iter().enumerate() {
        value |= n << (24 - 8 * i);
    }
    Some(Ipv4Addr::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_is_allowed_by_default() {
        let policy = DestinationPolicy::default();
        for denied in [
            "127.0.0.1:80",
            "127.255.0.9:6379",
            "0.0.0.0:80",
            "10.0.0.1:80",
            "172.16.5.4:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "169.254.169.254:80",
            "169.254.1.1:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "192.0.2.1:80",
            "198.51.100.1:80",
            "203.0.113.1:80",
            "198.18.0.1:80",
            "[::1]:80",
            "[::]:80",
            "[fe80::1]:80",
            "[fc00::1]:80",
            "[fd12:3456::1]:80",
            "[ff02::1]:80",
            "[2001:db8::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:10.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::7f00:1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2002:7f00:1::1]:80",
            "[2002:a00:1::]:80",
            "[2001::1]:80",
        ] {
            assert!(policy.check(at(denied)).is_err(), "{denied} must be denied");
        }
        for allowed in [
            "93.184.216.34:80",
            "8.8.8.8:443",
            "[2606:4700::1111]:443",
            "[::ffff:93.184.216.34]:80",
            "[2002:5db8:d822::1]:80",
            "[64:ff9b::808:808]:443",
        ] {
            assert_eq!(policy.check(at(allowed)), Ok(()), "{allowed} must be allowed");
        }
    }

    #[test]
    fn exceptions_may_name_a_port_and_denials_win() {
        let policy =
            DestinationPolicy::parse("10.1.0.0/16,127.0.0.1/32:9000,[::1]:9001", "10.1.2.0/24,8.8.8.8").unwrap();
        assert_eq!(policy.check(at("10.1.9.9:80")), Ok(()));
        assert_eq!(policy.check(at("10.1.2.3:80")), Err(Refusal::Denied));
        assert_eq!(policy.check(at("127.0.0.1:9000")), Ok(()));
        assert_eq!(policy.check(at("127.0.0.1:6379")), Err(Refusal::NotPublic));
        assert_eq!(
            policy.check(at("[::ffff:127.0.0.1]:9000")),
            Ok(()),
            "the mapped form is the same address"
        );
        assert_eq!(policy.check(at("[::1]:9001")), Ok(()));
        assert_eq!(policy.check(at("[::1]:9000")), Err(Refusal::NotPublic));
        assert_eq!(
            policy.check(at("8.8.8.8:53")),
            Err(Refusal::Denied),
            "a denial also closes a public address"
        );
    }

    #[test]
    fn the_metadata_address_needs_an_exception_of_its_own() {
        let wide = DestinationPolicy::parse("169.254.0.0/16", "").unwrap();
        assert_eq!(wide.check(at("169.254.1.1:80")), Ok(()));
        assert_eq!(wide.check(at("169.254.169.254:80")), Err(Refusal::NotPublic));
        let exact = DestinationPolicy::parse("169.254.169.254:80", "").unwrap();
        assert_eq!(exact.check(at("169.254.169.254:80")), Ok(()));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "10.0.0.0/33",
            "nonsense",
            "127.0.0.1:http",
            "[::1",
            "[::1]9000",
            "::1/200",
        ] {
            let err = DestinationPolicy::parse(bad, "").unwrap_err();
            assert!(err.contains(bad), "the error names the entry: {bad}: {err}");
        }
        assert_eq!(
            DestinationPolicy::parse(" , ", "").unwrap(),
            DestinationPolicy::default()
        );
    }

    #[test]
    fn numeric_hosts_read_as_a_resolver_reads_them() {
        let loopback = Some(Ipv4Addr::LOCALHOST);
        for host in [
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "0x7f.1",
            "127.0.1",
        ] {
            assert_eq!(parse_ipv4_loose(host), loopback, "{host}");
        }
        for not_ip in [
            "example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "0x",
            "1..1",
            "",
            "08.1.1.1",
            "4294967296",
        ] {
            assert_eq!(parse_ipv4_loose(not_ip), None, "{not_ip}");
        }
        assert_eq!(parse_ipv4_loose("0"), Some(Ipv4Addr::UNSPECIFIED));
    }
}
