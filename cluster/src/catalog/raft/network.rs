//! Raft RPCs over the peer QUIC endpoint: each message is one opaque peer RPC, encoded by
//! `codec.rs` (postcard; JSON towards a peer of an earlier build, found out when it refuses the
//! binary form). Snapshots go as chunks of [`SNAPSHOT_CHUNK`] read from the snapshot file.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::snapshot::SnapshotFile;
use super::{CatalogCommand, CatalogTypes, codec};
use crate::peer::{PeerAddress, PeerEndpoint, PeerError};

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
    /// Bytes `offset..` of the snapshot file of transfer `transfer`; `last` (the snapshot's meta)
    /// on the final chunk, which the receiver answers with its `SnapshotResponse`.
    SnapshotChunk {
        vote: VoteOf<CatalogTypes>,
        transfer: u64,
        offset: u64,
        bytes: Vec<u8>,
        last: Option<SnapshotMetaOf<CatalogTypes>>,
    },
}

/// How many bytes of a snapshot one message carries.
pub(super) const SNAPSHOT_CHUNK: usize = 4 << 20;
/// How long a peer that refused the binary encoding is spoken to in JSON before it is tried again
/// (it may have been upgraded meanwhile).
const LEGACY_RETRY: Duration = Duration::from_secs(30);
/// The transfer rate a message's timeout allows for beyond its base: a large append-entries batch
/// or snapshot chunk on a slow link must not time out for its size alone.
const SLOWEST_RATE_BYTES_PER_SECOND: f64 = 4_000_000.0;

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
            RaftRpc::SnapshotChunk { vote, .. } => Some(*vote.leader_id().node_id()),
            RaftRpc::Write(_) => None,
        }
    }
}

/// Connects catalog nodes by their Raft ids.
#[derive(Clone)]
pub struct CatalogNetwork {
    pub(super) endpoint: PeerEndpoint,
    pub(super) peers: Arc<HashMap<u64, PeerAddress>>,
    /// Peers that refused the binary encoding, and since when.
    legacy: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// Why a call failed.
pub(super) enum CallError {
    /// The peer is of an earlier build and cannot take this message in any encoding.
    Legacy,
    Failed(String),
}

impl From<CallError> for String {
    fn from(error: CallError) -> String {
        match error {
            CallError::Legacy => "the peer's build does not know this message".into(),
            CallError::Failed(reason) => reason,
        }
    }
}

impl CatalogNetwork {
    pub fn new(endpoint: PeerEndpoint, peers: HashMap<u64, PeerAddress>) -> CatalogNetwork {
        CatalogNetwork { endpoint, peers: Arc::new(peers), legacy: Arc::default() }
    }

    fn speaks_binary(&self, target: u64) -> bool {
        let mut legacy = self.legacy.lock().expect("legacy peers poisoned");
        match legacy.get(&target) {
            Some(since) if since.elapsed() < LEGACY_RETRY => false,
            Some(_) => {
                legacy.remove(&target);
                true
            }
            None => true,
        }
    }

    /// The catalog id of the node named `name`.
    pub(super) fn id_of(&self, name: &str) -> Option<u64> {
        self.peers.iter().find(|(_, peer)| peer.name == name).map(|(id, _)| *id)
    }

    /// Sends one message to a node and decodes its answer, within `timeout` plus the time its size
    /// needs on a slow link. Binary first; a peer that cannot decode it gets JSON (a snapshot chunk,
    /// which no earlier build knows, fails with [`CallError::Legacy`] instead).
    pub(super) async fn call<T: DeserializeOwned>(&self, target: u64, message: &RaftRpc, timeout: Duration) -> Result<T, CallError> {
        let failed = |reason: String| CallError::Failed(reason);
        let peer = self.peers.get(&target).ok_or_else(|| failed(format!("no catalog node {target}")))?;
        let binary = self.speaks_binary(target);
        let send = |request: Vec<u8>| {
            let timeout = timeout + Duration::from_secs_f64(request.len() as f64 / SLOWEST_RATE_BYTES_PER_SECOND);
            self.endpoint.call(peer, RAFT_SERVICE, request, timeout)
        };
        let answer = match send(codec::encode(message, binary).map_err(failed)?).await {
            Ok(answer) => answer,
            Err(PeerError::Remote { reason, .. }) if binary && reason.starts_with(UNDECODABLE) => {
                self.legacy.lock().expect("legacy peers poisoned").insert(target, Instant::now());
                if matches!(message, RaftRpc::SnapshotChunk { .. }) {
                    return Err(CallError::Legacy);
                }
                send(codec::encode(message, false).map_err(failed)?).await.map_err(|error| failed(error.to_string()))?
            }
            Err(error) => return Err(failed(error.to_string())),
        };
        codec::decode(&answer).map(|(value, _)| value).map_err(failed)
    }
}

/// How a node answers a message it cannot decode (an earlier build answers the same for binary).
pub(super) const UNDECODABLE: &str = "undecodable raft message";

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
            .map_err(|error| RPCError::Unreachable(Unreachable::from_string(String::from(error))))
    }

    /// Sends the snapshot as one message, the way an earlier build takes it: its rows in memory.
    async fn send_legacy_snapshot(
        &self,
        vote: VoteOf<CatalogTypes>,
        meta: SnapshotMetaOf<CatalogTypes>,
        snapshot: &SnapshotFile,
        timeout: Duration,
    ) -> Result<SnapshotResponse<CatalogTypes>, String> {
        let path = snapshot.path().to_owned();
        let rows = tokio::task::spawn_blocking(move || {
            super::snapshot::SnapshotReader::open(&path)?
                // An earlier build has no table of write parts; a write in flight is sent again.
                .filter(|row| !matches!(row, Ok((table, _, _)) if table == "command_parts"))
                .collect::<std::io::Result<Vec<crate::catalog::local::Row>>>()
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        let data = postcard::to_stdvec(&rows).map_err(|error| error.to_string())?;
        self.network.call(self.target, &RaftRpc::Snapshot { vote, meta, data }, timeout).await.map_err(String::from)
    }

    /// Sends the snapshot file in chunks; the last one carries the meta and gets the answer.
    async fn send_snapshot_chunks(
        &self,
        vote: VoteOf<CatalogTypes>,
        meta: SnapshotMetaOf<CatalogTypes>,
        snapshot: &SnapshotFile,
        timeout: Duration,
    ) -> Result<SnapshotResponse<CatalogTypes>, CallError> {
        let failed = |error: std::io::Error| CallError::Failed(format!("reading the snapshot file: {error}"));
        let transfer = getrandom::u64().map_err(|error| CallError::Failed(error.to_string()))?;
        let mut file = std::fs::File::open(snapshot.path()).map_err(failed)?;
        let size = file.metadata().map_err(failed)?.len();
        let mut offset = 0u64;
        loop {
            let length = (size - offset).min(SNAPSHOT_CHUNK as u64) as usize;
            let (read_file, bytes) = tokio::task::spawn_blocking(move || {
                let mut bytes = vec![0u8; length];
                file.seek(SeekFrom::Start(offset))?;
                file.read_exact(&mut bytes)?;
                Ok::<_, std::io::Error>((file, bytes))
            })
            .await
            .map_err(|error| CallError::Failed(error.to_string()))?
            .map_err(failed)?;
            file = read_file;
            let last = offset + length as u64 == size;
            let message = RaftRpc::SnapshotChunk { vote, transfer, offset, bytes, last: last.then(|| meta.clone()) };
            if last {
                return self.network.call(self.target, &message, timeout).await;
            }
            self.network.call::<()>(self.target, &message, timeout).await?;
            offset += length as u64;
        }
    }
}

impl RaftNetworkV2<CatalogTypes> for CatalogPeer {
    type SnapshotData = SnapshotFile;

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
        snapshot: SnapshotOf<CatalogTypes, SnapshotFile>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<CatalogTypes>, StreamingError<CatalogTypes>> {
        // Each chunk, and the install at the end, may take longer than a heartbeat.
        let timeout = option.hard_ttl().max(Duration::from_secs(60));
        let unreachable = |reason: String| StreamingError::Unreachable(Unreachable::from_string(reason));
        let sending = async {
            if self.network.speaks_binary(self.target) {
                match self.send_snapshot_chunks(vote, snapshot.meta.clone(), &snapshot.snapshot, timeout).await {
                    Ok(response) => return Ok(response),
                    Err(CallError::Failed(reason)) => return Err(unreachable(reason)),
                    Err(CallError::Legacy) => {}
                }
            }
            self.send_legacy_snapshot(vote, snapshot.meta.clone(), &snapshot.snapshot, timeout).await.map_err(unreachable)
        };
        tokio::select! {
            result = sending => result,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
