//! A plain HTTP client for tests: one request, the whole answer.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// An HTTP response as a test sees it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The value of header `name` (lower-case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with a fresh connection and reads the answer.
pub async fn http(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> HttpResponse {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(body.into())).expect("bad test request");
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// POSTs `body` to `url`, the way `curl -d` would (form content type, raw
/// JSON body).
pub async fn post(url: &str, body: impl Into<Bytes>) -> HttpResponse {
    http(
        "POST",
        url,
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    )
    .await
}

/// GETs `url`.
pub async fn get(url: &str) -> HttpResponse {
    http("GET", url, &[], Bytes::new()).await
}
