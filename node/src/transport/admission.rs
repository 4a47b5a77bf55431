//! Around every request of the public port: the limits (checked before any work; 429 in
//! the Hub's format with `Retry-After`), the `answered` log line, the request metric and the access
//! log. The edge inside knows none of this; it says which route and repository an answer was for
//! ([`Answered`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, header};
use tracing::{debug, field, info};

use super::access_log::{AccessLog, Answer, Requested};
use super::limits::{Admission, EdgeLimits, Refusal};
use crate::edge::{Answered, Arrival, Charged, Edge};
use crate::hub::headers::parsed;
use crate::hub::{CacheStatus, HubError};

/// What the front door needs: the limits, the access log, and where heavy users are sent.
pub struct FrontDoor {
    pub limits: Arc<EdgeLimits>,
    pub access_log: Option<AccessLog>,
    /// Where heavy users are sent: the rsync modules of this mirror.
    pub rsync_hint: String,
}

/// The public port's application: the front door around the edge, one shared value every
/// connection clones.
#[derive(Clone)]
pub struct PublicApp(Arc<(FrontDoor, Edge)>);

impl PublicApp {
    pub fn new(front_door: FrontDoor, edge: Edge) -> PublicApp {
        PublicApp(Arc::new((front_door, edge)))
    }

    /// Answers one request: through the limits, to the edge, into the logs.
    pub async fn call(&self, request: Request) -> Response {
        let (front_door, edge) = &*self.0;
        front_door.answer(edge, request).await
    }
}

/// Lets a request through the limits (before any work is done for it), or answers 429.
fn admit(front_door: &FrontDoor, request: &Request) -> Result<Option<Admission>, HubError> {
    let Some(arrival) = request.extensions().get::<Arrival>() else { return Ok(None) };
    front_door.limits.admit(arrival.client.ip()).map_err(|refused| {
        let message = match refused.reason {
            Refusal::Rate => "Too many requests from your address; slow down and retry after the delay in Retry-After".to_owned(),
            Refusal::Parallel => "Too many parallel requests from your network; retry after the delay in Retry-After".to_owned(),
            Refusal::DailyBytes => format!(
                "Your network downloaded more than its daily quota over HTTP in the last 24 hours. Bulk downloads go through rsync: {} (modules models, datasets, indexes)",
                front_door.rsync_hint
            ),
        };
        HubError::rate_limited(message, refused.fields(), refused.retry.as_secs_f64().ceil() as u64)
    })
}

impl FrontDoor {
    /// Admits the request (or answers 429), has the edge answer it, and logs and counts the answer.
    async fn answer(&self, edge: &Edge, request: Request) -> Response {
        let front_door = self;
        let started = Instant::now();
        // Shared handles, not copies: for the `answered` line. The edge makes the request's span
        // once it knows the route (`edge::request_span`).
        let (method, uri) = (request.method().clone(), request.uri().clone());
        // What the access log keeps, taken before the request is consumed: never the query (it may
        // carry secrets), never a credential header.
        let requested = front_door.access_log.as_ref().map(|_| {
            let user_agent = request.headers().get(header::USER_AGENT).and_then(|value| value.to_str().ok());
            let client = request.extensions().get::<Arrival>().map(|arrival| arrival.client.ip());
            Requested::new(&method, uri.path(), user_agent, client)
        });
        let (mut response, Answered { route, repo }, admission) = match admit(front_door, &request) {
            Ok(admission) => {
                let (response, answered) = edge.answer(request).await;
                (response, answered, admission)
            }
            Err(refused) => (refused.into_response(), Answered { route: "refused", repo: None }, None),
        };
        let cache = response
            .headers()
            .get(&parsed::X_CACHE)
            .and_then(|value| CacheStatus::parse(value.to_str().ok()?))
            .map_or("-", CacheStatus::as_str);
        let status = response.status().as_u16();
        // Every request is in the access log; the process log gets a line for those that failed (and,
        // at debug level, for every request).
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let path = uri.path();
        if status >= 400 {
            info!(%method, path, repo = repo.as_ref().map(field::display), status, cache, elapsed_ms, "answered");
        } else {
            debug!(%method, path, repo = repo.as_ref().map(field::display), status, cache, elapsed_ms, "answered");
        }
        crate::telemetry::metrics().request(route, status, cache);
        let length = response.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if let (Some(access_log), Some(requested)) = (&front_door.access_log, requested) {
            let answer = Answer { at: SystemTime::now(), status, bytes: length.unwrap_or(0), duration: started.elapsed(), cache, repo };
            access_log.record(requested, answer);
        }
        if let Some(admission) = admission {
            // A fill the request started is charged whole; otherwise what the response sends.
            let charged = response.extensions().get::<Charged>().map(|charged| charged.0).or(length);
            if let (true, Some(bytes)) = (method == Method::GET, charged) {
                admission.record_bytes(bytes);
            }
            response = response.map(|inner| Body::new(AdmittedBody { inner, _admission: admission }));
        }
        response
    }
}

/// A response body that holds its request's admission (a parallel slot) until it is sent or dropped.
struct AdmittedBody {
    inner: Body,
    _admission: Admission,
}

impl http_body::Body for AdmittedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
