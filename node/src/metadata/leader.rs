//! Metadata misses led by one node per key: a cold repo, ref or commit is fetched from upstream
//! once for the whole cluster by the first serving node of the key's placement (its metadata
//! leader); the others ask it over the peer endpoint and record nothing themselves (the leader's
//! catalog writes replicate to them).

use std::sync::Arc;
use std::time::Duration;

use hfm_cluster::catalog::{Manifest, PolicyRecord};
use hfm_cluster::types::RepoKey;
use tracing::{debug, info, warn};

use super::Metadata;
use crate::hub::{ErrorSource, HubError};

/// How long a node waits for the metadata leader (a big repo's tree is many upstream pages).
const METADATA_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node waits for the leader's answer to a small question (a policy, a ref) before it
/// asks upstream itself: a leader behind a slow link or too busy to answer is routed around, at the
/// cost of one upstream request. Trees are not hedged: a big one is legitimately slow upstream.
const SMALL_QUESTION_BUDGET: Duration = Duration::from_secs(1);
/// The name of the metadata service on the peer endpoint.
pub const METADATA_SERVICE: &str = "metadata";

/// Whether a metadata miss may be handed to the cluster's metadata leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Forwarding {
    AskCluster,
    /// The question came from a peer: answer it here, so questions never travel in circles.
    Local,
}

/// A metadata question one node asks the node that leads its key.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum MetadataRequest {
    Policy { repo: RepoKey },
    Revision { repo: RepoKey, revision: String },
    Manifest { repo: RepoKey, commit: String },
}

impl MetadataRequest {
    /// The key placement assigns a leader for: one per repo policy, per ref, per commit.
    /// How long the asker waits before going upstream itself (see [`SMALL_QUESTION_BUDGET`]).
    fn budget(&self) -> Duration {
        match self {
            MetadataRequest::Policy { .. } | MetadataRequest::Revision { .. } => SMALL_QUESTION_BUDGET,
            MetadataRequest::Manifest { .. } => METADATA_TIMEOUT,
        }
    }

    pub(super) fn placement_key(&self) -> String {
        match self {
            MetadataRequest::Policy { repo } => format!("policy\0{repo}"),
            MetadataRequest::Revision { repo, revision } => format!("ref\0{repo}\0{revision}"),
            MetadataRequest::Manifest { repo, commit } => format!("manifest\0{repo}\0{commit}"),
        }
    }
}

/// The answer to a [`MetadataRequest`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum MetadataAnswer {
    Policy(PolicyRecord),
    Revision(String),
    Manifest(Manifest),
    Error { status: u16, code: Option<String>, message: String, repo_commit: Option<String> },
}

impl Metadata {
    /// Asks the cluster's metadata leader for this key (the first serving node of its placement).
    /// `None` when this node is the leader, has no cluster, was itself asked by a peer, or the
    /// leader cannot be reached (then the caller fetches from upstream itself).
    pub(super) async fn ask_leader(&self, forwarding: Forwarding, request: MetadataRequest) -> Option<Result<MetadataAnswer, HubError>> {
        if forwarding == Forwarding::Local {
            return None;
        }
        let peers = self.inner.peers.as_ref()?;
        let leader = peers.metadata_leader(&request.placement_key())?;
        let body = serde_json::to_vec(&request).ok()?;
        let budget = request.budget();
        let asked = tokio::time::Instant::now();
        let answer = peers.endpoint().call(&leader, METADATA_SERVICE, body, budget).await;
        if answer.is_err() && budget < METADATA_TIMEOUT && asked.elapsed() >= budget {
            info!(leader = %leader.name, "metadata leader slow to answer; asking upstream");
            crate::telemetry::metrics().rerouted(crate::telemetry::Reroute::MetadataHedged);
        }
        match answer {
            Ok(answer) => match serde_json::from_slice::<MetadataAnswer>(&answer) {
                Ok(MetadataAnswer::Error { status, code, message, repo_commit }) => {
                    let status = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
                    let mut error = HubError::new(status, code.as_deref().unwrap_or("UpstreamError"), message, ErrorSource::Upstream);
                    error.code = code;
                    error.repo_commit = repo_commit;
                    Some(Err(error))
                }
                Ok(answer) => Some(Ok(answer)),
                Err(error) => {
                    warn!(leader = %leader.name, %error, "undecodable metadata answer; asking upstream");
                    None
                }
            },
            Err(error) => {
                debug!(leader = %leader.name, %error, "metadata leader unreachable; asking upstream");
                None
            }
        }
    }

    /// Answers a peer's metadata question from this node's catalog or upstream, never forwarding it.
    async fn answer_peer(&self, request: MetadataRequest) -> MetadataAnswer {
        let result = match request {
            MetadataRequest::Policy { repo } => {
                self.policy_record(&repo, None, Forwarding::Local).await.map(|(record, _)| MetadataAnswer::Policy(record))
            }
            MetadataRequest::Revision { repo, revision } => {
                self.resolve_revision_with(&repo, &revision, Forwarding::Local).await.map(|(commit, _)| MetadataAnswer::Revision(commit))
            }
            MetadataRequest::Manifest { repo, commit } => match self.manifest_with(&repo, &commit, Forwarding::Local).await {
                // The asker records it whole, so it is read whole here (never on a client's request path).
                Ok((manifest, _)) => manifest
                    .to_whole()
                    .await
                    .map(|whole| MetadataAnswer::Manifest(Arc::unwrap_or_clone(whole)))
                    .map_err(super::catalog_error),
                Err(error) => Err(error),
            },
        };
        result.unwrap_or_else(|error| MetadataAnswer::Error {
            status: error.status.as_u16(),
            code: error.code,
            message: error.message,
            repo_commit: error.repo_commit,
        })
    }
}

/// The `metadata` peer service: answers the questions of peers that found this node to lead a key.
pub struct MetadataService {
    metadata: Metadata,
}

impl MetadataService {
    pub fn new(metadata: Metadata) -> MetadataService {
        MetadataService { metadata }
    }
}

#[async_trait::async_trait]
impl hfm_cluster::peer::RpcHandler for MetadataService {
    async fn handle(&self, _caller: &str, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let request: MetadataRequest =
            serde_json::from_slice(&request).map_err(|error| format!("undecodable metadata request: {error}"))?;
        // A node whose catalog cannot record (a full disk) would fetch for the cluster and keep
        // nothing, so every later question would go upstream again: the asker fetches and records
        // it itself instead.
        if !self.metadata.inner.catalog.can_record() {
            return Err("this node cannot record in its catalog now; fetch it yourself".into());
        }
        let answer = self.metadata.answer_peer(request).await;
        serde_json::to_vec(&answer).map_err(|error| error.to_string())
    }
}
