//! Parsing and validating a postback request, and turning it into jobs.
//!
//! The body is read as raw JSON whatever the Content-Type (the old PHP
//! endpoint did the same, and `curl -d` sends form-urlencoded). Data items
//! are kept as the raw JSON text the producer sent and copied into each job
//! unparsed, so a large request costs one parse and no re-serialisation.

use crate::error::ApiError;
use common::destination::DestinationPolicy;
use common::headers::Headers;
use common::job::{Job, JobEncoder, Method};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// One worker thread's check of endpoint URLs: the template rules and the
/// destination guard's view of a literal address. A producer sends the
/// same endpoint request after request, and checking a URL costs more than
/// the rest of a small request's parse, so the last URL that passed is
/// kept: the same URL again passes at the price of a comparison. (The
/// destination policy is fixed for the life of the process.)
#[derive(Debug)]
pub struct UrlCheck {
    destinations: Arc<DestinationPolicy>,
    last_good: RefCell<String>,
}

impl UrlCheck {
    /// A check against `destinations`, remembering nothing yet.
    pub fn new(destinations: Arc<DestinationPolicy>) -> Self {
        UrlCheck {
            destinations,
            last_good: RefCell::new(String::new()),
        }
    }

    fn check(&self, url: &str) -> Result<(), ApiError> {
        if *self.last_good.borrow() == url {
            return Ok(());
        }
        common::template::check(url).map_err(|e| {
            ApiError::invalid(
                "invalid_url",
                format!("{e}; expected an absolute http(s) URL such as http://host/path?x={{key}}")
                    .replace("`url`", "`endpoint.url`"),
            )
        })?;
        if let Some(addr) = literal_destination(url) {
            if self.destinations.check(addr).is_err() {
                return Err(ApiError::invalid(
                    "blocked_destination",
                    format!(
                        "`endpoint.url` points at {addr}, which is not a public address (or is denied); \
                         postbacks are not sent there unless POSTBACK_ALLOW_DESTINATIONS opens it"
                    ),
                ));
            }
        }
        let mut last = self.last_good.borrow_mut();
        last.clear();
        last.push_str(url);
        Ok(())
    }
}

/// The body's fields; any other is refused (`unknown_field`), so a typo
/// such as `metod` is not silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(borrow, default)]
    endpoint: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Endpoint<'a> {
    #[serde(default)]
    method: Option<Value>,
    #[serde(default)]
    url: Option<Value>,
    #[serde(borrow, default)]
    headers: Option<&'a RawValue>,
}

/// A validated request, ready to be queued.
#[derive(Debug)]
pub struct Accepted {
    /// One id per data item, in order.
    pub ids: Vec<String>,
    /// One encoded job per data item, in the same order.
    pub jobs: Vec<String>,
}

/// Validates `body` and builds its jobs. `max_items` bounds `data`.
pub fn parse(
    body: &[u8],
    max_items: usize,
    request_id: Option<&str>,
    producer: Option<&str>,
    urls: &UrlCheck,
) -> Result<Accepted, ApiError> {
    let not_an_object = || {
        ApiError::invalid(
            "not_an_object",
            "the body must be a JSON object with `endpoint` and `data`",
        )
    };
    let parsed: Body = serde_json::from_slice(body).map_err(|e| match field_problem(&e, "") {
        Some(problem) => problem,
        None if e.is_data() => not_an_object(),
        None => ApiError::invalid("invalid_json", format!("the body is not valid JSON: {e}")),
    })?;
    // serde also builds a struct from a JSON array; only an object will do.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(not_an_object());
    }

    let endpoint = parsed.endpoint.ok_or_else(|| {
        ApiError::invalid(
            "missing_endpoint",
            "`endpoint` is missing; send {\"method\": ..., \"url\": ...}",
        )
    })?;
    let invalid_endpoint = || {
        ApiError::invalid(
            "invalid_endpoint",
            "`endpoint` must be an object with `method` and `url`",
        )
    };
    if !endpoint.get().starts_with('{') {
        return Err(invalid_endpoint());
    }
    let endpoint: Endpoint = serde_json::from_str(endpoint.get())
        .map_err(|e| field_problem(&e, "endpoint.").unwrap_or_else(invalid_endpoint))?;
    let method = match &endpoint.method {
        Some(Value::String(m)) => m.parse::<Method>().map_err(|_| {
            ApiError::invalid(
                "invalid_method",
                format!("`endpoint.method` is {m:?}; use GET, POST, PUT, PATCH or DELETE"),
            )
        })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_method",
                "`endpoint.method` must be a string",
            ))
        }
        None => return Err(ApiError::invalid("invalid_method", "`endpoint.method` is missing")),
    };
    let url = match &endpoint.url {
        Some(Value::String(u)) => u.as_str(),
        Some(_) => return Err(ApiError::invalid("invalid_url", "`endpoint.url` must be a string")),
        None => return Err(ApiError::invalid("invalid_url", "`endpoint.url` is missing")),
    };
    urls.check(url)?;
    let headers = match endpoint.headers {
        None => Headers::default(),
        Some(raw) => {
            let headers = Headers::parse(raw.get()).map_err(|e| ApiError::invalid("invalid_header", e.to_string()))?;
            let (_, rest) = common::url_parts::split_scheme(url).unwrap_or_default();
            if headers.contains("authorization") && common::url_parts::authority(rest).contains('@') {
                return Err(ApiError::invalid(
                    "invalid_header",
                    "`endpoint.headers` has an Authorization header and `endpoint.url` has credentials \
                     (user:password@); give them once",
                ));
            }
            headers
        }
    };

    let data = parsed
        .data
        .ok_or_else(|| ApiError::invalid("missing_data", "`data` is missing; send an array of objects"))?;
    let items: Vec<&RawValue> = serde_json::from_str(data.get())
        .map_err(|_| ApiError::invalid("invalid_data", "`data` must be an array of objects"))?;
    if items.is_empty() {
        return Err(ApiError::invalid(
            "empty_data",
            "`data` is empty; send at least one object",
        ));
    }
    if items.len() > max_items {
        return Err(ApiError::TooManyItems {
            count: items.len(),
            limit: max_items,
        });
    }
    if let Some((index, item)) = items.iter().enumerate().find(|(_, item)| !item.get().starts_with('{')) {
        return Err(ApiError::invalid(
            "invalid_item",
            format!("`data[{index}]` must be a JSON object, found {}", json_kind(item.get())),
        ));
    }
    for (index, item) in items.iter().enumerate() {
        if let Some(key) = crate::repeated_key::repeated_key(item.get()) {
            return Err(ApiError::invalid(
                "duplicate_key",
                format!("`data[{index}].{key}` is given twice; give it once"),
            ));
        }
        // JSON lets a string escape half a UTF-16 pair; no text holds one,
        // so it could only be delivered mangled. (Most items have no
        // escape at all: one memchr for them.)
        let text = item.get();
        if let Some(at) = text
            .as_bytes()
            .contains(&b'\\')
            .then(|| common::template::lone_surrogate_at(text))
            .flatten()
        {
            return Err(ApiError::invalid(
                "invalid_item",
                format!(
                    "`data[{index}]` holds {}, half of a UTF-16 surrogate pair, which is no character; \
                     send the character itself (UTF-8) or its whole pair",
                    &text[at..at + 6]
                ),
            ));
        }
    }

    let encoder = JobEncoder::new(method, url, &headers, common::now_ms(), request_id, producer);
    let mut ids = Vec::with_capacity(items.len());
    let mut jobs = Vec::with_capacity(items.len());
    for item in items {
        let id = Job::new_id();
        jobs.push(encoder.encode(&id, item));
        ids.push(id);
    }
    Ok(Accepted { ids, jobs })
}

/// The address of a URL whose host is an IP address written out (in any
/// form a resolver reads as one: `127.1`, `2130706433`, `[::ffff:7f00:1]`)
/// with no placeholder in it. Hosts that are names, or that a placeholder
/// fills in, are checked by deliver when it connects.
fn literal_destination(url: &str) -> Option<SocketAddr> {
    let (_, rest) = common::url_parts::split_scheme(url)?;
    if common::url_parts::authority(rest).contains('{') {
        return None;
    }
    // The template check has passed: the port is one deliver would use.
    let target = common::url_parts::host_port(url).ok()?;
    let ip = match target.host.parse::<Ipv6Addr>() {
        Ok(v6) => IpAddr::V6(v6),
        Err(_) => IpAddr::V4(common::destination::parse_ipv4_loose(target.host)?),
    };
    Some(SocketAddr::new(ip, target.port))
}

/// A field that is not one of the struct's, or one that comes twice, as the
/// 400 that names it (`at` is its path's prefix, e.g. `endpoint.`).
fn field_problem(error: &serde_json::Error, at: &str) -> Option<ApiError> {
    let text = error.to_string();
    let name = |prefix: &str| {
        let rest = text.strip_prefix(prefix)?;
        Some(rest.split('`').next().unwrap_or(rest).to_string())
    };
    if let Some(field) = name("unknown field `") {
        let known = if at.is_empty() {
            "`endpoint` and `data`"
        } else {
            "`method`, `url` and `headers`"
        };
        return Some(ApiError::invalid(
            "unknown_field",
            format!("`{at}{field}` is not a field of the request; the fields are {known}"),
        ));
    }
    name("duplicate field `")
        .map(|field| ApiError::invalid("duplicate_key", format!("`{at}{field}` is given twice; give it once")))
}

fn json_kind(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"endpoint":{"method":"get","url":"http://sample_domain_endpoint.com/data?title={mascot}&image={location}&foo={bar}"},"data":[{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}]}"#;

    fn code(body: &str) -> &'static str {
        parse(body.as_bytes(), 10, None, None, &UrlCheck::new(Default::default()))
            .unwrap_err()
            .code()
    }

    #[test]
    fn unknown_and_repeated_fields_are_refused_by_name() {
        let urls = UrlCheck::new(Default::default());
        let refused = |body: &str| parse(body.as_bytes(), 10, None, None, &urls).unwrap_err();
        let typo = refused(r#"{"endpoint":{"metod":"GET","url":"http://h/"},"data":[{}]}"#);
        assert_eq!(typo.code(), "unknown_field");
        assert!(typo.to_string().contains("`endpoint.metod`"), "{typo}");
        let extra = refused(r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{}],"extra":1}"#);
        assert_eq!(extra.code(), "unknown_field");
        assert!(extra.to_string().contains("`extra`"), "{extra}");
        let twice = refused(r#"{"endpoint":{"method":"GET","method":"POST","url":"http://h/"},"data":[{}]}"#);
        assert_eq!(twice.code(), "duplicate_key");
        assert!(twice.to_string().contains("`endpoint.method`"), "{twice}");
        let data_twice = refused(r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{}],"data":[{}]}"#);
        assert_eq!(data_twice.code(), "duplicate_key");
        assert!(data_twice.to_string().contains("`data`"), "{data_twice}");
        let key_twice = refused(r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{"a":1},{"a":1,"a":2}]}"#);
        assert_eq!(key_twice.code(), "duplicate_key");
        assert!(key_twice.to_string().contains("`data[1].a`"), "{key_twice}");
    }

    #[test]
    fn the_sample_becomes_one_job_with_the_method_upper_cased() {
        let accepted = parse(
            SAMPLE.as_bytes(),
            10,
            Some("req-1"),
            Some("0123456789ab"),
            &UrlCheck::new(Default::default()),
        )
        .unwrap();
        assert_eq!(accepted.ids.len(), 1);
        let job = Job::decode(accepted.jobs[0].as_bytes()).unwrap();
        assert_eq!(job.id, accepted.ids[0]);
        assert_eq!(job.method, Method::Get);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.request_id.as_deref(), Some("req-1"));
        assert_eq!(job.producer.as_deref(), Some("0123456789ab"));
        let data: serde_json::Value = serde_json::from_str(job.data.get()).unwrap();
        assert_eq!(data["mascot"], "Gopher");
    }

    #[test]
    fn each_rule_has_its_code() {
        assert_eq!(code("nope"), "invalid_json");
        assert_eq!(code("[1]"), "not_an_object");
        assert_eq!(code(r#"{"data":[{}]}"#), "missing_endpoint");
        assert_eq!(code(r#"{"endpoint":"x","data":[{}]}"#), "invalid_endpoint");
        assert_eq!(
            code(r#"{"endpoint":{"method":"HEAD","url":"http://h/"},"data":[{}]}"#),
            "invalid_method"
        );
        assert_eq!(
            code(r#"{"endpoint":{"url":"http://h/"},"data":[{}]}"#),
            "invalid_method"
        );
        assert_eq!(
            code(r#"{"endpoint":{"method":"GET","url":"ftp://h/"},"data":[{}]}"#),
            "invalid_url"
        );
        assert_eq!(
            code(r#"{"endpoint":{"method":"GET","url":"/x"},"data":[{}]}"#),
            "invalid_url"
        );
        assert_eq!(
            code(r#"{"endpoint":{"method":"GET","url":"http://h/"}}"#),
            "missing_data"
        );
        assert_eq!(
            code(r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":{}}"#),
            "invalid_data"
        );
        assert_eq!(
            code(r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[]}"#),
            "empty_data"
        );
        assert_eq!(
            code(r#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},"x"]}"#),
            "invalid_item"
        );
        let many = format!(
            r#"{{"endpoint":{{"method":"GET","url":"http://h/"}},"data":[{}]}}"#,
            ["{}"; 11].join(",")
        );
        assert_eq!(code(&many), "too_many_items");
    }

    #[test]
    fn a_lone_surrogate_is_refused_naming_its_item() {
        let urls = UrlCheck::new(Default::default());
        let err = parse(
            br#"{"endpoint":{"method":"GET","url":"http://h/?x={a}"},"data":[{"a":"\ud83d\ude00"},{"a":"\ud800"}]}"#,
            10,
            None,
            None,
            &urls,
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_item");
        assert!(err.to_string().starts_with("`data[1]` holds \\ud800"), "{err}");
        let pair = br#"{"endpoint":{"method":"GET","url":"http://h/?x={a}"},"data":[{"a":"\ud83d\ude00 \\ud800"}]}"#;
        assert!(
            parse(pair, 10, None, None, &urls).is_ok(),
            "a pair, and an escaped backslash"
        );
    }

    #[test]
    fn a_port_out_of_range_or_a_zone_id_is_refused_never_sent_elsewhere() {
        let body = |url: &str| format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{{"k":"v"}}]}}"#);
        let open = UrlCheck::new(Arc::new(DestinationPolicy::parse("127.0.0.0/8,::1", "").unwrap()));
        for url in [
            "http://127.0.0.1:84313/x",
            "http://127.0.0.1:65536/",
            "http://127.0.0.1:80018777/",
            "http://[::1%25lo]:9/x",
            "http://[fe80::1%25lo]/",
            "http://[::1%lo]:9/x",
        ] {
            let err = parse(body(url).as_bytes(), 10, None, None, &open).unwrap_err();
            assert_eq!(err.code(), "invalid_url", "{url}");
            assert!(!err.to_string().contains(":80"), "{url}: {err}");
        }
        // With the default guard, too: the port is the problem, not port 80.
        let err = parse(
            body("http://127.0.0.1:84313/x").as_bytes(),
            10,
            None,
            None,
            &UrlCheck::new(Default::default()),
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_url");
        assert!(err.to_string().contains("84313"), "{err}");
    }

    #[test]
    fn an_invalid_item_is_named_by_its_index() {
        let err = parse(
            br#"{"endpoint":{"method":"GET","url":"http://h/"},"data":[{},{},[1]]}"#,
            10,
            None,
            None,
            &UrlCheck::new(Default::default()),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "`data[2]` must be a JSON object, found an array");
    }

    #[test]
    fn a_literal_address_that_is_not_public_is_refused_at_once() {
        let body = |url: &str| format!(r#"{{"endpoint":{{"method":"GET","url":"{url}"}},"data":[{{"k":"v"}}]}}"#);
        for url in [
            "http://127.0.0.1:6379/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0.0.0.0/",
            "http://[::1]:3000/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/x?a={k}",
            "https://user:pw@192.168.1.1/",
        ] {
            assert_eq!(code(&body(url)), "blocked_destination", "{url}");
        }
        // Names, and hosts a placeholder fills, are deliver's to check.
        let open = UrlCheck::new(Default::default());
        for url in [
            "http://localhost/",
            "http://{host}/",
            "http://10.0.0.{n}/",
            "http://example.com/",
        ] {
            assert!(parse(body(url).as_bytes(), 10, None, None, &open).is_ok(), "{url}");
        }
        let allowed = UrlCheck::new(Arc::new(DestinationPolicy::parse("127.0.0.1:9000", "").unwrap()));
        assert!(parse(body("http://127.0.0.1:9000/").as_bytes(), 10, None, None, &allowed).is_ok());
        let err = parse(body("http://127.0.0.1:9001/").as_bytes(), 10, None, None, &allowed).unwrap_err();
        assert_eq!(err.code(), "blocked_destination");
        assert!(err.to_string().contains("127.0.0.1:9001"), "{err}");
        // The URL that passed last passes again; another is checked anew.
        assert!(parse(body("http://127.0.0.1:9000/").as_bytes(), 10, None, None, &allowed).is_ok());
        let again = parse(body("http://127.0.0.1:9001/").as_bytes(), 10, None, None, &allowed).unwrap_err();
        assert_eq!(again.code(), "blocked_destination");
    }
}
