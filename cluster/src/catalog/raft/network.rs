//! Raft RPCs over the peer QUIC endpoint: each message is JSON inside one opaque peer RPC.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{CatalogCommand, CatalogTypes};
use crate::peer::{PeerAddress, PeerEndpoint};

/// The name of the catalog's service on the peer endpoint.
pub const RAFT_SERVICE: &str = "raft";

/// Every message one catalog node sends another.
#[derive(Serialize, Deserialize)]
pub(super) enum RaftRpc {
    AppendEntries(AppendEntriesRequest<CatalogTypes>),
    Vote(VoteRequest<CatalogTypes>),
    Snapshot {
        vote: VoteOf<CatalogTypes>,
        meta: SnapshotMetaOf<CatalogTypes>,
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<CatalogTypes>),
    /// A follower forwarding a catalog write to the leader.
    Write(CatalogCommand),
}

impl RaftRpc {
    /// The node a message speaks for: the leader (entries, snapshots, transfers) or the candidate
    /// (votes); none for a forwarded write, which any member may send.
    pub(super) fn sender(&self) -> Option<u64> {
        use openraft::vote::RaftLeaderId;
        match self {
            RaftRpc::AppendEntries(rpc) => Some(*rpc.vote.leader_id().node_id()),
            RaftRpc::Vote(rpc) => Some(*rpc.vote.leader_id().node_id()),
            RaftRpc::Snapshot { vote, .. } => Some(*vote.leader_id().node_id()),
            RaftRpc::TransferLeader(request) => Some(*request.from_leader().leader_id().node_id()),
            RaftRpc::Write(_) => None,
        }
    }
}

/// Connects catalog nodes by their Raft ids.
#[derive(Clone)]
pub struct CatalogNetwork {
    pub(super) endpoint: PeerEndpoint,
    pub(super) peers: Arc<HashMap<u64, PeerAddress>>,
}

impl CatalogNetwork {
    pub fn new(endpoint: PeerEndpoint, peers: HashMap<u64, PeerAddress>) -> CatalogNetwork {
        CatalogNetwork { endpoint, peers: Arc::new(peers) }
    }

    /// The catalog id of the node named `name`.
    pub(super) fn id_of(&self, name: &str) -> Option<u64> {
        self.peers.iter().find(|(_, peer)| peer.name == name).map(|(id, _)| *id)
    }

    /// Sends one message to a node and decodes its answer.
    pub(super) async fn call<T: DeserializeOwned>(&self, target: u64, message: &RaftRpc, timeout: Duration) -> Result<T, String> {
        let peer = self.peers.get(&target).ok_or_else(|| format!("no catalog node {target}"))?;
        let request = serde_json::to_vec(message).map_err(|error| error.to_string())?;
        let answer = self.endpoint.call(peer, RAFT_SERVICE, request, timeout).await.map_err(|error| error.to_string())?;
        serde_json::from_slice(&answer).map_err(|error| error.to_string())
    }
}

/// The network handle openraft keeps for one target node.
pub struct CatalogPeer {
    network: CatalogNetwork,
    target: u64,
}

impl RaftNetworkFactory<CatalogTypes> for CatalogNetwork {
    type Network = CatalogPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> CatalogPeer {
        CatalogPeer { network: self.clone(), target }
    }
}

impl CatalogPeer {
    async fn call<T: DeserializeOwned>(&self, message: RaftRpc, option: &RPCOption) -> Result<T, RPCError<CatalogTypes>> {
        self.network
            .call(self.target, &message, option.hard_ttl())
            .await
            .map_err(|reason| RPCError::Unreachable(Unreachable::from_string(reason)))
    }
}

impl RaftNetworkV2<CatalogTypes> for CatalogPeer {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<CatalogTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<CatalogTypes>, RPCError<CatalogTypes>> {
        self.call(RaftRpc::AppendEntries(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<CatalogTypes>,
        option: RPCOption,
    ) -> Result<VoteResponse<CatalogTypes>, RPCError<CatalogTypes>> {
        self.call(RaftRpc::Vote(rpc), &option).await
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<CatalogTypes>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<CatalogTypes>, RPCError<CatalogTypes>> {
        self.call(RaftRpc::TransferLeader(request), &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<CatalogTypes>,
        snapshot: SnapshotOf<CatalogTypes, Cursor<Vec<u8>>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<CatalogTypes>, StreamingError<CatalogTypes>> {
        let message = RaftRpc::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot.into_inner() };
        // A snapshot is the whole catalog: give it more time than one heartbeat.
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        self.network
            .call(self.target, &message, timeout)
            .await
            .map_err(|reason| StreamingError::Unreachable(Unreachable::from_string(reason)))
    }
}
