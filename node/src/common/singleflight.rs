//! Coalescing of concurrent identical work: N callers asking for the same key share one run.
//!
//! The work runs in its own task, so it completes (and its result is recorded) even if every caller
//! goes away; callers that arrive while it runs join it. The task removes its key when it ends, so a
//! finished run is never joined later and the table holds only runs in progress.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// The work of a flight ended without an answer: it panicked or its runtime shut down.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the shared work ended without an answer: {0}")]
pub struct FlightLost(pub String);

type Flight<V> = Shared<BoxFuture<'static, Result<V, FlightLost>>>;
type Flights<V> = Arc<Mutex<HashMap<String, (u64, Flight<V>)>>>;

/// Concurrent runs keyed by a string; `V` is what the work returns (often a `Result`).
pub struct SingleFlight<V: Clone + Send + Sync + 'static> {
    flights: Flights<V>,
    next_id: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> Default for SingleFlight<V> {
    fn default() -> Self {
        SingleFlight { flights: Arc::new(Mutex::new(HashMap::new())), next_id: AtomicU64::new(0) }
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// Runs `work` under `key`, or joins the run already in progress. Returns the result and whether
    /// this caller joined (true) or started (false) the run.
    pub async fn run<F>(&self, key: String, work: F) -> (Result<V, FlightLost>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, joined) = {
            let mut flights = self.flights.lock().expect("single-flight map poisoned");
            match flights.get(&key) {
                Some((_, flight)) => (flight.clone(), true),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let table = self.flights.clone();
                    let own_key = key.clone();
                    // The task cannot take the lock before this insert is done, so it always finds
                    // (and removes) its own entry.
                    let task = tokio::spawn(async move {
                        let value = work.await;
                        let mut flights = table.lock().expect("single-flight map poisoned");
                        if flights.get(&own_key).is_some_and(|(flight_id, _)| *flight_id == id) {
                            flights.remove(&own_key);
                        }
                        value
                    });
                    let flight = async move { task.await.map_err(|error| FlightLost(error.to_string())) }.boxed().shared();
                    flights.insert(key, (id, flight.clone()));
                    (flight, false)
                }
            }
        };
        (flight.await, joined)
    }

    /// How many runs are in progress.
    pub fn in_progress(&self) -> usize {
        self.flights.lock().expect("single-flight map poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..8 {
            let flights = flights.clone();
            let runs = runs.clone();
            let mut release_rx = release_rx.clone();
            callers.push(tokio::spawn(async move {
                flights
                    .run("key".into(), async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release_rx.wait_for(|released| *released).await.unwrap();
                        7
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        release_tx.send(true).unwrap();
        let mut joined = 0;
        for caller in callers {
            let (result, was_joined) = caller.await.unwrap();
            assert_eq!(result.unwrap(), 7);
            joined += usize::from(was_joined);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
        // Once finished, the key runs again.
        let (result, joined) = flights.run("key".into(), async { 8 }).await;
        assert_eq!((result.unwrap(), joined), (8, false));
        assert_eq!(flights.in_progress(), 0);
    }

    #[tokio::test]
    async fn the_work_outlives_a_caller_that_leaves_and_then_leaves_no_entry() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let finished = Arc::new(AtomicUsize::new(0));
        let marker = finished.clone();
        let caller = tokio::spawn({
            let flights = flights.clone();
            async move {
                flights
                    .run("key".into(), async move {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        marker.fetch_add(1, Ordering::SeqCst);
                        1
                    })
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(flights.in_progress(), 1);
        caller.abort();
        for _ in 0..100 {
            if finished.load(Ordering::SeqCst) == 1 && flights.in_progress() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the work finished without its caller");
        assert_eq!(flights.in_progress(), 0, "a flight nobody waited for left no entry behind");
        // A later caller gets a fresh run, not the old answer.
        let (result, joined) = flights.run("key".into(), async { 2 }).await;
        assert_eq!((result.unwrap(), joined), (2, false));
    }
}
