//! A URL's scheme and authority, found by byte scans, and its percent escapes.
//!
//! Both services look at parts of every job's URL (ingest at a literal
//! host, deliver at the scheme, the host it limits and any credentials),
//! once or more per request and per delivery, so these stay plain scans
//! rather than a parse. The syntax of the rest of the URL is left to the
//! HTTP client that sends it; where the request goes is decided here, by
//! [`host_port`], which both services apply: a port out of range or a zone
//! id is refused rather than read as "no port" (the `http` crate's
//! `port_u16` gives `None` for `:65536`, and a client then uses port 80).

/// The scheme and what follows `://`, when the URL's first `:` opens `://`.
pub fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let colon = url.bytes().position(|b| b == b':')?;
    // `:` is one byte, so both slices start on character boundaries.
    url[colon + 1..]
        .starts_with("//")
        .then(|| (&url[..colon], &url[colon + 3..]))
}

/// The authority (`userinfo@host:port`) at the start of `rest`, the part
/// of a URL after `://`: up to the first `/`, `?` or `#`.
pub fn authority(rest: &str) -> &str {
    let end = rest
        .bytes()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Where a URL sends its request: the host as written (an IPv6 address
/// without its brackets) and the port, the scheme's default when none is
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// A name, an IPv4 address in any form a resolver reads, or an IPv6
    /// address (unbracketed).
    pub host: &'a str,
    /// 1 to 65535.
    pub port: u16,
}

/// Why a URL's authority names no place a request can go. Each is final:
/// no retry can change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityProblem {
    /// Not `http://` or `https://`.
    #[error("the URL does not start with http:// or https://")]
    Scheme,
    /// Nothing between `://` (or the credentials' `@`) and the port or path.
    #[error("the URL has no host")]
    NoHost,
    /// A port that is not a number from 1 to 65535.
    #[error("the port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// An IPv6 zone id (`[fe80::1%25eth0]`): it names a network interface
    /// of the sender, not a destination.
    #[error("the host {0:?} has an IPv6 zone id (%...), which names an interface of the sending machine; give the address alone")]
    ZoneId(String),
    /// Neither an IP address nor a name made of letters, digits, `-`, `.`
    /// and `_` (a `%` escape, say, which no resolver decodes).
    #[error("the host {0:?} is not a host name (letters, digits, - . _) or an IP address")]
    Host(String),
}

/// The host and port an http(s) URL's request goes to, or why it has none.
///
/// A name may hold letters, digits, `-`, `.` and `_`; an address in
/// brackets must be an IPv6 address with no zone id; a port, when written,
/// must be 1 to 65535 (an empty one, `http://h:/`, is the default, as RFC
/// 3986 says).
pub fn host_port(url: &str) -> Result<HostPort<'_>, AuthorityProblem> {
    let (scheme, rest) = split_scheme(url).ok_or(AuthorityProblem::Scheme)?;
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        return Err(AuthorityProblem::Scheme);
    };
    let authority = authority(rest);
    // Credentials end at the last `@` (a password may hold an escaped one).
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, after)| after);
    let (host, port) = match host_and_port.strip_prefix('[') {
        Some(bracketed) => {
            let (inside, after) = bracketed
                .split_once(']')
                .ok_or_else(|| AuthorityProblem::Host(host_and_port.to_string()))?;
            if inside.contains('%') {
                return Err(AuthorityProblem::ZoneId(format!("[{inside}]")));
            }
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(AuthorityProblem::Host(format!("[{inside}]")));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| AuthorityProblem::Host(host_and_port.to_string()))?,
                ),
            };
            (inside, port)
        }
        None => match host_and_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_and_port, None),
        },
    };
    if host.is_empty() {
        return Err(AuthorityProblem::NoHost);
    }
    let is_name_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if !host_and_port.starts_with('[') && !host.bytes().all(is_name_byte) {
        return Err(AuthorityProblem::Host(host.to_string()));
    }
    let port = match port {
        None | Some("") => default_port,
        Some(text) => port_number(text).ok_or_else(|| AuthorityProblem::Port(text.to_string()))?,
    };
    Ok(HostPort { host, port })
}

/// 1 to 65535 written in at most five digits (a scan: this runs once per
/// delivery).
fn port_number(text: &str) -> Option<u16> {
    if text.len() > 5 {
        return None;
    }
    let mut n = 0u32;
    for b in text.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// `%XX` sequences decoded (userinfo is percent-encoded in a URL);
/// anything else, a `%` without two hex digits included, kept as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded_and_anything_else_kept() {
        assert_eq!(percent_decode("p%40ss%3Aw"), "p@ss:w");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn the_scheme_is_what_comes_before_the_first_colon_slash_slash() {
        assert_eq!(split_scheme("http://h/p"), Some(("http", "h/p")));
        assert_eq!(split_scheme("HTTPS://h"), Some(("HTTPS", "h")));
        assert_eq!(split_scheme("mailto:x@y"), None);
        assert_eq!(split_scheme("no scheme"), None);
        assert_eq!(split_scheme("http:/"), None);
        assert_eq!(split_scheme("http://"), Some(("http", "")));
    }

    #[test]
    fn host_and_port_with_the_default_port_of_the_scheme() {
        let at = |url| host_port(url).map(|hp| (hp.host, hp.port));
        assert_eq!(at("http://example.com/x"), Ok(("example.com", 80)));
        assert_eq!(at("HTTPS://example.com"), Ok(("example.com", 443)));
        assert_eq!(
            at("http://u:p%40@sample_domain.com:8080?q"),
            Ok(("sample_domain.com", 8080))
        );
        assert_eq!(at("http://127.0.0.1:65535/"), Ok(("127.0.0.1", 65535)));
        assert_eq!(at("http://[::1]:9/x"), Ok(("::1", 9)));
        assert_eq!(at("https://[2001:db8::1]/"), Ok(("2001:db8::1", 443)));
        assert_eq!(
            at("http://h:/"),
            Ok(("h", 80)),
            "an empty port is the default (RFC 3986)"
        );
    }

    #[test]
    fn a_port_out_of_range_is_refused_never_defaulted() {
        for (url, port) in [
            ("http://127.0.0.1:84313/x", "84313"),
            ("http://127.0.0.1:65536/", "65536"),
            ("http://h:80018777/", "80018777"),
            ("http://h:0/", "0"),
            ("http://h:8x/", "8x"),
            ("http://h:-1/", "-1"),
            ("http://[::1]:99999/", "99999"),
            ("http://h:1:2/", "1:2"),
        ] {
            assert_eq!(host_port(url), Err(AuthorityProblem::Port(port.into())), "{url}");
        }
    }

    #[test]
    fn zone_ids_empty_hosts_and_escaped_names_are_refused() {
        for url in ["http://[::1%25lo]:9/x", "http://[fe80::1%25lo]/", "http://[::1%lo]:9/x"] {
            assert!(matches!(host_port(url), Err(AuthorityProblem::ZoneId(_))), "{url}");
        }
        assert_eq!(host_port("http://:18778/x"), Err(AuthorityProblem::NoHost));
        assert_eq!(host_port("http://user@/x"), Err(AuthorityProblem::NoHost));
        assert_eq!(host_port("http:///x"), Err(AuthorityProblem::NoHost));
        for url in [
            "http://a%20b/",
            "http://a!b/",
            "http://[v1.x]/",
            "http://[::1/",
            "http://[::1]x/",
        ] {
            assert!(matches!(host_port(url), Err(AuthorityProblem::Host(_))), "{url}");
        }
        assert_eq!(host_port("ftp://h/"), Err(AuthorityProblem::Scheme));
        assert_eq!(host_port("h/x"), Err(AuthorityProblem::Scheme));
    }

    #[test]
    fn the_authority_ends_at_the_path_query_or_fragment() {
        assert_eq!(authority("u:p@h:81/p?q"), "u:p@h:81");
        assert_eq!(authority("h?q=/"), "h");
        assert_eq!(authority("h#f"), "h");
        assert_eq!(authority("h"), "h");
        assert_eq!(authority(""), "");
    }
}
