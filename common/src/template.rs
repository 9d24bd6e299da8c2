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
//! - strings render as their text, numbers and booleans as their JSON text,
//!   objects and arrays as their compact JSON text; a missing key or a
//!   `null` value renders the caller's default (itself encoded).
//!
//! Rendering writes into a caller-owned `String` and allocates nothing else,
//! because it runs once per delivery.

use serde_json::{Map, Value};
use std::fmt::Write as _;

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
    match uri.host() {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(TemplateError::NoHost),
    }
}

/// Fills `template` with `data` into `out` (which is cleared first).
///
/// `default` stands in for a missing key or a `null` value.
pub fn render_into(out: &mut String, template: &str, data: &Map<String, Value>, default: &str) {
    out.clear();
    for segment in segments(template) {
        match segment {
            Segment::Literal(text) => out.push_str(text),
            Segment::Key(key) => match data.get(key) {
                None | Some(Value::Null) => encode_str(out, default),
                Some(Value::String(s)) => encode_str(out, s),
                Some(Value::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
                // A JSON number's text is only digits, signs, `.`, `e` and
                // `E`, none of which need encoding except `+`.
                Some(Value::Number(n)) => {
                    let _ = write!(PercentEncoder(out), "{n}");
                }
                Some(nested) => {
                    let _ = serde_json::to_writer(PercentEncoder(out), nested);
                }
            },
        }
    }
}

/// Convenience wrapper around [`render_into`] that returns a new `String`.
pub fn render(template: &str, data: &Map<String, Value>, default: &str) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    render_into(&mut out, template, data, default);
    out
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

/// Percent-encodes whatever is written through it, so numbers and nested
/// JSON can be formatted straight into the URL without a temporary string.
struct PercentEncoder<'a>(&'a mut String);

impl std::fmt::Write for PercentEncoder<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        encode_str(self.0, s);
        Ok(())
    }
}

impl std::io::Write for PercentEncoder<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        encode_bytes(self.0, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            _ => panic!("test data must be an object"),
        }
    }

    fn r(template: &str, v: Value) -> String {
        render(template, &data(v), "")
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
            render("http://h/?b={b}", &data(json!({})), "n/a"),
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
}
