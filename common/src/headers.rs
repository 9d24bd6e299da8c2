//! Request headers a producer gives with an endpoint (`endpoint.headers`),
//! sent with every delivery of its jobs: an API token the receiver asks
//! for, say.
//!
//! The rules are checked twice with the same code: by ingest, which answers
//! 400 `invalid_header` naming the header, and when a job is read from the
//! queue, so a job pushed by hand cannot smuggle a line break into a
//! request. The headers that frame the request (`Host`, `Content-Length`,
//! `Transfer-Encoding`, `Connection` and the other hop-by-hop ones) and the
//! Standard Webhooks signature headers (`webhook-*`) belong to deliver and
//! are refused. `User-Agent` and `Content-Type` may be given and replace
//! deliver's own.
//!
//! Values may be secrets, so only names ever reach a log, a dead letter,
//! `/stats` or the dashboard ([`Headers::names`]); a dead letter's values
//! are kept apart from it, for its replay (see `queue::dead`).

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// At most this many headers per endpoint.
pub const MAX_HEADERS: usize = 16;
/// At most this many bytes of names and values together per endpoint: room
/// for a few tokens, and far below the 16–64 KiB of request head that
/// servers accept.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Names deliver sets itself or that frame the request (compared without
/// regard to case). Every name starting with `webhook-` is refused too.
///
/// The hop-by-hop ones are RFC 9110's: the fields §7.6.1 has an
/// intermediary remove (`Connection`, `Proxy-Connection`, `Keep-Alive`,
/// `TE`, `Transfer-Encoding`, `Upgrade`), the proxy credentials of §11.7
/// that apply to the next proxy only (`Proxy-Authorization`,
/// `Proxy-Authenticate`), and `Trailer` (§6.6.2, with RFC 2616's spelling
/// `Trailers`), which announces fields a request without a chunked body
/// cannot have.
const RESERVED: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "trailers",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// An endpoint's headers, in the order the producer gave them. Every
/// instance has passed [`Headers::new`]'s rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

/// Why a set of headers was refused; the message names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// More than [`MAX_HEADERS`] (how many there are).
    #[error("`endpoint.headers` has {0} headers; at most {MAX_HEADERS} are allowed")]
    TooMany(usize),
    /// Names and values over [`MAX_HEADER_BYTES`].
    #[error("`endpoint.headers` holds {0} bytes of names and values; at most {MAX_HEADER_BYTES} are allowed")]
    TooLarge(usize),
    /// Not an HTTP token (RFC 9110: letters, digits and ``!#$%&'*+-.^_`|~``).
    #[error("header name {0:?} is not valid: use letters, digits and - (an HTTP token)")]
    Name(String),
    /// A control character (CR, LF, NUL, ...) or a character outside ASCII.
    #[error("the value of header `{0}` holds a line break, a control character or a non-ASCII character; send printable ASCII")]
    Value(String),
    /// One deliver owns.
    #[error("header `{0}` is set by deliver or applies to one hop only, and cannot be given (nor Host, Content-Length, Transfer-Encoding, Connection, Proxy-*, webhook-*)")]
    Reserved(String),
    /// The same name twice, in any letter case.
    #[error("header `{0}` is given twice; give it once")]
    Duplicate(String),
    /// A value that is not a JSON string.
    #[error("the value of header `{0}` must be a string")]
    NotAString(String),
    /// Not a JSON object.
    #[error("`endpoint.headers` must be an object of header names to string values")]
    NotAnObject,
}

impl Headers {
    /// Headers from `(name, value)` pairs, if they keep every rule.
    pub fn new(pairs: Vec<(String, String)>) -> Result<Headers, HeaderProblem> {
        if pairs.len() > MAX_HEADERS {
            return Err(HeaderProblem::TooMany(pairs.len()));
        }
        let bytes: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
        if bytes > MAX_HEADER_BYTES {
            return Err(HeaderProblem::TooLarge(bytes));
        }
        for (i, (name, value)) in pairs.iter().enumerate() {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(HeaderProblem::Name(name.clone()));
            }
            if is_reserved(name) {
                return Err(HeaderProblem::Reserved(name.clone()));
            }
            if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                return Err(HeaderProblem::Value(name.clone()));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier.eq_ignore_ascii_case(name)) {
                return Err(HeaderProblem::Duplicate(name.clone()));
            }
        }
        Ok(Headers(pairs))
    }

    /// Headers from a JSON object of names to string values, as ingest
    /// reads `endpoint.headers`.
    pub fn parse(json: &str) -> Result<Headers, HeaderProblem> {
        if !json.trim_start().starts_with('{') {
            return Err(HeaderProblem::NotAnObject);
        }
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let pairs =
            serde::Deserializer::deserialize_map(&mut deserializer, Pairs).map_err(|_| HeaderProblem::NotAnObject)?;
        Headers::from_pairs(pairs)
    }

    fn from_pairs((pairs, count): (Vec<(String, serde_json::Value)>, usize)) -> Result<Headers, HeaderProblem> {
        if count > MAX_HEADERS {
            return Err(HeaderProblem::TooMany(count));
        }
        let pairs = pairs
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(value) => Ok((name, value)),
                _ => Err(HeaderProblem::NotAString(name)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Headers::new(pairs)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (the usual case).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(name, value)` pairs, in the producer's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The names alone: what may be shown.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Whether a header of this name is among them (any letter case).
    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The headers as a JSON object, names to values.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_reserved(name: &str) -> bool {
    let webhook = name.len() >= 8 && name[..8].eq_ignore_ascii_case("webhook-");
    webhook || RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// An object's entries in order, duplicates included (so that they can be
/// refused), with how many there are in all: past the limit the rest are
/// only counted, not kept, so that the refusal says how many there are
/// without a huge object being stored.
struct Pairs;

impl<'de> Visitor<'de> for Pairs {
    type Value = (Vec<(String, serde_json::Value)>, usize);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of header names to string values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<String, serde_json::Value>()? {
            pairs.push(pair);
            if pairs.len() == MAX_HEADERS {
                break;
            }
        }
        let mut count = pairs.len();
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {
            count += 1;
        }
        Ok((pairs, count))
    }
}

impl<'de> Deserialize<'de> for Headers {
    /// A JSON object of strings, in order, that keeps every rule.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Headers, D::Error> {
        let pairs = deserializer.deserialize_map(Pairs)?;
        Headers::from_pairs(pairs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn ordinary_headers_pass_in_order() {
        let headers = Headers::new(pairs(&[("X-Api-Token", "t0k3n"), ("Authorization", "Bearer a.b.c")])).unwrap();
        assert_eq!(headers.names(), ["X-Api-Token", "Authorization"]);
        assert_eq!(
            headers.to_json(),
            r#"{"X-Api-Token":"t0k3n","Authorization":"Bearer a.b.c"}"#
        );
        assert!(headers.contains("authorization"));
    }

    #[test]
    fn each_rule_refuses_with_its_problem() {
        let refused = |list: &[(&str, &str)]| Headers::new(pairs(list)).unwrap_err();
        assert_eq!(
            refused(&[("X-A", "a\r\nX-Evil: 1")]),
            HeaderProblem::Value("X-A".into())
        );
        assert_eq!(refused(&[("X-A", "a\nb")]), HeaderProblem::Value("X-A".into()));
        assert_eq!(refused(&[("X-A", "a\0b")]), HeaderProblem::Value("X-A".into()));
        assert_eq!(refused(&[("X-A", "é")]), HeaderProblem::Value("X-A".into()));
        assert_eq!(refused(&[("X A", "a")]), HeaderProblem::Name("X A".into()));
        assert_eq!(refused(&[("X-A\r\n", "a")]), HeaderProblem::Name("X-A\r\n".into()));
        assert_eq!(refused(&[("", "a")]), HeaderProblem::Name("".into()));
        assert_eq!(refused(&[("X:A", "a")]), HeaderProblem::Name("X:A".into()));
        for owned in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "CONNECTION",
            "Keep-Alive",
            "Upgrade",
            "TE",
            "Trailer",
            "Proxy-Connection",
            "Proxy-Authorization",
            "proxy-authenticate",
            "webhook-signature",
            "Webhook-Id",
        ] {
            assert_eq!(refused(&[(owned, "x")]), HeaderProblem::Reserved(owned.into()));
        }
        assert_eq!(
            refused(&[("X-A", "1"), ("x-a", "2")]),
            HeaderProblem::Duplicate("x-a".into())
        );
        let many: Vec<(String, String)> = (0..17).map(|i| (format!("X-{i}"), "v".into())).collect();
        assert_eq!(Headers::new(many).unwrap_err(), HeaderProblem::TooMany(17));
        let big = "v".repeat(MAX_HEADER_BYTES);
        assert_eq!(refused(&[("X-A", &big)]), HeaderProblem::TooLarge(MAX_HEADER_BYTES + 3));
    }

    #[test]
    fn tabs_and_the_deliver_defaults_may_be_given() {
        assert!(Headers::new(pairs(&[
            ("User-Agent", "mine\t1"),
            ("Content-Type", "application/json; charset=utf-8")
        ]))
        .is_ok());
    }

    #[test]
    fn reading_from_json_keeps_the_rules() {
        let read = |text: &str| serde_json::from_str::<Headers>(text);
        assert_eq!(read(r#"{"X-A":"1","X-B":"2"}"#).unwrap().names(), ["X-A", "X-B"]);
        assert!(read(r#"{"X-A":"a\r\nb"}"#).is_err());
        assert!(read(r#"{"X-A":1}"#).is_err());
        assert!(read(r#"["X-A"]"#).is_err());
        assert_eq!(
            Headers::parse(r#"{"X-A":"1","X-A":"2"}"#),
            Err(HeaderProblem::Duplicate("X-A".into()))
        );
        assert_eq!(
            Headers::parse(r#"{"X-A":1}"#),
            Err(HeaderProblem::NotAString("X-A".into()))
        );
        assert_eq!(Headers::parse(r#"["X-A"]"#), Err(HeaderProblem::NotAnObject));
        assert_eq!(Headers::parse("{}"), Ok(Headers::default()));
        let many: Vec<String> = (0..40).map(|i| format!(r#""X-{i}":"v""#)).collect();
        assert_eq!(
            Headers::parse(&format!("{{{}}}", many.join(","))),
            Err(HeaderProblem::TooMany(40)),
            "the refusal says how many there are"
        );
        let hundred: Vec<String> = (0..100).map(|i| format!(r#""X-{i}":"v""#)).collect();
        let problem = Headers::parse(&format!("{{{}}}", hundred.join(","))).unwrap_err();
        assert_eq!(problem, HeaderProblem::TooMany(100));
        assert!(problem.to_string().contains("has 100 headers"), "{problem}");
        let seventeen: Vec<String> = (0..17).map(|i| format!(r#""X-{i}":"v""#)).collect();
        assert_eq!(
            Headers::parse(&format!("{{{}}}", seventeen.join(","))),
            Err(HeaderProblem::TooMany(17))
        );
    }
}
