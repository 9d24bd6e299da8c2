//! The postback job: the one message that travels from ingest to deliver.
//!
//! A job is one JSON object per element of the ready list (compact, but
//! for `data`, which keeps the text the producer sent):
//!
//! ```json
//! {"id":"0190c6e2-...","method":"GET","url":"http://h/?t={mascot}",
//!  "data":{"mascot":"Gopher"},"attempt":1,"enqueued_at":1732771200000}
//! ```
//!
//! Any producer that can `LPUSH` such a string is a valid producer. A string
//! that does not decode into a [`Job`] is *malformed*: deliver never retries
//! it, it keeps it aside as a [`DeadLetter`] with reason `malformed`.

use crate::headers::Headers;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;

/// The HTTP methods a postback can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// No body; the data lives in the URL.
    Get,
    /// Sends the data object as a JSON body.
    Post,
    /// Sends the data object as a JSON body.
    Put,
    /// Sends the data object as a JSON body.
    Patch,
    /// No body; the data lives in the URL.
    Delete,
}

impl Method {
    /// The upper-case name, as it is stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// The same method as the `http` crate names it.
    pub fn as_http(self) -> http::Method {
        match self {
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Patch => http::Method::PATCH,
            Method::Delete => http::Method::DELETE,
        }
    }

    /// Whether the data object is sent as a JSON body.
    pub fn has_body(self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A method name that is not one of GET, POST, PUT, PATCH, DELETE.
#[derive(Debug, thiserror::Error)]
#[error("method must be one of GET, POST, PUT, PATCH, DELETE")]
pub struct UnknownMethod;

impl FromStr for Method {
    type Err = UnknownMethod;

    /// Accepts any letter case, as the old PHP endpoint did.
    fn from_str(s: &str) -> Result<Self, UnknownMethod> {
        const ALL: [Method; 5] = [Method::Get, Method::Post, Method::Put, Method::Patch, Method::Delete];
        ALL.into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or(UnknownMethod)
    }
}

/// One postback to make: fill `url` with `data` and send it with `method`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Unique id, given by ingest in its answer and printed in every log
    /// line about this job.
    pub id: String,
    /// HTTP method of the outbound request.
    pub method: Method,
    /// URL template with `{key}` placeholders (see [`crate::template`]).
    pub url: String,
    /// Extra request headers (`endpoint.headers`), none in the usual case.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// Values for the placeholders ([`Job::fields`]); also the JSON body of
    /// POST/PUT/PATCH. Kept as the JSON text the producer sent (always an
    /// object): a body goes out byte for byte as it came in, key order
    /// included, and reading a job allocates no tree of values.
    pub data: Box<RawValue>,
    /// 1 for the first attempt; deliver increases it on every retry.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// When ingest accepted the job, in ms since the epoch. Kept across
    /// retries, so it measures end-to-end time.
    pub enqueued_at: u64,
    /// The `X-Request-Id` of the ingest request, for tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The id of the producer key the job was queued with (none when
    /// ingest runs with `INGEST_AUTH=off`): whose postback it is, and
    /// whose secret signs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

impl PartialEq for Job {
    /// Equal fields, and data of the same JSON text.
    fn eq(&self, other: &Job) -> bool {
        self.id == other.id
            && self.method == other.method
            && self.url == other.url
            && self.headers == other.headers
            && self.data.get() == other.data.get()
            && self.attempt == other.attempt
            && self.enqueued_at == other.enqueued_at
            && self.request_id == other.request_id
            && self.producer == other.producer
    }
}

/// Why a queued string is not a valid job.
#[derive(Debug, thiserror::Error)]
pub enum MalformedJob {
    /// Not JSON, or JSON of the wrong shape.
    #[error("not a job: {0}")]
    Decode(#[from] serde_json::Error),
    /// The URL template cannot produce a request.
    #[error("bad url template: {0}")]
    Template(#[from] crate::template::TemplateError),
    /// `attempt` is 0.
    #[error("attempt must be 1 or more")]
    Attempt,
    /// `data` is not a JSON object.
    #[error("data must be a JSON object")]
    Data,
}

impl Job {
    /// Decodes and checks a job as it was read from the queue. Only the
    /// URL's scheme is checked here, because this runs once per delivery;
    /// ingest checked the whole template, and a foreign producer's bad URL
    /// fails its attempt as `invalid_url` (final, so a dead letter).
    pub fn decode(raw: &[u8]) -> Result<Job, MalformedJob> {
        // Checked as UTF-8 once, whole, rather than string by string as
        // `from_slice` does (13 checks a job). Bytes that are not UTF-8 go
        // to `from_slice` for its error, which says where.
        let job: Job = match std::str::from_utf8(raw) {
            Ok(text) => serde_json::from_str(text)?,
            Err(_) => serde_json::from_slice(raw)?,
        };
        let scheme = crate::url_parts::split_scheme(&job.url).map_or("", |(scheme, _)| scheme);
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(MalformedJob::Template(crate::template::TemplateError::Scheme));
        }
        if job.attempt == 0 {
            return Err(MalformedJob::Attempt);
        }
        // Valid JSON (serde_json checked it) that opens with a brace.
        if !job.data.get().starts_with('{') {
            return Err(MalformedJob::Data);
        }
        Ok(job)
    }

    /// The data's fields, to fill the URL template with.
    pub fn fields(&self) -> crate::template::Fields<'_> {
        // Cannot fail for a decoded job: `decode` made sure the data is a
        // JSON object, and any JSON object reads as fields. (A job built by
        // hand with other data has no fields.)
        crate::template::Fields::parse(&self.data).unwrap_or_default()
    }

    /// JSON as it is stored in the queue: compact, but for `data`, which
    /// keeps the producer's text.
    pub fn encode(&self) -> String {
        // Serializing a struct of strings, numbers and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A new, unique job id. Version 7 UUIDs sort by creation time, which
    /// makes ids in logs and dead-letter listings easy to order.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// Encodes the first-attempt jobs of one ingest request.
///
/// All jobs of a request share the method, the URL template, the time and
/// the request id, so those are serialised once; each job then costs only
/// its id and its data item, copied as the producer sent it. The output is
/// exactly what [`Job::encode`] gives for the same job.
#[derive(Debug, Clone)]
pub struct JobEncoder {
    /// `","method":…,"url":…,"headers":…,"data":` (after the id).
    middle: String,
    /// `,"attempt":1,"enqueued_at":…,"request_id":…,"producer":…}` (after
    /// the data).
    tail: String,
}

impl JobEncoder {
    /// An encoder for jobs of `method` to `url` with `headers`, accepted at
    /// `enqueued_at` by the request `request_id` of `producer`.
    pub fn new(
        method: Method,
        url: &str,
        headers: &Headers,
        enqueued_at: u64,
        request_id: Option<&str>,
        producer: Option<&str>,
    ) -> Self {
        let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut middle = format!(r#","method":"{}","url":{}"#, method.as_str(), json(url));
        if !headers.is_empty() {
            middle.push_str(r#","headers":"#);
            middle.push_str(&headers.to_json());
        }
        middle.push_str(r#","data":"#);
        let mut tail = format!(r#","attempt":1,"enqueued_at":{enqueued_at}"#);
        if let Some(id) = request_id {
            tail.push_str(r#","request_id":"#);
            tail.push_str(&json(id));
        }
        if let Some(id) = producer {
            tail.push_str(r#","producer":"#);
            tail.push_str(&json(id));
        }
        tail.push('}');
        JobEncoder { middle, tail }
    }

    /// The job with this `id` and `data` (a JSON object), as compact JSON.
    pub fn encode(&self, id: &str, data: &serde_json::value::RawValue) -> String {
        let data = data.get();
        let mut out = String::with_capacity(8 + id.len() + self.middle.len() + data.len() + self.tail.len());
        out.push_str(r#"{"id":"#);
        if id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            out.push('"');
            out.push_str(id);
            out.push('"');
        } else {
            out.push_str(&serde_json::to_string(id).unwrap_or_default());
        }
        out.push_str(&self.middle);
        out.push_str(data);
        out.push_str(&self.tail);
        out
    }
}

/// Why a job ended in the dead-letter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    /// The endpoint gave an answer that retrying will not change (3xx, 4xx
    /// other than 408 and 429).
    FinalStatus,
    /// Every attempt of the retry schedule failed.
    RetriesExhausted,
    /// The queued string is not a valid job.
    Malformed,
    /// The destination guard refused the endpoint's addresses.
    BlockedDestination,
    /// 410 Gone: the endpoint says this URL is gone for good (the host
    /// may be fine: its breaker does not count it).
    Gone,
    /// The destination was disabled (`deliver destinations disable`, or
    /// its breaker stayed open for `DELIVER_DISABLE_AFTER`); replayable
    /// once it is enabled again.
    DestinationDisabled,
}

impl DeadReason {
    /// Every reason, for operators' filters.
    pub const ALL: [DeadReason; 6] = [
        DeadReason::FinalStatus,
        DeadReason::RetriesExhausted,
        DeadReason::Malformed,
        DeadReason::BlockedDestination,
        DeadReason::Gone,
        DeadReason::DestinationDisabled,
    ];

    /// The name used in JSON and in `deliver dead list`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::FinalStatus => "final_status",
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::BlockedDestination => "blocked_destination",
            DeadReason::Malformed => "malformed",
            DeadReason::Gone => "gone",
            DeadReason::DestinationDisabled => "destination_disabled",
        }
    }
}

/// A job that will not be delivered without an operator's decision, as
/// stored in the dead-letter list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job's id (a fresh one for a malformed job without a usable id).
    pub id: String,
    /// Why it is here.
    pub reason: DeadReason,
    /// How many attempts were made (0 for a malformed job).
    pub attempts: u32,
    /// The last HTTP status (`"404"`) or error kind (`"timeout"`).
    pub last_status: String,
    /// The method of the last attempt, if the job could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
    /// The URL as it was delivered, if the job could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Extra detail: the error message or a cut of the response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it became a dead letter, in ms since the epoch.
    pub dead_at: u64,
    /// The job itself, ready to be replayed, but for its headers' values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// The names of the job's headers. Their values may be secrets, so
    /// they are not in the letter: the queue keeps them beside it, for its
    /// replay only ([`crate::queue::Settlement::Dead`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_names: Vec<String>,
    /// The headers with their values, on their way to the queue's side
    /// store when the letter is made; never part of the stored letter.
    #[serde(skip)]
    pub header_values: Headers,
    /// The queued string of a malformed job, kept for inspection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl DeadLetter {
    /// Takes `job`'s headers out of the letter's copy of it: the names stay
    /// in the letter, the values go with it to the side store only.
    pub fn set_headers_aside(mut self) -> Self {
        if let Some(job) = &mut self.job {
            let headers = std::mem::take(&mut job.headers);
            self.header_names = headers.names();
            self.header_values = headers;
        }
        self
    }

    /// Compact JSON, as it is stored in the dead-letter list.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn method_parses_any_case_and_prints_upper_case() {
        assert_eq!("get".parse::<Method>().unwrap(), Method::Get);
        assert_eq!("PaTcH".parse::<Method>().unwrap(), Method::Patch);
        assert!("HEAD".parse::<Method>().is_err());
        assert_eq!(Method::Delete.to_string(), "DELETE");
    }

    #[test]
    fn job_round_trips_through_its_encoding() {
        let job = Job {
            id: Job::new_id(),
            method: Method::Post,
            url: "http://h/{a}".into(),
            data: serde_json::value::to_raw_value(&json!({"a": 1})).unwrap(),
            attempt: 2,
            enqueued_at: 1,
            request_id: Some("r".into()),
            producer: Some("0123456789ab".into()),
            headers: Headers::new(vec![("X-Token".into(), "t".into())]).unwrap(),
        };
        assert_eq!(Job::decode(job.encode().as_bytes()).unwrap(), job);
    }

    #[test]
    fn the_encoder_gives_exactly_what_a_job_encodes_to() {
        let data = serde_json::value::RawValue::from_string(r#"{"a":"b \"q\"","n":1}"#.into()).unwrap();
        let token = Headers::new(vec![("X-Token".into(), "a \"b\"".into())]).unwrap();
        for (request_id, producer, headers) in [
            (None, None, Headers::default()),
            (Some("req \"1\""), Some("0123456789ab"), token),
        ] {
            let encoder = JobEncoder::new(Method::Patch, "http://h/{a}?x=\"y\"", &headers, 7, request_id, producer);
            for id in ["0190c6e2-0000-7000-8000-000000000000", "odd \"id\""] {
                let encoded = encoder.encode(id, &data);
                let job = Job::decode(encoded.as_bytes()).unwrap();
                assert_eq!(job.id, id);
                assert_eq!(job.request_id.as_deref(), request_id);
                assert_eq!(job.producer.as_deref(), producer);
                assert_eq!(job.headers, headers);
                assert_eq!(job.encode(), encoded);
            }
        }
    }

    #[test]
    fn data_stays_as_the_producer_wrote_it() {
        let raw = r#"{"id":"x1","method":"POST","url":"http://h/{b}","data":{ "z": 1,  "b": "é" },"attempt":2,"enqueued_at":5}"#;
        let job = Job::decode(raw.as_bytes()).unwrap();
        assert_eq!(job.data.get(), r#"{ "z": 1,  "b": "é" }"#);
        assert_eq!(job.encode(), raw);
        assert_eq!(crate::template::render(&job.url, &job.fields(), ""), "http://h/%C3%A9");
    }

    #[test]
    fn a_minimal_hand_written_job_decodes() {
        let raw = r#"{"id":"x1","method":"GET","url":"http://h/?a={a}","data":{"a":"b"},"enqueued_at":0}"#;
        let job = Job::decode(raw.as_bytes()).unwrap();
        assert_eq!(job.attempt, 1);
    }

    #[test]
    fn malformed_jobs_are_refused() {
        for raw in [
            "not json",
            "{}",
            r#"{"id":"x","method":"HEAD","url":"http://h/","data":{},"enqueued_at":0}"#,
            r#"{"id":"x","method":"GET","url":"ftp://h/","data":{},"enqueued_at":0}"#,
            r#"{"id":"x","method":"GET","url":"http://h/","data":[],"enqueued_at":0}"#,
            r#"{"id":"x","method":"GET","url":"http://h/","data":{},"enqueued_at":0,"attempt":0}"#,
            r#"{"id":"x","method":"GET","url":"http://h/","headers":{"X-A":"1
X-B: 2"},"data":{},"enqueued_at":0}"#,
            r#"{"id":"x","method":"GET","url":"http://h/","headers":{"Host":"elsewhere"},"data":{},"enqueued_at":0}"#,
        ] {
            assert!(Job::decode(raw.as_bytes()).is_err(), "{raw}");
        }
        // Not UTF-8 (a byte 0xff in a string): the JSON error says where.
        let mut raw = br#"{"id":"x","method":"GET","url":"http://h/?","data":{},"enqueued_at":0}"#.to_vec();
        let question = raw.iter().position(|&b| b == b'?').unwrap();
        raw[question] = 0xff;
        let error = Job::decode(&raw).expect_err("not UTF-8").to_string();
        assert!(error.contains("line 1 column"), "{error}");
    }
}
