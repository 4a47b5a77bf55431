//! Replica sets: the catalog records which nodes hold each blob, and every node keeps those records
//! true for itself and holds the blobs placement gives it.
//!
//! - A blob stored or removed on this node (a fill, an eviction, a damaged copy dropped) is recorded
//!   through the catalog. A blob just stored is offered to the other nodes placement names for it
//!   (the `replica` peer service); they copy it from the holders, never from upstream, so reaching R
//!   copies costs no upstream traffic.
//! - Every `replica_check_interval` the node reconciles the records with its store: records naming it
//!   for blobs it lacks are corrected, blobs it holds that the records miss are added (writes lost
//!   while the catalog had no quorum), and blobs it should hold but lacks are copied. A node that was
//!   dead, paused or cut off catches up this way without anyone's help.
//! - The files of pinned repositories belong on every serving node and are never evicted; without a
//!   holder they are filled through the usual cluster path (fill leader, then upstream).
//!
//! Copies run in the background, a few at a time, and stop with the node. They use free room only:
//! a replica never evicts a blob clients use (else two blobs that do not both fit would push each
//! other out forever); an evicted copy simply leaves the record. Pinned files may evict.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hfm_cluster::catalog::{Catalog, ReplicaRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::pinned::{PinnedBlob, pinned_blobs};
use super::sources::BlobSources;
use crate::peers::Peers;
use crate::store::{BlobSource, BlobStore, FillOutcome, FillState, Room, StoreEvent, is_valid_etag};

/// The peer service through which a node that stored a blob offers it to the other replicas.
pub const REPLICA_SERVICE: &str = "replica";

/// How many blob copies a node runs at once for replication; client traffic comes first.
const PARALLEL_COPIES: usize = 2;
/// How long an offer to a peer may take; the periodic reconciliation covers an offer lost.
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest blob a peer may offer (the Hub's own per-file limit is far below).
const MAX_OFFERED_SIZE: u64 = 1 << 42;

/// "I hold this blob; you are one of its replicas."
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaOffer {
    pub etag: String,
    pub size: u64,
    pub holder: String,
}

/// What nodes tell each other through the `replica` service.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReplicaMessage {
    Offer(ReplicaOffer),
    /// "The pins changed: reconcile now rather than at your next round."
    Reconcile,
}

/// Counters for `status`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReplicaCounters {
    pub copies_started: u64,
    pub copies_completed: u64,
    pub copies_failed: u64,
    pub reconciliations: u64,
}

/// The node's replica keeper; a cheap handle.
#[derive(Clone)]
pub struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    store: BlobStore,
    peers: Peers,
    sources: BlobSources,
    replicas: usize,
    interval: Duration,
    copy_slots: Arc<Semaphore>,
    /// Blobs being copied now, so a second offer or round does not queue them again.
    copying: Mutex<HashSet<String>>,
    counters: Mutex<ReplicaCounters>,
    tasks: TaskTracker,
    /// Wakes the keeper for a reconciliation round before its interval is up.
    wake: tokio::sync::Notify,
}

impl Replicas {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        store: BlobStore,
        peers: Peers,
        sources: BlobSources,
        replicas: usize,
        interval: Duration,
    ) -> Replicas {
        Replicas {
            inner: Arc::new(Inner {
                catalog,
                store,
                peers,
                sources,
                replicas: replicas.max(1),
                interval,
                copy_slots: Arc::new(Semaphore::new(PARALLEL_COPIES)),
                copying: Mutex::new(HashSet::new()),
                counters: Mutex::new(ReplicaCounters::default()),
                tasks: TaskTracker::new(),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn counters(&self) -> ReplicaCounters {
        *self.inner.counters.lock().expect("counters poisoned")
    }

    fn self_name(&self) -> &str {
        self.inner.peers.self_name()
    }

    /// Records store events and reconciles periodically until `shutdown`; then waits for the copies.
    pub fn spawn(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let keeper = self.clone();
        let mut events = self.inner.store.subscribe();
        tokio::spawn(async move {
            // The first round comes soon after start: a restarted node catches up without waiting
            // a whole interval.
            let mut next_round = tokio::time::Instant::now() + Duration::from_secs(3).min(keeper.inner.interval);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    event = events.recv() => match event {
                        Some(event) => keeper.record(event).await,
                        None => break,
                    },
                    () = tokio::time::sleep_until(next_round) => {
                        keeper.reconcile(&shutdown).await;
                        next_round = tokio::time::Instant::now() + keeper.inner.interval;
                    }
                    () = keeper.inner.wake.notified() => {
                        keeper.reconcile(&shutdown).await;
                        next_round = tokio::time::Instant::now() + keeper.inner.interval;
                    }
                }
            }
            keeper.inner.tasks.close();
            keeper.inner.tasks.wait().await;
        })
    }

    /// Records one store event in the catalog; a blob just stored is offered to its other replicas.
    async fn record(&self, event: StoreEvent) {
        let catalog = &self.inner.catalog;
        match event {
            StoreEvent::Stored { etag, size } => {
                if let Err(error) = catalog.add_replica(&etag, self.self_name(), size).await {
                    debug!(%etag, %error, "cannot record a replica now; the next reconciliation will");
                }
                self.offer(&etag, size).await;
            }
            StoreEvent::Removed { etag } => {
                if let Err(error) = catalog.remove_replica(&etag, self.self_name()).await {
                    debug!(%etag, %error, "cannot record a removed replica now; the next reconciliation will");
                }
            }
        }
    }

    /// Runs a reconciliation round here soon.
    pub fn kick(&self) {
        self.inner.wake.notify_one();
    }

    /// Runs a reconciliation round on every node now (after a pin changed); a node that cannot be
    /// reached catches up at its next round.
    pub async fn reconcile_everywhere(&self) {
        self.kick();
        let Ok(body) = serde_json::to_vec(&ReplicaMessage::Reconcile) else { return };
        for name in self.inner.peers.topology_names() {
            if name == self.self_name() {
                continue;
            }
            let Some(address) = self.inner.peers.peer_address(&name) else { continue };
            if let Err(error) = self.inner.peers.endpoint().call(&address, REPLICA_SERVICE, body.clone(), OFFER_TIMEOUT).await {
                debug!(node = %name, %error, "cannot ask for a reconciliation now");
            }
        }
    }

    /// Tells the placement's other replicas of `etag` that this node holds it.
    async fn offer(&self, etag: &str, size: u64) {
        let holders = match self.inner.catalog.get_replicas(etag).await {
            Ok(record) => record.unwrap_or_default(),
            Err(_) => ReplicaRecord::default(),
        };
        let offer = ReplicaOffer { etag: etag.to_owned(), size, holder: self.self_name().to_owned() };
        let Ok(body) = serde_json::to_vec(&ReplicaMessage::Offer(offer)) else { return };
        for target in self.inner.peers.replica_targets(etag, self.inner.replicas) {
            if target == self.self_name() || holders.holds(&target) {
                continue;
            }
            let Some(address) = self.inner.peers.peer_address(&target) else { continue };
            match self.inner.peers.endpoint().call(&address, REPLICA_SERVICE, body.clone(), OFFER_TIMEOUT).await {
                Ok(_) => debug!(%etag, %target, "offered a replica"),
                Err(error) => debug!(%etag, %target, %error, "replica offer not delivered; reconciliation will catch up"),
            }
        }
    }

    /// Starts copying a blob in the background unless it is here, being filled or being copied. Only
    /// pinned blobs may evict others to make room.
    fn start_copy(&self, etag: &str, size: u64, source: Arc<dyn BlobSource>, room: Room) {
        if self.inner.store.get(etag).is_some() || self.inner.store.fill_in_progress(etag).is_some() {
            return;
        }
        if !self.inner.copying.lock().expect("copying poisoned").insert(etag.to_owned()) {
            return;
        }
        self.inner.counters.lock().expect("counters poisoned").copies_started += 1;
        let keeper = self.clone();
        let etag = etag.to_owned();
        self.inner.tasks.spawn(async move {
            let succeeded = keeper.copy(&etag, size, source, room).await;
            keeper.inner.copying.lock().expect("copying poisoned").remove(&etag);
            let mut counters = keeper.inner.counters.lock().expect("counters poisoned");
            if succeeded {
                counters.copies_completed += 1;
            } else {
                counters.copies_failed += 1;
            }
        });
    }

    async fn copy(&self, etag: &str, size: u64, source: Arc<dyn BlobSource>, room: Room) -> bool {
        let Ok(_slot) = self.inner.copy_slots.clone().acquire_owned().await else { return false };
        match self.inner.store.fill_or_join_with(etag, size, source, room) {
            Ok(FillOutcome::Stored(_)) => true,
            Ok(FillOutcome::Filling(fill)) => {
                let state = fill.finished().await;
                if state == FillState::Complete {
                    info!(%etag, size, "replica caught up");
                }
                state == FillState::Complete
            }
            Ok(FillOutcome::NoRoom) => {
                debug!(%etag, size, "no free room for a replica");
                false
            }
            Err(error) => {
                warn!(%etag, %error, "cannot start a replica copy");
                false
            }
        }
    }

    /// Answers a peer's offer: copy the blob from it (and the other known holders).
    pub async fn accept_offer(&self, offer: ReplicaOffer) -> Result<(), String> {
        if !is_valid_etag(&offer.etag) || offer.size > MAX_OFFERED_SIZE {
            return Err("not a blob".into());
        }
        let mut holders = vec![offer.holder.clone()];
        if let Ok(Some(record)) = self.inner.catalog.get_replicas(&offer.etag).await {
            holders.extend(record.holders.into_iter().filter(|holder| *holder != offer.holder));
        }
        if let Some(source) = self.inner.sources.copy_source(&offer.etag, offer.size, &holders) {
            self.start_copy(&offer.etag, offer.size, source, Room::FreeOnly);
        }
        Ok(())
    }

    /// One reconciliation round (see the module doc).
    async fn reconcile(&self, shutdown: &CancellationToken) {
        let self_name = self.self_name().to_owned();
        let catalog = &self.inner.catalog;
        let store = &self.inner.store;
        // Until the store has listed what is on disk, a blob not listed yet would look lost, and its
        // replica record would be dropped: wait for the next round.
        if !store.is_scanned() {
            debug!("the store is still listing its blobs; reconciling later");
            return;
        }
        let records = match catalog.list_replicas().await {
            Ok(records) => records,
            Err(error) => {
                warn!(%error, "cannot read replica records");
                return;
            }
        };
        let pinned = pinned_blobs(self.inner.catalog.as_ref()).await;
        store.set_protected(pinned.keys().cloned().collect());
        // Etags only (a directory listing, no `stat` per blob); sizes are read for the few recorded now.
        let held: HashSet<String> = store.blobs().into_iter().collect();
        let mut unrecorded_writes = 0usize;
        let mut recorded = HashSet::new();
        for (etag, record) in &records {
            if shutdown.is_cancelled() {
                return;
            }
            recorded.insert(etag.as_str());
            let here = held.contains(etag);
            if record.holds(&self_name) && !here && store.fill_in_progress(etag).is_none() {
                unrecorded_writes += usize::from(catalog.remove_replica(etag, &self_name).await.is_err());
            }
            if here && !record.holds(&self_name) {
                if let Some(size) = store.stored_size(etag) {
                    unrecorded_writes += usize::from(catalog.add_replica(etag, &self_name, size).await.is_err());
                }
            }
            let wanted = pinned.contains_key(etag) || self.inner.peers.replica_targets(etag, self.inner.replicas).contains(&self_name);
            if wanted && !here {
                match pinned.get(etag) {
                    Some(pin) => self.start_copy(etag, record.size, self.pinned_source(etag, pin, &record.holders), Room::EvictIfNeeded),
                    None => {
                        if let Some(source) = self.inner.sources.copy_source(etag, record.size, &record.holders) {
                            self.start_copy(etag, record.size, source, Room::FreeOnly);
                        }
                    }
                }
            }
        }
        for etag in &held {
            if !recorded.contains(etag.as_str()) {
                if let Some(size) = store.stored_size(etag) {
                    unrecorded_writes += usize::from(catalog.add_replica(etag, &self_name, size).await.is_err());
                }
            }
        }
        for (etag, pin) in &pinned {
            if !recorded.contains(etag.as_str()) && !held.contains(etag) {
                self.start_copy(etag, pin.size, self.pinned_source(etag, pin, &[]), Room::EvictIfNeeded);
            }
        }
        if unrecorded_writes > 0 {
            debug!(unrecorded_writes, "replica records could not all be corrected now");
        }
        self.inner.counters.lock().expect("counters poisoned").reconciliations += 1;
    }

    /// A pinned blob comes from its holders first, then through the cluster's fill path (the fill
    /// leader fetches upstream once for everyone).
    fn pinned_source(&self, etag: &str, pin: &PinnedBlob, holders: &[String]) -> Arc<dyn BlobSource> {
        self.inner.sources.source_with_holders(etag, pin.size, &pin.origin, holders)
    }
}

/// The `replica` peer service: offers from peers that stored a blob this node should hold, and
/// requests to reconcile now.
pub struct ReplicaService {
    replicas: Replicas,
}

impl ReplicaService {
    pub fn new(replicas: Replicas) -> ReplicaService {
        ReplicaService { replicas }
    }
}

#[async_trait::async_trait]
impl hfm_cluster::peer::RpcHandler for ReplicaService {
    async fn handle(&self, caller: &str, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let message: ReplicaMessage = serde_json::from_slice(&request).map_err(|error| format!("undecodable replica message: {error}"))?;
        match message {
            // A node offers only what it holds itself.
            ReplicaMessage::Offer(offer) if offer.holder != caller => {
                warn!(caller, holder = %offer.holder, "a replica offer names another holder; refused");
                return Err(format!("{caller} may not offer for {}", offer.holder));
            }
            ReplicaMessage::Offer(offer) => self.replicas.accept_offer(offer).await?,
            ReplicaMessage::Reconcile => self.replicas.kick(),
        }
        Ok(Vec::new())
    }
}

/// Exports the replica keeper's copies.
impl crate::telemetry::MetricSource for Replicas {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        let counters = self.counters();
        let outcomes = [("started", counters.copies_started), ("completed", counters.copies_completed), ("failed", counters.copies_failed)];
        samples.counters("hfm_replica_copies", "Replica copies by outcome", "outcome", &outcomes)
    }
}
