//! The read-through, written once: the catalog first; on a miss or a stale record one flight per key
//! (joined by every concurrent caller, finished even if they all leave) that looks again, asks the
//! cluster's metadata leader, or fetches from upstream and records the answer; a stale record is
//! served when upstream is down.
//!
//! What differs between policy, refs, manifests, repo info and refs listings is a [`Kind`]: its key,
//! how long a record is trusted, how it is read, asked and fetched.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use hfm_cluster::catalog::{Catalog, ManifestView, PolicyRecord};
use tracing::warn;

use super::Metadata;
use super::leader::{Forwarding, MetadataAnswer, MetadataRequest};
use crate::common::singleflight::SingleFlight;
use crate::common::time::now_ms;
use crate::hub::{CacheStatus, HubError};
use crate::upstream::Upstream;

/// A record as the catalog holds it.
pub(super) struct Recorded<V> {
    pub value: V,
    /// When it was last checked upstream; `None` for what never changes (keyed by commit).
    pub checked_at_ms: Option<u64>,
}

impl<V> Recorded<V> {
    pub fn immutable(value: V) -> Recorded<V> {
        Recorded { value, checked_at_ms: None }
    }

    pub fn checked(value: V, checked_at_ms: u64) -> Recorded<V> {
        Recorded { value, checked_at_ms: Some(checked_at_ms) }
    }

    fn is_fresh(&self, ttl: Duration) -> bool {
        match self.checked_at_ms {
            None => true,
            Some(checked_at_ms) => is_fresh_at(checked_at_ms, now_ms(), ttl),
        }
    }
}

/// How far in the future a record's check may lie and still count: the cluster clock's own tolerance.
const FUTURE_TOLERANCE: Duration = Duration::from_secs(2);

/// Whether a record checked at `checked_at_ms` is fresh at `now_ms` under `ttl`. A check stamped in
/// the future (a writer whose clock ran ahead before the cluster clock was agreed) is not: counting it
/// fresh would keep the record late by the writer's error, checking again costs one upstream request.
fn is_fresh_at(checked_at_ms: u64, now_ms: u64, ttl: Duration) -> bool {
    if checked_at_ms > now_ms.saturating_add(FUTURE_TOLERANCE.as_millis() as u64) {
        return false;
    }
    now_ms.saturating_sub(checked_at_ms) < ttl.as_millis() as u64
}

/// Until when (ms) a record checked at `checked_at_ms` stays fresh under `ttl`; `None`: it is not
/// fresh at `now_ms`.
pub(super) fn fresh_until(checked_at_ms: u64, now_ms: u64, ttl: Duration) -> Option<u64> {
    is_fresh_at(checked_at_ms, now_ms, ttl).then(|| checked_at_ms.saturating_add(ttl.as_millis() as u64))
}

/// What the fetch of a kind may use: the catalog to record into, and upstream.
pub(super) struct FetchContext<'a> {
    pub catalog: &'a dyn Catalog,
    pub upstream: &'a Upstream,
}

/// The flights in progress, one map per value type.
#[derive(Default)]
pub(super) struct Flights {
    pub policies: SingleFlight<Result<PolicyRecord, HubError>>,
    pub commits: SingleFlight<Result<String, HubError>>,
    pub manifests: SingleFlight<Result<ManifestView, HubError>>,
    pub documents: SingleFlight<Result<Bytes, HubError>>,
}

impl Flights {
    /// Metadata fetches in progress, of every kind.
    pub fn in_progress(&self) -> usize {
        self.policies.in_progress() + self.commits.in_progress() + self.manifests.in_progress() + self.documents.in_progress()
    }
}

/// One kind of metadata read through the catalog.
pub(super) trait Kind: Send + Sync + 'static {
    type Value: Clone + Send + Sync + 'static;

    /// Names the kind in logs.
    const WHAT: &'static str;

    /// The key concurrent callers share a flight under (and, for led kinds, placement ranks).
    fn flight_key(&self) -> String;

    fn flights(flights: &Flights) -> &SingleFlight<Result<Self::Value, HubError>>;

    /// The catalog's record, if any.
    fn recorded(&self, catalog: &dyn Catalog) -> impl Future<Output = Result<Option<Recorded<Self::Value>>, HubError>> + Send;

    /// The question for the cluster's metadata leader; `None` for kinds each node fetches itself.
    fn question(&self) -> Option<MetadataRequest> {
        None
    }

    /// The value in the leader's answer; `None` when it answered another question.
    fn from_answer(_answer: MetadataAnswer) -> Option<Self::Value> {
        None
    }

    /// Fetches the value from upstream and records it (recording failures are logged, not raised).
    fn fetch(&self, context: FetchContext<'_>) -> impl Future<Output = Result<Self::Value, HubError>> + Send;
}

impl Metadata {
    /// Reads `kind` through the catalog (see the module doc). `ttl` is how long a mutable record is
    /// trusted.
    pub(super) async fn read_through<K: Kind>(
        &self,
        kind: K,
        ttl: Duration,
        forwarding: Forwarding,
    ) -> Result<(K::Value, CacheStatus), HubError> {
        let catalog = self.inner.catalog.as_ref();
        let recorded = kind.recorded(catalog).await?;
        if let Some(record) = recorded.as_ref().filter(|record| record.is_fresh(ttl)) {
            return Ok((record.value.clone(), CacheStatus::Hit));
        }
        let key = kind.flight_key();
        let metadata = self.clone();
        let (fetched, joined) = K::flights(&self.inner.flights)
            .run(key, async move {
                // A flight that finished between our caller's catalog read and the start of this
                // one has already done the work.
                let catalog = metadata.inner.catalog.as_ref();
                if let Some(record) = kind.recorded(catalog).await?.filter(|record| record.is_fresh(ttl)) {
                    return Ok(record.value);
                }
                if let Some(question) = kind.question()
                    && let Some(answer) = metadata.ask_leader(forwarding, question).await
                {
                    return K::from_answer(answer?).ok_or_else(|| HubError::internal("the metadata leader answered another question"));
                }
                kind.fetch(FetchContext { catalog, upstream: &metadata.inner.upstream }).await
            })
            .await;
        if joined {
            crate::telemetry::metrics().metadata_joined();
        }
        let fetched = fetched.unwrap_or_else(|lost| Err(HubError::internal(lost)));
        match (fetched, recorded) {
            (Ok(value), Some(_)) => Ok((value, CacheStatus::Revalidated)),
            (Ok(value), None) => Ok((value, CacheStatus::Miss)),
            (Err(error), Some(stale)) if error.is_upstream_outage() => {
                warn!(what = K::WHAT, %error, "upstream down; serving the stale record");
                Ok((stale.value, CacheStatus::Hit))
            }
            (Err(error), _) => Err(error),
        }
    }
}

/// Logs a catalog write that did not happen. A cache never fails a download because it could not
/// record something (no Raft quorum, a full disk): the answer is served unrecorded.
pub(super) fn note_unrecorded(result: Result<(), hfm_cluster::catalog::CatalogError>, what: &str) {
    if let Err(error) = result {
        warn!(%error, what, "serving without recording in the catalog");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::metadata::MetadataSettings;

    #[test]
    fn a_check_from_the_future_is_not_fresh() {
        let (now, ttl) = (1_800_000_000_000, Duration::from_secs(60));
        assert!(is_fresh_at(now - 59_000, now, ttl));
        assert!(!is_fresh_at(now - 60_000, now, ttl));
        // Within the clock's tolerance ahead: fresh; five minutes ahead: checked again.
        assert!(is_fresh_at(now + 1_000, now, ttl));
        assert!(!is_fresh_at(now + 300_000, now, ttl));
    }

    /// A kind whose record lives in memory and whose upstream is a script.
    struct Scripted {
        record: Arc<Mutex<Option<Recorded<String>>>>,
        fetches: Arc<AtomicUsize>,
        /// What upstream does: `Some(value)` answers, `None` is down.
        upstream: Option<String>,
        /// Upstream takes this long (so concurrent callers meet in one flight).
        delay: Duration,
    }

    impl Kind for Scripted {
        type Value = String;
        const WHAT: &'static str = "scripted";

        fn flight_key(&self) -> String {
            "scripted".into()
        }

        fn flights(flights: &Flights) -> &SingleFlight<Result<String, HubError>> {
            &flights.commits
        }

        async fn recorded(&self, _catalog: &dyn Catalog) -> Result<Option<Recorded<String>>, HubError> {
            Ok(self
                .record
                .lock()
                .unwrap()
                .as_ref()
                .map(|record| Recorded { value: record.value.clone(), checked_at_ms: record.checked_at_ms }))
        }

        async fn fetch(&self, _context: FetchContext<'_>) -> Result<String, HubError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let value = self.upstream.clone().ok_or_else(|| HubError::upstream_unreachable("scripted outage"))?;
            *self.record.lock().unwrap() = Some(Recorded::checked(value.clone(), now_ms()));
            Ok(value)
        }
    }

    struct Fixture {
        metadata: Metadata,
        record: Arc<Mutex<Option<Recorded<String>>>>,
        fetches: Arc<AtomicUsize>,
        _directory: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let directory = tempfile::tempdir().unwrap();
            let catalog = Arc::new(hfm_cluster::catalog::LocalCatalog::open(&directory.path().join("catalog.redb")).unwrap());
            let upstream = Upstream::new("http://127.0.0.1:9").unwrap();
            let settings =
                MetadataSettings { ref_ttl: Duration::from_secs(60), policy_ttl: Duration::from_secs(60), max_manifest_files: 1000 };
            Fixture {
                metadata: Metadata::new(catalog, upstream, None, settings),
                record: Arc::default(),
                fetches: Arc::default(),
                _directory: directory,
            }
        }

        fn kind(&self, upstream: Option<&str>) -> Scripted {
            Scripted {
                record: self.record.clone(),
                fetches: self.fetches.clone(),
                upstream: upstream.map(str::to_owned),
                delay: Duration::from_millis(50),
            }
        }

        async fn read(&self, upstream: Option<&str>) -> Result<(String, CacheStatus), HubError> {
            self.metadata.read_through(self.kind(upstream), Duration::from_secs(60), Forwarding::AskCluster).await
        }
    }

    #[tokio::test]
    async fn a_miss_is_fetched_and_recorded_then_hits() {
        let fixture = Fixture::new();
        assert_eq!(fixture.read(Some("a")).await.unwrap(), ("a".to_owned(), CacheStatus::Miss));
        assert_eq!(fixture.read(Some("b")).await.unwrap(), ("a".to_owned(), CacheStatus::Hit), "fresh: upstream is not asked");
        assert_eq!(fixture.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_record_is_revalidated_and_served_stale_only_when_upstream_is_down() {
        let fixture = Fixture::new();
        *fixture.record.lock().unwrap() = Some(Recorded::checked("old".to_owned(), now_ms() - 120_000));
        assert_eq!(fixture.read(None).await.unwrap(), ("old".to_owned(), CacheStatus::Hit), "upstream down: the stale record");
        assert_eq!(fixture.read(Some("new")).await.unwrap(), ("new".to_owned(), CacheStatus::Revalidated));
        assert_eq!(fixture.fetches.load(Ordering::SeqCst), 2);
        let empty = Fixture::new();
        let error = empty.read(None).await.unwrap_err();
        assert_eq!(error.code.as_deref(), Some("UpstreamUnreachable"), "nothing recorded and upstream down: the outage");
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let fixture = Arc::new(Fixture::new());
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let fixture = fixture.clone();
                tokio::spawn(async move { fixture.read(Some("shared")).await })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().0, "shared");
        }
        assert_eq!(fixture.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn immutable_records_never_go_stale() {
        let fixture = Fixture::new();
        *fixture.record.lock().unwrap() = Some(Recorded::immutable("forever".to_owned()));
        assert_eq!(fixture.read(Some("other")).await.unwrap(), ("forever".to_owned(), CacheStatus::Hit));
        assert_eq!(fixture.fetches.load(Ordering::SeqCst), 0);
    }
}
