//! The operator's routes: `/_hfm/status`, `/_hfm/drain`, `/_hfm/pins`, `/_hfm/replicas/{etag}`,
//! `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hfm_cluster::catalog::Catalog;
use hfm_cluster::catalog::raft::RaftCatalog;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tracing::info;

use super::{json_response, require_method};
use crate::blobs::Replicas;
use crate::hub::{CacheStatus, ErrorSource, HubError};
use crate::peers::Peers;
use crate::rsync::daemon::Rsyncd;
use crate::rsync::pins::{Pins, pin_target};
use crate::store::{BlobStore, is_valid_etag};
use crate::telemetry::{AnswerCounters, Exposition};

/// What the operator's routes read and act on.
pub struct Operator {
    pub node_name: String,
    /// The secret an operator presents (`Authorization: Bearer …`); never a source address.
    pub token: OperatorToken,
    pub catalog: Arc<dyn Catalog>,
    pub store: BlobStore,
    pub file_answers: Arc<AnswerCounters>,
    pub metadata_answers: Arc<AnswerCounters>,
    pub pins: Pins,
    pub exposition: Arc<Exposition>,
    /// In a cluster: gossip's view, the Raft catalog and the replica keeper.
    pub cluster: Option<(Peers, RaftCatalog, Replicas)>,
    pub rsync: Option<Rsyncd>,
}

impl Operator {
    fn peers(&self) -> Option<&Peers> {
        self.cluster.as_ref().map(|(peers, ..)| peers)
    }

    /// The operator's routes need the operator token, whoever asks and from wherever.
    pub(super) fn require_token(&self, request: &Request) -> Result<(), HubError> {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if self.token.matches(presented) {
            return Ok(());
        }
        Err(HubError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "The operator's routes need the operator token", ErrorSource::Client))
    }

    /// Whether this node takes traffic: not draining and, in a cluster, live in its own gossip view.
    fn is_ready(&self) -> bool {
        match self.peers() {
            Some(peers) => peers.serving_nodes().iter().any(|name| name == peers.self_name()),
            None => true,
        }
    }

    /// `/readyz`: 200 when the node takes traffic, else 503 in the Hub's format. A 503 here is a
    /// state the prober asked about, not an error of the node: answered, never logged as one.
    pub(super) fn readiness(&self) -> Result<Response, HubError> {
        if self.is_ready() {
            return Ok((StatusCode::OK, "ready\n").into_response());
        }
        let not_ready = HubError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NotReady",
            "This node is not taking traffic (starting or draining)",
            ErrorSource::Client,
        );
        Ok(not_ready.into_response())
    }

    /// `/metrics` in Prometheus' text format.
    pub(super) fn metrics(&self) -> Response {
        let mut response = self.exposition.render().into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::telemetry::exposition::CONTENT_TYPE));
        response
    }

    /// `/_hfm/status`: the node's own view: its store, and the cluster's members as gossip sees them.
    pub(super) fn status(&self, method: &Method) -> Response {
        let usage = self.store.usage();
        let (hits, revalidated, misses) = self.file_answers.snapshot();
        let (metadata_hits, metadata_revalidated, metadata_misses) = self.metadata_answers.snapshot();
        let mut status = serde_json::json!({
            "node": self.node_name,
            "version": env!("CARGO_PKG_VERSION"),
            "store": {"blobs": usage.num_blobs, "stored_bytes": usage.stored_bytes, "reserved_bytes": usage.reserved_bytes},
            "answers": {"hit": hits, "revalidated": revalidated, "miss": misses},
            "metadata_answers": {"hit": metadata_hits, "revalidated": metadata_revalidated, "miss": metadata_misses},
        });
        if let Some(rsync) = &self.rsync {
            status["rsync"] = serde_json::to_value(rsync.state()).unwrap_or_default();
        }
        if let Some((peers, raft, replicas)) = &self.cluster {
            status["replicas"] = serde_json::to_value(replicas.counters()).unwrap_or_default();
            let view = peers.view();
            let members: Vec<Value> = peers
                .member_states()
                .into_iter()
                .map(|(name, state)| match view.members.get(&name) {
                    Some(member) => serde_json::json!({
                        "name": name, "state": state,
                        "generation": member.generation, "free_disk": member.free_disk, "version": member.version, "http_url": member.http_url,
                        "operator_url": member.operator_url,
                    }),
                    None => serde_json::json!({"name": name, "state": state}),
                })
                .collect();
            status["members"] = Value::Array(members);
            let raft = raft.status();
            let names = |ids: &[u64]| ids.iter().map(|id| raft.name_of(*id).unwrap_or("?").to_owned()).collect::<Vec<_>>();
            status["raft"] = serde_json::json!({
                "id": raft.id, "state": raft.state, "term": raft.term, "leader": raft.leader,
                "leader_name": raft.leader.and_then(|id| raft.name_of(id)),
                "last_applied": raft.last_applied,
                "voters": names(&raft.voters), "learners": names(&raft.learners),
            });
        }
        pretty_json(method, &status)
    }

    /// `/_hfm/drain`: gossip says draining (peers stop choosing this node as leader; DNS will stop
    /// naming it), catalog leadership moves to another voter, and the fills in progress finish.
    pub(super) async fn drain(&self, method: &Method) -> Response {
        const FILL_WAIT: Duration = Duration::from_secs(600);
        let mut handed_to = None;
        if let Some((peers, raft, _)) = &self.cluster {
            peers.start_draining().await;
            handed_to = raft.step_down(&peers.catalog_successors()).await;
        }
        let started = Instant::now();
        while self.store.usage().reserved_bytes > 0 && started.elapsed() < FILL_WAIT {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let fills_left = self.store.usage().reserved_bytes > 0;
        info!(handed_to, fills_left, "node drained");
        pretty_json(
            method,
            &serde_json::json!({
                "node": self.node_name,
                "draining": true,
                "catalog_leadership_handed_to": handed_to,
                "fills_finished": !fills_left,
            }),
        )
    }

    /// `/_hfm/pins`: GET lists the pins; POST pins and DELETE unpins (from the node's own host).
    pub(super) async fn pins(&self, request: Request, method: &Method) -> Result<Response, HubError> {
        require_method(method, &[Method::GET, Method::HEAD, Method::POST, Method::DELETE])?;
        let answer = if method == Method::GET || method == Method::HEAD {
            self.pins.status().await?
        } else {
            let (repo, revision) = pin_target(request.uri().query().unwrap_or(""))?;
            if method == Method::POST { self.pins.pin(&repo, &revision).await? } else { self.pins.unpin(&repo).await? }
        };
        Ok(pretty_json(method, &answer))
    }

    /// `/_hfm/replicas/{etag}`: which nodes hold a blob.
    pub(super) async fn replicas(&self, method: &Method, etag: &str) -> Result<Response, HubError> {
        require_method(method, &[Method::GET, Method::HEAD])?;
        if !is_valid_etag(etag) {
            return Err(HubError::bad_request("Not a blob etag"));
        }
        let record = self.catalog.get_replicas(etag).await.map_err(HubError::internal)?;
        let body = serde_json::json!({
            "etag": etag,
            "size": record.as_ref().map(|record| record.size),
            "holders": record.map(|record| record.holders).unwrap_or_default(),
            "held_here": self.store.contains(etag),
        });
        Ok(pretty_json(method, &body))
    }
}

/// The operator token, compared in constant time.
#[derive(Clone)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// A token of at least 16 characters (a file holding less is refused at start-up).
    pub fn new(token: String) -> Option<OperatorToken> {
        (token.len() >= 16 && token.bytes().all(|byte| byte.is_ascii_graphic())).then_some(OperatorToken(token))
    }

    fn matches(&self, presented: &str) -> bool {
        let (expected, presented) = (self.0.as_bytes(), presented.as_bytes());
        // Every byte is looked at whatever the first difference, so timing says nothing of the token.
        let difference = expected.iter().zip(presented).fold(0u8, |acc, (left, right)| acc | (left ^ right));
        difference == 0 && expected.len() == presented.len()
    }
}

fn pretty_json(method: &Method, value: &Value) -> Response {
    json_response(method, Bytes::from(serde_json::to_vec_pretty(value).unwrap_or_default()), CacheStatus::Hit, HeaderMap::new())
}
