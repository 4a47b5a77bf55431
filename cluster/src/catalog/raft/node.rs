//! A node of the Raft catalog: the openraft instance, the `Catalog` it offers the node (reads local,
//! writes through the leader), and the handler of its peers' RPCs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, Config, Raft};
use tracing::{debug, info, warn};

use super::network::{CatalogNetwork, RaftRpc, SNAPSHOT_CHUNK, UNDECODABLE};
use super::snapshot::{SNAPSHOT_DIR, SnapshotFile};
use super::{CatalogCommand, CatalogStateMachine, CatalogTypes, RedbLogStore, codec, parts};
use crate::catalog::{
    Catalog, CatalogError, DocumentRecord, LocalCatalog, Manifest, ManifestView, PinRecord, PolicyRecord, RefRecord, ReplicaRecord,
};
use crate::peer::{PeerAddress, PeerEndpoint, RpcHandler};
use crate::types::RepoKey;

/// How long a write waits for the catalog to accept it. A write that cannot reach a quorum in this
/// time fails, and the node serves what it fetched without recording it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long after its Raft core stopped on an error a node still says it cannot record: a core
/// started again on a disk that is still full stops again at its first apply.
const RECORDING_QUIET: Duration = Duration::from_secs(10);

/// The first pause before a stopped Raft core is started again.
const MIN_RESTART_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause between attempts to start a stopped Raft core again (the disk stays full).
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);

/// A node's view of the Raft catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_applied: Option<u64>,
    /// The voters and learners of the membership this node knows (committed or not).
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The names the membership gives its nodes, by id.
    pub names: BTreeMap<u64, String>,
}

impl RaftStatus {
    /// The name of node `id` as the membership records it.
    pub fn name_of(&self, id: u64) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }
}

/// One step the leader took to bring the catalog's membership to the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// A node of the topology joined as a learner; it copies the log before it may vote.
    AddedLearner(String),
    /// A learner that caught up became a voter.
    Promoted(String),
    /// A voter no longer in the topology left the voter set.
    RemovedVoter(String),
    /// A learner no longer in the topology was dropped.
    RemovedLearner(String),
}

/// How far behind the leader's log a learner may be and still be promoted: a voter that starts far
/// behind would slow every commit while it catches up.
const PROMOTION_LAG: u64 = 16;

/// One member of the catalog cluster.
pub struct CatalogMember {
    pub id: u64,
    pub name: String,
    pub peer: PeerAddress,
}

/// The Raft catalog of this node; a cheap handle.
#[derive(Clone)]
pub struct RaftCatalog {
    /// The running Raft instance; replaced by [`Self::supervise`] when its core stops on a storage
    /// failure.
    raft: Arc<std::sync::RwLock<Raft<CatalogTypes, CatalogStateMachine>>>,
    /// What a replacement instance is built from: the same log, state machine and configuration.
    log: RedbLogStore,
    config: Arc<Config>,
    /// Stops the supervisor ([`Self::shutdown`]); its task, awaited there.
    stopping: tokio_util::sync::CancellationToken,
    supervisor: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// When the Raft core last stopped on an error, for [`Catalog::can_record`].
    last_stop: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    self_id: u64,
    local: LocalCatalog,
    network: CatalogNetwork,
    state_machine: CatalogStateMachine,
    /// The snapshot being received from the leader, chunk by chunk.
    receiving: Arc<tokio::sync::Mutex<Option<Receiving>>>,
}

/// A snapshot transfer under way: the file its chunks are appended to.
struct Receiving {
    transfer: u64,
    path: PathBuf,
    file: std::fs::File,
    received: u64,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // A transfer given up or replaced leaves no file behind; a finished one was moved already.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn raft_config() -> Config {
    Config {
        cluster_name: "hf-mirror-catalog".into(),
        // Tuned for a few tens of milliseconds between European sites.
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // A snapshot every 5000 entries; followers that fall further behind get the snapshot.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 1000,
        // Entries are at most a write part (1 MiB) each: a batch stays within a peer frame.
        max_payload_entries: 64,
        ..Config::default()
    }
}

impl RaftCatalog {
    /// Opens the log and the state machine under `data_dir` and starts Raft. `members` are every
    /// node of the topology (where to reach them). `bootstrap` is given to the topology's first node
    /// only: the first voters, used once, when its log is empty. Every other node, and every later
    /// start, joins through the log; a node added later joins as a learner the leader adds
    /// ([`Self::reconcile_membership`]).
    pub async fn start(
        data_dir: &Path,
        local: LocalCatalog,
        self_id: u64,
        members: &[CatalogMember],
        bootstrap: Option<&[CatalogMember]>,
        endpoint: PeerEndpoint,
    ) -> anyhow::Result<RaftCatalog> {
        let config = Arc::new(raft_config().validate()?);
        let log = RedbLogStore::open(&data_dir.join("raft-log.redb"))?;
        let state_machine = CatalogStateMachine::new(local.clone(), &data_dir.join(SNAPSHOT_DIR))?;
        let peers: HashMap<u64, PeerAddress> = members.iter().map(|member| (member.id, member.peer.clone())).collect();
        let network = CatalogNetwork::new(endpoint, peers);
        let raft = Raft::new(self_id, config.clone(), network.clone(), log.clone(), state_machine.clone()).await?;
        check_membership_ids(&raft, members)?;
        if let Some(first_voters) = bootstrap {
            let voters: BTreeMap<u64, BasicNode> =
                first_voters.iter().map(|member| (member.id, BasicNode::new(member.name.clone()))).collect();
            match raft.initialize(voters).await {
                Ok(()) => info!(voters = first_voters.len(), "catalog cluster initialized"),
                Err(error) => debug!(%error, "catalog already initialized"),
            }
        }
        let catalog = RaftCatalog {
            raft: Arc::new(std::sync::RwLock::new(raft)),
            log,
            config,
            stopping: tokio_util::sync::CancellationToken::new(),
            supervisor: Arc::default(),
            last_stop: Arc::default(),
            self_id,
            local,
            network,
            state_machine,
            receiving: Arc::default(),
        };
        let supervisor = tokio::spawn(catalog.clone().supervise());
        *catalog.supervisor.lock().expect("supervisor slot poisoned") = Some(supervisor);
        Ok(catalog)
    }

    /// Restarts Raft on the same storage whenever its core stops on an error. openraft stops its core
    /// for good at the first failed log write or apply (a full disk: the catalog's database is then
    /// reopened by `reopening.rs`); the log and the catalog on disk are intact up to the last commit,
    /// so a new instance picks up from there and catches up from the leader. Retried with a growing
    /// pause while the storage keeps failing (the disk is still full); runs until [`Self::shutdown`].
    async fn supervise(self) {
        let mut pause = MIN_RESTART_PAUSE;
        let mut running_since = tokio::time::Instant::now();
        loop {
            let raft = self.raft();
            let mut metrics = raft.metrics();
            let stopped = async {
                loop {
                    if let Err(fatal) = &metrics.borrow_watched().running_state {
                        return fatal.to_string();
                    }
                    if metrics.changed().await.is_err() {
                        return "the core task ended".to_owned();
                    }
                }
            };
            let reason = tokio::select! {
                () = self.stopping.cancelled() => return,
                reason = stopped => reason,
            };
            warn!(%reason, "the catalog's Raft core stopped; starting it again on the same storage");
            *self.last_stop.lock().expect("last stop poisoned") = Some(tokio::time::Instant::now());
            // A core that keeps failing soon after each start waits longer each time; one that ran
            // a while starts over from the short pause.
            if running_since.elapsed() > MAX_RESTART_PAUSE * 2 {
                pause = MIN_RESTART_PAUSE;
            }
            let _ = raft.shutdown().await;
            loop {
                tokio::select! {
                    () = self.stopping.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                let restarted =
                    Raft::new(self.self_id, self.config.clone(), self.network.clone(), self.log.clone(), self.state_machine.clone()).await;
                pause = (pause * 2).min(MAX_RESTART_PAUSE);
                match restarted {
                    Ok(raft) => {
                        *self.raft.write().expect("raft slot poisoned") = raft;
                        info!("the catalog's Raft core runs again");
                        break;
                    }
                    Err(error) => warn!(%error, "the catalog's Raft core could not start again; retrying"),
                }
            }
            running_since = tokio::time::Instant::now();
        }
    }

    pub fn self_id(&self) -> u64 {
        self.self_id
    }

    /// The running Raft instance (a cheap handle), for metrics and status.
    pub fn raft(&self) -> Raft<CatalogTypes, CatalogStateMachine> {
        self.raft.read().expect("raft slot poisoned").clone()
    }

    /// The node's Raft role, term and leader, for status.
    pub fn status(&self) -> RaftStatus {
        let metrics = self.raft().metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        RaftStatus {
            id: metrics.id,
            state: format!("{:?}", metrics.state),
            term: metrics.current_term,
            leader: metrics.current_leader,
            last_applied: metrics.last_applied.map(|log_id| log_id.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            names: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
        }
    }

    /// One step towards a membership whose voters are exactly `desired` (the topology), taken only
    /// by the leader and only when no membership change is still uncommitted: a node of the
    /// topology that is not a member joins as a learner; a learner that is `live` and within
    /// [`PROMOTION_LAG`] entries of the log becomes a voter; a voter or learner the topology no
    /// longer names is removed. One change at a time keeps every step a single-node change, so
    /// a quorum of the old voters is always a quorum of the new ones too.
    pub async fn reconcile_membership(
        &self,
        desired: &[CatalogMember],
        live: impl Fn(&str) -> bool,
    ) -> Result<Option<MembershipStep>, CatalogError> {
        let (voters, learners, last_log, matched) = {
            let metrics = self.raft().metrics();
            let metrics = metrics.borrow_watched();
            if metrics.current_leader != Some(self.self_id)
                || metrics.membership_config.log_id() != metrics.committed_membership_config.log_id()
            {
                return Ok(None);
            }
            let membership = metrics.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let learners: BTreeSet<u64> = membership.learner_ids().collect();
            let matched: BTreeMap<u64, u64> =
                metrics.replication.iter().flatten().map(|(id, log_id)| (*id, log_id.as_ref().map_or(0, |log_id| log_id.index))).collect();
            (voters, learners, metrics.last_log_index.unwrap_or(0), matched)
        };
        let wanted: BTreeSet<u64> = desired.iter().map(|member| member.id).collect();
        let unavailable = |error: String| CatalogError::Unavailable(format!("changing the catalog membership: {error}"));
        if let Some(member) = desired.iter().find(|member| !voters.contains(&member.id) && !learners.contains(&member.id)) {
            self.raft()
                .add_learner(member.id, BasicNode::new(member.name.clone()), false)
                .await
                .map_err(|error| unavailable(error.to_string()))?;
            info!(node = member.name, "added to the catalog as a learner");
            return Ok(Some(MembershipStep::AddedLearner(member.name.clone())));
        }
        let caught_up = |id: u64| matched.get(&id).is_some_and(|index| index + PROMOTION_LAG >= last_log);
        if let Some(member) = desired.iter().find(|member| learners.contains(&member.id) && live(&member.name) && caught_up(member.id)) {
            self.raft()
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([member.id])), false)
                .await
                .map_err(|error| unavailable(error.to_string()))?;
            info!(node = member.name, "promoted to catalog voter");
            return Ok(Some(MembershipStep::Promoted(member.name.clone())));
        }
        let status = self.status();
        let name = |id: u64| status.name_of(id).unwrap_or("?").to_owned();
        // The leader never removes itself (its own topology names it), and never the last voter.
        if let Some(id) = voters.iter().copied().find(|id| !wanted.contains(id) && *id != self.self_id && voters.len() > 1) {
            self.raft()
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|error| unavailable(error.to_string()))?;
            info!(node = name(id), "removed from the catalog voters");
            return Ok(Some(MembershipStep::RemovedVoter(name(id))));
        }
        if let Some(id) = learners.iter().copied().find(|id| !wanted.contains(id)) {
            self.raft()
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|error| unavailable(error.to_string()))?;
            info!(node = name(id), "removed from the catalog learners");
            return Ok(Some(MembershipStep::RemovedLearner(name(id))));
        }
        Ok(None)
    }

    /// The handler the peer endpoint gives Raft messages to.
    pub fn rpc_handler(&self) -> Arc<dyn RpcHandler> {
        Arc::new(self.clone())
    }

    /// Proposes a write, in parts when it is too large for one log entry (`parts.rs`).
    async fn write(&self, command: CatalogCommand) -> Result<(), CatalogError> {
        for entry in parts::split(command)? {
            self.write_entry(entry).await?;
        }
        Ok(())
    }

    /// Proposes one log entry: on the leader directly, else forwarded to the leader. While an
    /// election is under way (no leader known, or the known one just failed) it retries until
    /// [`WRITE_TIMEOUT`].
    async fn write_entry(&self, command: CatalogCommand) -> Result<(), CatalogError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let mut last_error = "no catalog leader (no quorum?)".to_owned();
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(CatalogError::Unavailable(last_error));
            }
            if let Some(leader) = self.raft().current_leader().await {
                let attempt = async {
                    if leader == self.self_id {
                        self.raft().client_write(command.clone()).await.map(|_| ()).map_err(|error| error.to_string())
                    } else {
                        self.network.call::<()>(leader, &RaftRpc::Write(command.clone()), remaining).await.map_err(String::from)
                    }
                };
                match tokio::time::timeout(remaining, attempt).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(reason)) => last_error = reason,
                    Err(_) => last_error = "catalog write timed out".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100).min(remaining)).await;
        }
    }

    /// Hands leadership to another voter if this node leads (before it drains or stops): of the
    /// voters among `candidates` (the caller's serving nodes: live, not draining, in its topology),
    /// the one whose copy of the log is furthest along, so it can lead at once. Returns its id; none
    /// when no candidate votes (the others elect one when this node stops).
    pub async fn step_down(&self, candidates: &[u64]) -> Option<u64> {
        if self.raft().current_leader().await != Some(self.self_id) {
            return None;
        }
        let successor = {
            let metrics = self.raft().metrics();
            let metrics = metrics.borrow_watched();
            let matched = |id: &u64| {
                metrics.replication.as_ref().and_then(|replication| replication.get(id).cloned().flatten()).map(|log_id| log_id.index)
            };
            metrics
                .membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != self.self_id && candidates.contains(id))
                .max_by_key(|id| matched(id))?
        };
        match self.raft().trigger().transfer_leader(successor).await {
            Ok(()) => Some(successor),
            Err(error) => {
                warn!(%error, "could not hand over catalog leadership");
                None
            }
        }
    }

    pub async fn shutdown(&self) {
        self.stopping.cancel();
        let supervisor = self.supervisor.lock().expect("supervisor slot poisoned").take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
        if let Err(error) = self.raft().shutdown().await {
            warn!(%error, "raft did not shut down cleanly");
        }
    }
}

/// Refuses to start on a catalog whose membership numbers a topology node differently from
/// [`super::catalog_id`]: a log written by a build that numbered nodes by their place in the file.
fn check_membership_ids(raft: &Raft<CatalogTypes, CatalogStateMachine>, members: &[CatalogMember]) -> anyhow::Result<()> {
    use openraft::async_runtime::watch::WatchReceiver;
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    for (id, node) in metrics.membership_config.membership().nodes() {
        if let Some(member) = members.iter().find(|member| member.name == node.addr) {
            anyhow::ensure!(
                member.id == *id,
                "the catalog under the data directory numbers {} as {id}, not {}: it was written by an older build; \
                 move raft-log.redb and catalog.redb out of the data directory and start again (see docs/operations.md, Upgrades)",
                node.addr,
                member.id
            );
        }
    }
    Ok(())
}

impl RaftCatalog {
    /// Installs a snapshot an earlier build sent whole: its rows are written to a file first.
    async fn install_legacy_snapshot(
        &self,
        vote: openraft::type_config::alias::VoteOf<CatalogTypes>,
        meta: openraft::type_config::alias::SnapshotMetaOf<CatalogTypes>,
        data: Vec<u8>,
    ) -> Result<openraft::raft::SnapshotResponse<CatalogTypes>, String> {
        let path = self.state_machine.incoming_path();
        let written = path.clone();
        tokio::task::spawn_blocking(move || {
            let rows: Vec<crate::catalog::local::Row> = postcard::from_bytes(&data).map_err(|error| error.to_string())?;
            super::snapshot::write_rows(&written, rows).map_err(|error| error.to_string())
        })
        .await
        .map_err(|error| error.to_string())??;
        let snapshot =
            openraft::type_config::alias::SnapshotOf::<CatalogTypes, SnapshotFile> { meta, snapshot: SnapshotFile::new(path.clone()) };
        let outcome = self.raft().install_full_snapshot(vote, snapshot).await.map_err(|error| error.to_string());
        let _ = std::fs::remove_file(&path);
        outcome
    }

    /// Appends one chunk of a snapshot transfer; the last one installs the file. `None` until then.
    async fn receive_snapshot_chunk(
        &self,
        vote: openraft::type_config::alias::VoteOf<CatalogTypes>,
        transfer: u64,
        offset: u64,
        bytes: Vec<u8>,
        last: Option<openraft::type_config::alias::SnapshotMetaOf<CatalogTypes>>,
    ) -> Result<Option<openraft::raft::SnapshotResponse<CatalogTypes>>, String> {
        if bytes.len() > SNAPSHOT_CHUNK {
            return Err(format!("a snapshot chunk of {} bytes", bytes.len()));
        }
        let mut receiving = self.receiving.lock().await;
        if offset == 0 {
            let path = self.state_machine.incoming_path();
            let file = std::fs::File::create(&path).map_err(|error| format!("receiving a snapshot: {error}"))?;
            *receiving = Some(Receiving { transfer, path, file, received: 0 });
        }
        let Some(mut current) = receiving.take() else {
            return Err(format!("no snapshot transfer {transfer} under way"));
        };
        if current.transfer != transfer || current.received != offset {
            return Err(format!("snapshot chunk {transfer}@{offset} out of order (have {}@{})", current.transfer, current.received));
        }
        let finishing = last.is_some();
        let current = tokio::task::spawn_blocking(move || {
            current.file.write_all(&bytes)?;
            current.received += bytes.len() as u64;
            if finishing {
                current.file.sync_all()?;
            }
            Ok::<_, std::io::Error>(current)
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("receiving a snapshot: {error}"))?;
        let Some(meta) = last else {
            *receiving = Some(current);
            return Ok(None);
        };
        let snapshot = openraft::type_config::alias::SnapshotOf::<CatalogTypes, SnapshotFile> {
            meta,
            snapshot: SnapshotFile::new(current.path.clone()),
        };
        // The install moves the file into place; `current` dropping afterwards removes whatever is left.
        let outcome = self.raft().install_full_snapshot(vote, snapshot).await.map_err(|error| error.to_string());
        drop(current);
        outcome.map(Some)
    }
}

#[async_trait::async_trait]
impl RpcHandler for RaftCatalog {
    async fn handle(&self, caller: &str, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let (message, binary): (RaftRpc, bool) = codec::decode(&request).map_err(|error| format!("{UNDECODABLE}: {error}"))?;
        // A node speaks for itself only: the leader or candidate a message names must be the node
        // whose certificate the connection showed (a leaked key cannot vote or lead as another).
        if let Some(claimed) = message.sender() {
            let caller_id = self.network.id_of(caller);
            if caller_id != Some(claimed) {
                warn!(caller, claimed, "a raft message claims another node; refused");
                return Err(format!("{caller} may not speak for catalog node {claimed}"));
            }
        }

        match message {
            RaftRpc::AppendEntries(rpc) => {
                codec::encode(&self.raft().append_entries(rpc).await.map_err(|error| error.to_string())?, binary)
            }
            RaftRpc::Vote(rpc) => codec::encode(&self.raft().vote(rpc).await.map_err(|error| error.to_string())?, binary),
            RaftRpc::Snapshot { vote, meta, data } => codec::encode(&self.install_legacy_snapshot(vote, meta, data).await?, binary),
            RaftRpc::SnapshotChunk { vote, transfer, offset, bytes, last } => {
                match self.receive_snapshot_chunk(vote, transfer, offset, bytes, last).await? {
                    Some(response) => codec::encode(&response, binary),
                    None => codec::encode(&(), binary),
                }
            }
            RaftRpc::TransferLeader(request) => {
                codec::encode(&self.raft().handle_transfer_leader(request).await.map_err(|error| error.to_string())?, binary)
            }
            RaftRpc::Write(command) => {
                self.raft().client_write(command).await.map_err(|error| error.to_string())?;
                codec::encode(&(), binary)
            }
        }
    }
}

#[async_trait::async_trait]
impl Catalog for RaftCatalog {
    fn can_record(&self) -> bool {
        let stopped_lately = self.last_stop.lock().expect("last stop poisoned").is_some_and(|stopped| stopped.elapsed() < RECORDING_QUIET);
        !stopped_lately && self.raft().metrics().borrow_watched().running_state.is_ok()
    }

    fn records_generation(&self, repo: &RepoKey) -> Option<u64> {
        // Every write, this node's or the cluster's, is applied to the local catalog.
        self.local.records_generation(repo)
    }

    async fn get_ref(&self, repo: &RepoKey, revision: &str) -> Result<Option<RefRecord>, CatalogError> {
        self.local.get_ref(repo, revision).await
    }

    async fn put_ref(&self, repo: &RepoKey, revision: &str, record: RefRecord) -> Result<(), CatalogError> {
        self.write(CatalogCommand::PutRef { repo: repo.clone(), revision: revision.to_owned(), record }).await
    }

    async fn get_manifest(&self, repo: &RepoKey, commit: &str) -> Result<Option<ManifestView>, CatalogError> {
        self.local.get_manifest(repo, commit).await
    }

    async fn put_manifest(&self, repo: &RepoKey, commit: &str, manifest: Manifest) -> Result<ManifestView, CatalogError> {
        // Whole: the write may return before this node applied it, and the caller has it anyway.
        let shared = Arc::new(manifest.clone());
        self.write(CatalogCommand::PutManifest { repo: repo.clone(), commit: commit.to_owned(), manifest }).await?;
        Ok(ManifestView::Whole(shared))
    }

    async fn get_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        self.local.get_repo_info(repo, commit, variant).await
    }

    async fn put_repo_info(&self, repo: &RepoKey, commit: &str, variant: &str, body: Vec<u8>) -> Result<(), CatalogError> {
        self.write(CatalogCommand::PutRepoInfo { repo: repo.clone(), commit: commit.to_owned(), variant: variant.to_owned(), body }).await
    }

    async fn get_policy(&self, repo: &RepoKey) -> Result<Option<PolicyRecord>, CatalogError> {
        self.local.get_policy(repo).await
    }

    async fn put_policy(&self, repo: &RepoKey, record: PolicyRecord) -> Result<(), CatalogError> {
        self.write(CatalogCommand::PutPolicy { repo: repo.clone(), record }).await
    }

    async fn get_document(&self, key: &str) -> Result<Option<DocumentRecord>, CatalogError> {
        self.local.get_document(key).await
    }

    async fn put_document(&self, key: &str, record: DocumentRecord) -> Result<(), CatalogError> {
        self.write(CatalogCommand::PutDocument { key: key.to_owned(), record }).await
    }

    async fn get_replicas(&self, etag: &str) -> Result<Option<ReplicaRecord>, CatalogError> {
        self.local.get_replicas(etag).await
    }

    async fn list_replicas(&self) -> Result<Vec<(String, ReplicaRecord)>, CatalogError> {
        self.local.list_replicas().await
    }

    async fn add_replica(&self, etag: &str, node: &str, size: u64) -> Result<(), CatalogError> {
        self.write(CatalogCommand::AddReplica { etag: etag.to_owned(), node: node.to_owned(), size }).await
    }

    async fn remove_replica(&self, etag: &str, node: &str) -> Result<(), CatalogError> {
        self.write(CatalogCommand::RemoveReplica { etag: etag.to_owned(), node: node.to_owned() }).await
    }

    async fn list_policies(&self) -> Result<Vec<(RepoKey, PolicyRecord)>, CatalogError> {
        self.local.list_policies().await
    }

    async fn list_refs(&self) -> Result<Vec<(RepoKey, String, RefRecord)>, CatalogError> {
        self.local.list_refs().await
    }

    async fn list_manifest_keys(&self) -> Result<Vec<(RepoKey, String)>, CatalogError> {
        self.local.list_manifest_keys().await
    }

    async fn list_pins(&self) -> Result<Vec<(RepoKey, PinRecord)>, CatalogError> {
        self.local.list_pins().await
    }

    async fn put_pin(&self, repo: &RepoKey, record: PinRecord) -> Result<(), CatalogError> {
        self.write(CatalogCommand::PutPin { repo: repo.clone(), record }).await
    }

    async fn remove_pin(&self, repo: &RepoKey) -> Result<(), CatalogError> {
        self.write(CatalogCommand::RemovePin { repo: repo.clone() }).await
    }
}
