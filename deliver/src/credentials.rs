//! Credentials in a postback URL (`http://user:pass@host/...`): sent as
//! HTTP Basic authentication, as browsers and curl do, and never shown.
//!
//! The request goes to the URL without them, with `Authorization: Basic`;
//! everywhere the URL is shown (the delivery log, the dead letter's URL,
//! the dashboard's failures) it reads `user:***@host`. The queued job keeps
//! its URL template as the producer sent it: it is needed to replay a dead
//! letter, and lives only in Redis.

use base64::Engine as _;
use http::HeaderValue;

/// A filled-in URL, split from its credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitUrl {
    /// What to request: the URL without credentials.
    pub url: String,
    /// The URL with its password replaced by `***`, when it had
    /// credentials.
    redacted: Option<String>,
    /// `Basic <base64 of user:password>`, when the URL had credentials.
    pub authorization: Option<HeaderValue>,
}

impl SplitUrl {
    /// The URL as logs and dead letters show it.
    pub fn shown(&self) -> &str {
        self.redacted.as_deref().unwrap_or(&self.url)
    }
}

/// Splits the credentials off `url`. A URL without them costs one scan of
/// its authority and no allocation.
pub fn extract(url: String) -> SplitUrl {
    let Some((scheme_end, at)) = userinfo_span(&url) else {
        return SplitUrl {
            url,
            redacted: None,
            authorization: None,
        };
    };
    let userinfo = &url[scheme_end..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let plain = format!(
        "{}:{}",
        common::url_parts::percent_decode(user),
        common::url_parts::percent_decode(password)
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(plain.as_bytes());
    let authorization = HeaderValue::from_str(&format!("Basic {encoded}")).ok().map(|mut v| {
        v.set_sensitive(true);
        v
    });
    let without = format!("{}{}", &url[..scheme_end], &url[at + 1..]);
    // A user without a password is usually a token: none of it is shown.
    let shown_user = if userinfo.contains(':') { user } else { "" };
    let sep = if shown_user.is_empty() { "" } else { ":" };
    let redacted = format!("{}{shown_user}{sep}***@{}", &url[..scheme_end], &url[at + 1..]);
    SplitUrl {
        url: without,
        redacted: Some(redacted),
        authorization,
    }
}

/// Where the userinfo is: from after `scheme://` to its `@`.
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let (scheme, rest) = common::url_parts::split_scheme(url)?;
    let scheme_end = scheme.len() + 3;
    let at = common::url_parts::authority(rest).rfind('@')? + scheme_end;
    Some((scheme_end, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_basic_auth_and_are_never_shown() {
        let target = extract("https://shop:s%40cret@example.com:8443/p?u=a@b".to_string());
        assert_eq!(target.url, "https://example.com:8443/p?u=a@b");
        assert_eq!(target.shown(), "https://shop:***@example.com:8443/p?u=a@b");
        let auth = target.authorization.clone().unwrap();
        assert!(auth.is_sensitive());
        // "shop:s@cret"
        assert_eq!(auth.to_str().unwrap(), "Basic c2hvcDpzQGNyZXQ=");
        assert!(!target.shown().contains("cret"));
    }

    #[test]
    fn a_url_without_credentials_is_left_alone() {
        for url in ["http://h/p?email=a@b.c", "http://h:80", "http://h/#x@y"] {
            let target = extract(url.to_string());
            assert_eq!((target.url.as_str(), target.shown()), (url, url));
            assert!(target.authorization.is_none());
        }
        let token = extract("http://t0ken@h/".to_string());
        assert_eq!(token.url, "http://h/");
        assert_eq!(token.shown(), "http://***@h/", "a lone user is a token: not shown");
    }
}
