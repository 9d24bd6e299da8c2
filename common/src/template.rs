//! URL templates: `http://host/path?a={key}&b={other}`.
//!
//! Ingest only checks a template ([`check`]); deliver fills it for each job
//! ([`render_into`]). Both walk the template with the same scanner
//! ([`segments`]) so they can never disagree on what a placeholder is.
//!
//! Rules, chosen to match what producers of the old PHP endpoint relied on:
//! - a placeholder is `{` + one or more characters other than `{` and `}` +
//!   `}`; any other brace (`{}`, a lone `{` or `}`) is literal text;
//! - a value is percent-encoded per RFC 3986: every byte of its UTF-8 form
//!   except `A-Z a-z 0-9 - . _ ~` becomes `%XX`;
//! - strings render as their text; numbers, booleans, objects and arrays as
//!   the producer's JSON text, exactly as written (`1.50e3`, a 30-digit
//!   integer, `-0.0`), objects and arrays without the whitespace between
//!   their tokens, at any depth; a missing key or a `null` value renders
//!   the caller's default (itself encoded).
//!
//! Values come from [`Fields`], the top-level fields of a job's data object
//! borrowed from its JSON text. Rendering writes into a caller-owned
//! `String`; for string, number and boolean values it allocates nothing
//! else, because it runs once per delivery.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// One piece of a URL template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text copied to the URL as it is.
    Literal(&'a str),
    /// The name between the braces of a `{key}` placeholder.
    Key(&'a str),
}

/// Iterator over the [`Segment`]s of a template, in order.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a str,
}

/// Splits `template` into literal text and `{key}` placeholders.
pub fn segments(template: &str) -> Segments<'_> {
    Segments { rest: template }
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        let rest = self.rest;
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut search_from = 0;
        loop {
            // Braces are ASCII, so byte offsets always fall on char boundaries.
            let Some(open) = rest[search_from..].find('{').map(|i| i + search_from) else {
                self.rest = "";
                return Some(Segment::Literal(rest));
            };
            let after = &rest[open + 1..];
            match after.find(['{', '}']) {
                Some(close) if bytes[open + 1 + close] == b'}' && close > 0 => {
                    if open > 0 {
                        // Emit the text before the placeholder first.
                        self.rest = &rest[open..];
                        return Some(Segment::Literal(&rest[..open]));
                    }
                    self.rest = &after[close + 1..];
                    return Some(Segment::Key(&after[..close]));
                }
                // `{}` or `{a{`: this brace is literal; look again after it.
                _ => search_from = open + 1,
            }
        }
    }
}

/// Why ingest refuses a URL template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The template, with placeholders filled, does not parse as a URI.
    #[error("`url` is not a valid URL: {0}")]
    Invalid(String),
    /// The scheme is neither `http` nor `https`.
    #[error("`url` must start with http:// or https://")]
    Scheme,
    /// There is no host after the scheme.
    #[error("`url` has no host")]
    NoHost,
    /// The host or port names no place to send to (a port out of range,
    /// an IPv6 zone id, a host that is no name or address).
    #[error("`url` cannot be sent to: {0}")]
    Authority(crate::url_parts::AuthorityProblem),
}

/// Checks that `template` is an absolute http(s) URL with a host once its
/// placeholders are filled, so that deliver can always build a request.
///
/// Placeholders are filled with a plain letter for the check, because a
/// placeholder may stand for a host label or a path segment.
pub fn check(template: &str) -> Result<(), TemplateError> {
    let mut probe = String::with_capacity(template.len());
    for segment in segments(template) {
        match segment {
            Segment::Literal(text) => probe.push_str(text),
            Segment::Key(_) => probe.push('x'),
        }
    }
    let uri: http::Uri = probe
        .parse()
        .map_err(|e: http::uri::InvalidUri| TemplateError::Invalid(e.to_string()))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(TemplateError::Scheme),
    }
    // The rule deliver applies to the filled-in URL, so that what ingest
    // accepts has somewhere to go (a placeholder in the host is checked
    // as the letter it was filled with here, and again by deliver).
    match crate::url_parts::host_port(&probe) {
        Ok(_) => Ok(()),
        Err(crate::url_parts::AuthorityProblem::NoHost) => Err(TemplateError::NoHost),
        Err(problem) => Err(TemplateError::Authority(problem)),
    }
}

/// The top-level fields of a data object, borrowed from its JSON text:
/// what placeholders are filled from.
///
/// Deliver reads them once per delivery, so they cost one small vector and
/// no string copies (but for a key written with escapes); a
/// `serde_json::Map` cost a tree node and a string or two per field. Each
/// value stays raw JSON until a placeholder asks for it.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    /// In the object's order; sorted by key (stably) when there are more
    /// than [`Fields::SCANNED`].
    entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Fields<'a> {
    /// Up to this many fields a lookup scans them all; past it they are
    /// sorted once and looked up by binary search, so that a producer's
    /// object of thousands of keys cannot make each placeholder cost a
    /// scan of all of them. Sorting allocates, so the usual object of a
    /// few dozen fields is scanned.
    const SCANNED: usize = 64;

    /// The fields of `data`, which must be a JSON object.
    pub fn parse(data: &'a RawValue) -> Result<Fields<'a>, serde_json::Error> {
        let mut fields: Fields<'a> = serde_json::from_str(data.get())?;
        if fields.entries.len() > Self::SCANNED {
            // Stable: of a repeated key, the last one stays last.
            fields.entries.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(fields)
    }

    /// The raw JSON value of `key`; the last one if the object repeats the
    /// key, as JSON parsers keep.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        if self.entries.len() > Self::SCANNED {
            let after = self.entries.partition_point(|(k, _)| k.as_ref() <= key);
            return after
                .checked_sub(1)
                .map(|last| &self.entries[last])
                .filter(|(k, _)| k == key)
                .map(|(_, v)| *v);
        }
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'de>, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(key)) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Fields { entries })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// An object key, borrowed from the JSON text unless it has escapes
/// (`#[serde(borrow)]`: a plain `Cow` field would always be copied).
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

/// Fills `template` with `fields` into `out` (which is cleared first).
///
/// `default` stands in for a missing key or a `null` value.
pub fn render_into(out: &mut String, template: &str, fields: &Fields<'_>, default: &str) {
    out.clear();
    for segment in segments(template) {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Key(key) => match fields.get(key) {
                None => encode_str(out, default),
                Some(value) => push_value(out, value, default),
            },
        }
    }
}

/// Convenience wrapper around [`render_into`] that returns a new `String`.
pub fn render(template: &str, fields: &Fields<'_>, default: &str) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    render_into(&mut out, template, fields, default);
    out
}

/// Percent-encodes one raw JSON value, by the rules at the top. The value
/// is valid JSON (serde_json checked it when it was read), so its first
/// byte tells its type.
fn push_value(out: &mut String, value: &RawValue, default: &str) {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let inner = &text[1..text.len() - 1];
            if !inner.contains('\\') {
                // Without escapes the JSON text is the string itself.
                encode_str(out, inner);
            } else if let Ok(unescaped) = serde_json::from_str::<String>(text) {
                encode_str(out, &unescaped);
            } else {
                // Only a lone surrogate escape fails here (serde_json
                // checked the rest), which ingest refuses since it can't be
                // text; a job queued before that renders it as U+FFFD, as a
                // lossy decoder would, rather than as nothing.
                let mut mended = text.to_string();
                while let Some(at) = lone_surrogate_at(&mended) {
                    mended.replace_range(at..at + 6, "\\uFFFD");
                }
                if let Ok(unescaped) = serde_json::from_str::<String>(&mended) {
                    encode_str(out, &unescaped);
                }
            }
        }
        Some(b'n') => encode_str(out, default),
        Some(b't') => out.push_str("true"),
        Some(b'f') => out.push_str("false"),
        // Objects and arrays: the producer's text without its whitespace.
        // Not through `serde_json::Value`, which would reformat numbers
        // (`1.50e3` as `1500.0`), sort keys and stop at its depth limit.
        Some(b'{' | b'[') => push_compact(out, text),
        // A number as written: digits, signs, `.`, `e` and `E`.
        _ => encode_str(out, text),
    }
}

/// The byte offset of the first `\uXXXX` escape in JSON `text` that is a
/// lone UTF-16 surrogate (a high one not followed by a low one, or a low
/// one alone): JSON's grammar allows it, but it stands for no character,
/// so no string can hold it. Escaped backslashes are skipped, so `\\u`
/// is no escape.
pub fn lone_surrogate_at(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        if bytes.get(at..at + 2)? != b"\\u" {
            return None;
        }
        u16::from_str_radix(text.get(at + 2..at + 6)?, 16).ok()
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => return Some(i),
            Some(_) => i += 6,
            None => i += 2,
        }
    }
    None
}

/// Percent-encodes JSON `text` without the whitespace between its tokens
/// (whitespace inside strings stays).
fn push_compact(out: &mut String, text: &str) {
    let bytes = text.as_bytes();
    let (mut start, mut in_string, mut escaped) = (0, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            encode_bytes(out, &bytes[start..i]);
            start = i + 1;
        }
    }
    encode_bytes(out, &bytes[start..]);
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn encode_bytes(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xF) as usize] as char);
        }
    }
}

fn encode_str(out: &mut String, s: &str) {
    encode_bytes(out, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use serde_json::Value;

    fn raw(v: Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    fn r(template: &str, v: Value) -> String {
        render(template, &Fields::parse(&raw(v)).unwrap(), "")
    }

    #[test]
    fn renders_the_readme_sample_exactly() {
        let url = r(
            "http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}",
            json!({"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}),
        );
        assert_eq!(
            url,
            "http://sample_domain_endpoint.com/data?title=Gopher&image=https%3A%2F%2Fblog.golang.org%2Fgopher%2Fgopher.png&foo="
        );
    }

    #[test]
    fn encodes_reserved_and_special_characters() {
        assert_eq!(
            r("http://h/?v={v}", json!({"v": "a b&c=d?e#f/g+h%i"})),
            "http://h/?v=a%20b%26c%3Dd%3Fe%23f%2Fg%2Bh%25i"
        );
        assert_eq!(
            r("http://h/?v={v}", json!({"v": "-._~AZaz09"})),
            "http://h/?v=-._~AZaz09"
        );
    }

    #[test]
    fn encodes_unicode_as_utf8_bytes() {
        assert_eq!(r("http://h/?v={v}", json!({"v": "é☃"})), "http://h/?v=%C3%A9%E2%98%83");
        assert_eq!(r("http://h/?v={v}", json!({"v": "😀"})), "http://h/?v=%F0%9F%98%80");
    }

    #[test]
    fn empty_missing_and_null_values() {
        assert_eq!(
            r("http://h/?a={a}&b={b}&c={c}", json!({"a": "", "c": null})),
            "http://h/?a=&b=&c="
        );
        assert_eq!(
            render("http://h/?b={b}", &Fields::default(), "n/a"),
            "http://h/?b=n%2Fa",
            "the default is encoded like any value"
        );
    }

    #[test]
    fn key_used_twice_and_adjacent_placeholders() {
        assert_eq!(r("http://h/{a}/{a}", json!({"a": "x y"})), "http://h/x%20y/x%20y");
        assert_eq!(
            r("http://h/?v={a}{b}{a}", json!({"a": "1", "b": "2"})),
            "http://h/?v=121"
        );
    }

    #[test]
    fn non_ascii_keys() {
        assert_eq!(
            r("http://h/?v={ключ}&w={日本}", json!({"ключ": "v", "日本": "w"})),
            "http://h/?v=v&w=w"
        );
    }

    #[test]
    fn stray_braces_are_left_alone() {
        let d = json!({"a": "1"});
        assert_eq!(r("http://h/{}", d.clone()), "http://h/{}");
        assert_eq!(r("http://h/{", d.clone()), "http://h/{");
        assert_eq!(r("http://h/}", d.clone()), "http://h/}");
        assert_eq!(r("http://h/{{a}", d.clone()), "http://h/{1");
        assert_eq!(r("http://h/{a}}", d.clone()), "http://h/1}");
        assert_eq!(r("http://h/{x{a}", d.clone()), "http://h/{x1");
        assert_eq!(r("http://h/}{a}{", d), "http://h/}1{");
    }

    #[test]
    fn numbers_booleans_and_nested_values_render_as_json() {
        assert_eq!(
            r(
                "http://h/?i={i}&f={f}&n={n}&t={t}&e={e}",
                json!({"i": 42, "f": 1.5, "n": -3, "t": true, "e": 1e30})
            ),
            "http://h/?i=42&f=1.5&n=-3&t=true&e=1e%2B30"
        );
        assert_eq!(
            r("http://h/?o={o}&a={a}", json!({"o": {"k": "v w"}, "a": [1, "x"]})),
            "http://h/?o=%7B%22k%22%3A%22v%20w%22%7D&a=%5B1%2C%22x%22%5D"
        );
    }

    #[test]
    fn values_render_exactly_as_the_producer_wrote_them() {
        let text = r#"{"f": 1.50e3, "big": 12345678901234567890123, "z": -0.0, "huge": 1e400,
            "deep": [[[[{"a" : [1.0, "x y"]}]]]], "s": " keep  spaces "}"#;
        let data = RawValue::from_string(text.into()).unwrap();
        let fields = Fields::parse(&data).unwrap();
        assert_eq!(
            render("{f}|{big}|{z}|{huge}", &fields, ""),
            "1.50e3|12345678901234567890123|-0.0|1e400"
        );
        assert_eq!(
            render("{deep}", &fields, ""),
            "%5B%5B%5B%5B%7B%22a%22%3A%5B1.0%2C%22x%20y%22%5D%7D%5D%5D%5D%5D"
        );
        assert_eq!(render("{s}", &fields, ""), "%20keep%20%20spaces%20");
        // As deep as JSON is read at all (ingest refuses deeper bodies).
        let deep = format!("{{\"d\":{}1{}}}", "[".repeat(120), "]".repeat(120));
        let data = RawValue::from_string(deep).unwrap();
        let out = render("{d}", &Fields::parse(&data).unwrap(), "");
        assert_eq!(out, format!("{}1{}", "%5B".repeat(120), "%5D".repeat(120)));
    }

    #[test]
    fn fields_read_from_the_producers_text_as_written() {
        // Spacing, escapes in keys and values, a repeated key: as serde_json
        // reads them (the last of a repeated key wins).
        let text = "{ \"a\" : \"x\\\"y\\u00e9\" ,\n \"k\\u0065y\": [ 1 , {\"z\": 2, \"b\": 1} ],\n \"a\": \"last\", \"n\": 1E3, \"b\": false }";
        let data = RawValue::from_string(text.into()).unwrap();
        let fields = Fields::parse(&data).unwrap();
        assert_eq!(
            render("http://h/?a={a}&k={key}&n={n}&b={b}", &fields, ""),
            "http://h/?a=last&k=%5B1%2C%7B%22z%22%3A2%2C%22b%22%3A1%7D%5D&n=1E3&b=false"
        );
        let first = RawValue::from_string(r#"{"q": "x\"y\u00e9 \/"}"#.into()).unwrap();
        assert_eq!(
            render("http://h/?q={q}", &Fields::parse(&first).unwrap(), ""),
            "http://h/?q=x%22y%C3%A9%20%2F"
        );
        let mut out = String::new();
        let map = RawValue::from_string(r#"{"q": 1}"#.into()).unwrap();
        render_into(&mut out, "{q}", &Fields::parse(&map).unwrap(), "");
        assert_eq!(out, "1");
        for not_an_object in ["[1]", "\"s\"", "3", "null"] {
            let value = RawValue::from_string(not_an_object.into()).unwrap();
            assert!(Fields::parse(&value).is_err(), "{not_an_object}");
        }
    }

    #[test]
    fn many_fields_are_found_as_few_are() {
        // Past the scanned few (81 fields here), lookups go by binary
        // search over sorted keys; the answers must not change, repeated
        // keys included.
        let mut text = String::from("{");
        for i in (0..40).rev() {
            text.push_str(&format!("\"k{i}\":\"v{i}\",\"dup\":{i},"));
        }
        text.push_str("\"z\":null}");
        let data = RawValue::from_string(text).unwrap();
        let fields = Fields::parse(&data).unwrap();
        for i in 0..40 {
            assert_eq!(
                fields.get(&format!("k{i}")).map(RawValue::get),
                Some(format!("\"v{i}\"").as_str())
            );
        }
        assert_eq!(
            fields.get("dup").map(RawValue::get),
            Some("0"),
            "the last of a repeated key"
        );
        assert_eq!(fields.get("z").map(RawValue::get), Some("null"));
        assert!(fields.get("k40").is_none() && fields.get("").is_none() && fields.get("zz").is_none());
        assert_eq!(render("http://h/{k7}/{z}/{nope}", &fields, "d"), "http://h/v7/d/d");
    }

    #[test]
    fn segments_split_literals_and_keys() {
        let parts: Vec<_> = segments("a{b}c{}{d}").collect();
        assert_eq!(
            parts,
            vec![
                Segment::Literal("a"),
                Segment::Key("b"),
                Segment::Literal("c{}"),
                Segment::Key("d"),
            ]
        );
    }

    #[test]
    fn check_accepts_http_and_https_urls_with_placeholders() {
        assert_eq!(check("http://sample_domain_endpoint.com/data?title={mascot}"), Ok(()));
        assert_eq!(check("https://{sub}.example.com/{path}"), Ok(()));
        assert_eq!(check("http://127.0.0.1:8080/x"), Ok(()));
    }

    #[test]
    fn check_rejects_relative_foreign_and_hostless_urls() {
        assert_eq!(check("ftp://example.com/"), Err(TemplateError::Scheme));
        assert_eq!(check("/relative/path"), Err(TemplateError::Scheme));
        assert!(matches!(check("not a url"), Err(TemplateError::Invalid(_))));
        assert!(check("http://").is_err());
        assert!(check("").is_err());
    }

    #[test]
    fn lone_surrogates_are_found_and_pairs_and_escaped_backslashes_are_not() {
        assert_eq!(lone_surrogate_at(r#""\ud800""#), Some(1));
        assert_eq!(lone_surrogate_at(r#"{"a":"x\uDC00"}"#), Some(7));
        assert_eq!(
            lone_surrogate_at(r#""\ud800\u0041""#),
            Some(1),
            "a high one before a non-low one"
        );
        assert_eq!(
            lone_surrogate_at(r#""\ud83d\ude00 ok""#),
            None,
            "a pair is one character"
        );
        assert_eq!(
            lone_surrogate_at(r#""\\ud800""#),
            None,
            "an escaped backslash, then text"
        );
        assert_eq!(lone_surrogate_at(r#""\u00e9\n\"""#), None);
        assert_eq!(lone_surrogate_at(r#""\ud83d\ude00\udc00""#), Some(13));
    }

    #[test]
    fn a_lone_surrogate_renders_as_the_replacement_character_not_as_nothing() {
        let data = RawValue::from_string(r#"{"a":"x\ud800y"}"#.to_string()).unwrap();
        let url = render("http://h/?v={a}", &Fields::parse(&data).unwrap(), "");
        assert_eq!(url, "http://h/?v=x%EF%BF%BDy");
    }

    #[test]
    fn check_refuses_what_deliver_could_only_send_elsewhere_or_nowhere() {
        use crate::url_parts::AuthorityProblem;
        for url in ["http://127.0.0.1:84313/x", "http://h:65536/", "http://h:80018777/{k}"] {
            assert!(
                matches!(check(url), Err(TemplateError::Authority(AuthorityProblem::Port(_)))),
                "{url}"
            );
        }
        for url in ["http://[::1%25lo]:9/x", "http://[fe80::1%25lo]/", "http://[::1%lo]:9/x"] {
            assert!(
                matches!(check(url), Err(TemplateError::Authority(AuthorityProblem::ZoneId(_)))),
                "{url}: {:?}",
                check(url)
            );
        }
        assert_eq!(check("http://{h}:18778/x"), Ok(()), "the placeholder may fill the host");
    }
}
