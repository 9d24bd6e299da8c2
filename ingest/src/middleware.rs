//! What happens around every request, whatever its route: it gets a
//! request id (the caller's or nginx's `X-Request-Id`, or a new one), is
//! counted and timed in the metrics, and gets one access log line.
//!
//! Handlers read the id with [`RequestId`] from the request's extensions
//! (it goes into every job) and report how many jobs they queued by putting
//! an [`Accepted`] into the response's.

use crate::auth::Producer;
use crate::metrics::Metrics;
use crate::routes::route_of;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpMessage;
use common::line_log::LineLog;
use futures_util::future::LocalBoxFuture;
use std::future::{ready, Ready};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest caller-given request id kept; a longer one is replaced.
const REQUEST_ID_MAX: usize = 128;

/// The request's id: the caller's (or nginx's) `X-Request-Id` if it is a
/// sane token (printable ASCII, at most [`REQUEST_ID_MAX`] bytes),
/// otherwise a new one. Stored in each job and printed in every log line
/// about it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id for `req`.
    pub fn of(req: &ServiceRequest) -> RequestId {
        let given = req.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok());
        match given {
            Some(v) if !v.is_empty() && v.len() <= REQUEST_ID_MAX && v.bytes().all(|b| b.is_ascii_graphic()) => {
                RequestId(v.to_string())
            }
            _ => RequestId(uuid::Uuid::now_v7().simple().to_string()),
        }
    }
}

/// How many jobs a response accepted, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Accepted(pub usize);

/// The middleware: `App::wrap(Observe::new(...))`.
#[derive(Clone)]
pub struct Observe {
    metrics: Arc<Metrics>,
    access_log: Option<LineLog>,
}

impl Observe {
    /// Counts into `metrics`, and writes to `access_log` unless it is off.
    pub fn new(metrics: Arc<Metrics>, access_log: Option<LineLog>) -> Self {
        Observe { metrics, access_log }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService {
            service: Rc::new(service),
            observe: self.clone(),
        }))
    }
}

/// [`Observe`] around one worker's app.
pub struct ObserveService<S> {
    service: Rc<S>,
    observe: Observe,
}

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let route = route_of(req.path());
        let request_id = RequestId::of(&req);
        let logged = self
            .observe
            .access_log
            .as_ref()
            .map(|_| (req.method().clone(), req.path().to_owned()));
        req.extensions_mut().insert(request_id.clone());
        let response = self.service.call(req);
        let Observe { metrics, access_log } = self.observe.clone();
        Box::pin(async move {
            let mut response = response.await?;
            let took = started.elapsed();
            let status = response.status().as_u16();
            metrics.request(route, status, took);
            if let Ok(value) = HeaderValue::from_str(&request_id.0) {
                response.headers_mut().insert(X_REQUEST_ID, value);
            }
            if let (Some(log), Some((method, path))) = (access_log, logged) {
                let accepted = response.response().extensions().get::<Accepted>().map_or(0, |a| a.0);
                let producer = response.request().extensions().get::<Producer>().map(|p| p.id.clone());
                let line = AccessLine {
                    request_id: &request_id.0,
                    method: method.as_str(),
                    path: &path,
                    status,
                    accepted,
                    producer: producer.as_deref(),
                    took,
                };
                log.write(&line.render());
            }
            Ok(response)
        })
    }
}

/// One access log line (logfmt).
struct AccessLine<'a> {
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    accepted: usize,
    /// The producer key's id (`-` without one).
    producer: Option<&'a str>,
    took: Duration,
}

impl AccessLine<'_> {
    /// The line, in one allocation of about its size.
    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(192 + self.path.len());
        line.push_str("time=");
        common::line_log::push_rfc3339_millis(&mut line, common::now_ms());
        let _ = writeln!(
            line,
            " request_id={} method={} path={} status={} accepted={} producer={} duration_us={}",
            self.request_id,
            self.method,
            self.path,
            self.status,
            self.accepted,
            self.producer.unwrap_or("-"),
            self.took.as_micros()
        );
        line
    }
}
