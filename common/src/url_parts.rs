//! A URL's scheme and authority, found by byte scans, and its percent escapes.
//!
//! Both services look at parts of every job's URL (ingest at a literal
//! host, deliver at the scheme, the host it limits and any credentials),
//! once or more per request and per delivery, so these stay plain scans
//! rather than a parse. Judging the whole URL is left to the HTTP client
//! that sends it.

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
    fn the_authority_ends_at_the_path_query_or_fragment() {
        assert_eq!(authority("u:p@h:81/p?q"), "u:p@h:81");
        assert_eq!(authority("h?q=/"), "h");
        assert_eq!(authority("h#f"), "h");
        assert_eq!(authority("h"), "h");
        assert_eq!(authority(""), "");
    }
}
