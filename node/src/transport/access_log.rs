//! The access log: one JSON line per request in `DATA/logs/access-YYYY-MM-DD.jsonl` (UTC days), with
//! the client address anonymised before it is written (IPv4 /24, IPv6 /48) and nothing secret: no
//! query string, no `Authorization`, no cookies. Files older than 14 days are reduced to anonymous
//! daily aggregates (`daily-YYYY-MM-DD.json`: requests, bytes and hit ratio per repository and per
//! status) and deleted.
//!
//! A request queues its method, path and user agent (one allocation, [`Requested`]) and how it was
//! answered ([`Answer`]) through a bounded queue to one writer task, which formats the JSON line,
//! anonymises the address and appends on its tick; when the disk cannot keep up, lines are dropped
//! and counted rather than slowing requests down. [`AccessLine`] is the line as it is read back.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use crate::telemetry::daily::{DailyAggregate, Tally, top_repositories};

/// How many days of request lines are kept before they become aggregates.
pub const KEPT_DAYS: u64 = 14;
/// Lines waiting for the writer at most (beyond, lines are dropped and counted).
const QUEUE: usize = 16_384;
/// How often the writer appends what is queued.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// One answered request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessLine {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub method: String,
    /// The path only: a query may carry secrets.
    pub path: String,
    pub status: u16,
    /// The bytes the response declared (`Content-Length`; 0 when it declared none).
    pub bytes: u64,
    pub duration_ms: u64,
    /// `X-Cache`: HIT, REVALIDATED, MISS, or `-`.
    pub cache: String,
    pub user_agent: String,
    /// The client's address, anonymised.
    pub client: String,
    /// `type:ORG/NAME` when the request named a repository.
    pub repo: Option<String>,
}

impl AccessLine {
    /// Builds a line; the address is anonymised here, so no other form of it is ever written.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        at: SystemTime,
        method: &str,
        path: &str,
        status: u16,
        bytes: u64,
        duration: Duration,
        cache: &str,
        user_agent: &str,
        client: Option<IpAddr>,
        repo: Option<String>,
    ) -> AccessLine {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let stamp = crate::common::time::utc_time(since_epoch.as_secs(), false);
        AccessLine {
            time: format!("{}.{:03}Z", stamp.trim_end_matches('Z'), since_epoch.subsec_millis()),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            bytes,
            duration_ms: duration.as_millis() as u64,
            cache: cache.to_owned(),
            user_agent: user_agent.chars().take(512).collect(),
            client: client.map_or_else(|| "-".to_owned(), |address| crate::common::net::anonymise(address).to_string()),
            repo,
        }
    }

    /// The UTC day (`YYYY-MM-DD`) of the line.
    #[cfg(test)]
    fn day(&self) -> &str {
        self.time.get(..10).unwrap_or("unknown")
    }
}

/// Who asked for what, copied from a request before it is answered (the path and user agent in
/// one allocation); queued with its [`Answer`] as is, and turned into a line by the writer, which
/// formats the time and anonymises the address off the request's path.
pub struct Requested {
    method: http::Method,
    /// The path, then the user agent (cut at [`USER_AGENT_BYTES`]).
    text: String,
    path_len: usize,
    client: Option<IpAddr>,
}

/// The most user-agent bytes queued (a line keeps 512 characters, at most this many bytes).
const USER_AGENT_BYTES: usize = 512 * 4;

/// How a request was answered.
pub struct Answer {
    pub at: SystemTime,
    pub status: u16,
    /// The bytes the response declared.
    pub bytes: u64,
    pub duration: Duration,
    pub cache: &'static str,
    /// The repository the request named; written as `type:ORG/NAME` by the writer.
    pub repo: Option<hfm_cluster::types::RepoKey>,
}

impl Requested {
    /// `path`: the path only (a query may carry secrets); `user_agent`: `None` when there is none
    /// or it is not text.
    pub fn new(method: &http::Method, path: &str, user_agent: Option<&str>, client: Option<IpAddr>) -> Requested {
        let user_agent = user_agent.unwrap_or("-");
        let mut cut = user_agent.len().min(USER_AGENT_BYTES);
        while !user_agent.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut text = String::with_capacity(path.len() + cut);
        text.push_str(path);
        text.push_str(&user_agent[..cut]);
        Requested { method: method.clone(), text, path_len: path.len(), client }
    }

    /// The line written for it, as a value (what [`Requested::write_line`] writes, parsed back).
    #[cfg(test)]
    fn into_line(self, answer: Answer) -> AccessLine {
        let (path, user_agent) = self.text.split_at(self.path_len);
        let Answer { at, status, bytes, duration, cache, repo } = answer;
        let repo = repo.map(|repo| repo.to_string());
        AccessLine::new(at, self.method.as_str(), path, status, bytes, duration, cache, user_agent, self.client, repo)
    }

    /// Appends its JSON line (the fields of [`AccessLine`], in its order) to `out`, the time's
    /// second from `clock`. Written directly rather than through an [`AccessLine`]: the writer
    /// formats every request's line, and building one costs as many allocations as it has fields.
    fn write_line(&self, answer: &Answer, clock: &mut SecondClock, out: &mut Vec<u8>) {
        let (path, user_agent) = self.text.split_at(self.path_len);
        let user_agent = match user_agent.char_indices().nth(512) {
            Some((cut, _)) => &user_agent[..cut],
            None => user_agent,
        };
        let since_epoch = answer.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let json_text = |out: &mut Vec<u8>, text: &str| serde_json::to_writer(&mut *out, text).expect("writing to memory");
        out.extend_from_slice(b"{\"time\":\"");
        out.extend_from_slice(clock.second(since_epoch.as_secs()).as_bytes());
        let _ = write!(out, ".{:03}Z\",\"method\":", since_epoch.subsec_millis());
        json_text(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json_text(out, path);
        let _ = write!(
            out,
            ",\"status\":{},\"bytes\":{},\"duration_ms\":{},\"cache\":",
            answer.status,
            answer.bytes,
            answer.duration.as_millis() as u64
        );
        json_text(out, answer.cache);
        out.extend_from_slice(b",\"user_agent\":");
        json_text(out, user_agent);
        match self.client {
            Some(address) => {
                let _ = write!(out, ",\"client\":\"{}\"", crate::common::net::anonymise(address));
            }
            None => out.extend_from_slice(b",\"client\":\"-\""),
        }
        out.extend_from_slice(b",\"repo\":");
        match &answer.repo {
            Some(repo) => json_text(out, &repo.to_string()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}\n");
    }
}

/// The UTC second a line's time starts with (`YYYY-MM-DDTHH:MM:SS`), formatted once per second.
#[derive(Default)]
struct SecondClock {
    seconds: Option<u64>,
    text: String,
}

impl SecondClock {
    fn second(&mut self, seconds: u64) -> &str {
        if self.seconds != Some(seconds) {
            self.text = crate::common::time::utc_time(seconds, false).trim_end_matches('Z').to_owned();
            self.seconds = Some(seconds);
        }
        &self.text
    }
}

/// Appends queued requests' lines to the files of their days.
fn append_requests(directory: &Path, batch: &[(Requested, Answer)]) -> std::io::Result<()> {
    let mut clock = SecondClock::default();
    let mut by_day: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut day = (None, String::new());
    for (requested, answer) in batch {
        let seconds = answer.at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if day.0 != Some(seconds / 86_400) {
            day = (Some(seconds / 86_400), clock.second(seconds)[..10].to_owned());
        }
        let text = match by_day.get_mut(&day.1) {
            Some(text) => text,
            None => by_day.entry(day.1.clone()).or_default(),
        };
        requested.write_line(answer, &mut clock, text);
    }
    append_days(directory, by_day)
}

/// The day name of a time.
fn day_of(at: SystemTime) -> String {
    crate::common::time::utc_day(at)
}

/// A handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    sender: tokio::sync::mpsc::Sender<(Requested, Answer)>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer for `directory`; it writes what is queued, then stops, on `shutdown`.
    pub fn spawn(directory: PathBuf, shutdown: CancellationToken) -> std::io::Result<(AccessLog, tokio::task::JoinHandle<()>)> {
        std::fs::create_dir_all(&directory)?;
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<(Requested, Answer)>(QUEUE);
        let task = tokio::spawn(async move {
            let mut last_maintained = String::new();
            loop {
                // The writer wakes on a tick, not per line: a request only queues its line, and
                // never makes a thread switch to have it written.
                let stopping = tokio::select! {
                    () = tokio::time::sleep(FLUSH_INTERVAL) => false,
                    () = shutdown.cancelled() => {
                        receiver.close();
                        true
                    }
                };
                let mut batch = Vec::new();
                while let Ok(line) = receiver.try_recv() {
                    batch.push(line);
                }
                if !batch.is_empty() {
                    let directory = directory.clone();
                    let today = day_of(SystemTime::now());
                    let maintain = std::mem::replace(&mut last_maintained, today.clone()) != today;
                    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                        append_requests(&directory, &batch)?;
                        if maintain {
                            reduce_old_days(&directory, SystemTime::now())?;
                        }
                        Ok(())
                    })
                    .await;
                    if let Ok(Err(error)) = written {
                        warn!(%error, "cannot write the access log");
                    }
                }
                if stopping {
                    break;
                }
            }
        });
        Ok((AccessLog { sender, dropped: Arc::new(AtomicU64::new(0)) }, task))
    }

    /// Queues a request's line; drops it (and counts it) when the writer is behind.
    pub fn record(&self, requested: Requested, answer: Answer) {
        if self.sender.try_send((requested, answer)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Exports the lines dropped because the writer was behind.
impl crate::telemetry::MetricSource for AccessLog {
    fn collect(&self, samples: &mut crate::telemetry::Samples<'_>) -> std::fmt::Result {
        samples.counter("hfm_access_log_dropped", "Access-log lines dropped because the writer was behind", self.dropped())
    }
}

/// Appends each day's text to that day's file.
fn append_days<D: std::fmt::Display>(directory: &Path, by_day: BTreeMap<D, Vec<u8>>) -> std::io::Result<()> {
    for (day, text) in by_day {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(directory.join(format!("access-{day}.jsonl")))?;
        file.write_all(&text)?;
    }
    Ok(())
}

/// Appends lines to the files of their days (tests write days of lines with it; the node writes
/// through [`append_requests`]).
#[cfg(test)]
pub fn append(directory: &Path, lines: &[AccessLine]) -> std::io::Result<()> {
    let mut by_day: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for line in lines {
        let text = by_day.entry(line.day()).or_default();
        serde_json::to_writer(&mut *text, line)?;
        text.push(b'\n');
    }
    append_days(directory, by_day)
}

/// Writes the anonymous aggregate of every complete day (before `now`'s) that has none yet, and
/// deletes the request lines of days older than [`KEPT_DAYS`] once their aggregate exists. Returns
/// the days whose lines were deleted. Unreadable lines are skipped.
pub fn reduce_old_days(directory: &Path, now: SystemTime) -> std::io::Result<Vec<String>> {
    let today = day_of(now);
    let oldest_kept = day_of(now.checked_sub(Duration::from_secs(86_400 * (KEPT_DAYS - 1))).unwrap_or(UNIX_EPOCH));
    let mut reduced = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(day) = name.strip_prefix("access-").and_then(|rest| rest.strip_suffix(".jsonl")) else { continue };
        if day >= today.as_str() {
            continue;
        }
        let target = directory.join(format!("daily-{day}.json"));
        let expired = day < oldest_kept.as_str();
        // The aggregate of a day is written once, the first time the log sees a later day; the
        // lines of an expiring day are read again so that nothing appended late is lost.
        if expired || !target.exists() {
            let aggregate = aggregate_day(day, &std::fs::read_to_string(entry.path())?);
            let staged = directory.join(format!(".daily-{day}.json.new"));
            std::fs::write(&staged, serde_json::to_vec_pretty(&aggregate)?)?;
            std::fs::rename(&staged, &target)?;
        }
        if expired {
            std::fs::remove_file(entry.path())?;
            reduced.push(day.to_owned());
        }
    }
    reduced.sort();
    Ok(reduced)
}

/// One day's lines reduced to its anonymous aggregate.
fn aggregate_day(day: &str, text: &str) -> DailyAggregate {
    let mut aggregate = DailyAggregate { date: day.to_owned(), ..DailyAggregate::default() };
    let mut all = Tally::default();
    for line in text.lines().filter_map(|line| serde_json::from_str::<AccessLine>(line).ok()) {
        aggregate.requests += 1;
        aggregate.bytes += line.bytes;
        all.add(line.bytes, &line.cache);
        aggregate.by_repo.entry(line.repo.clone().unwrap_or_else(|| "-".into())).or_default().add(line.bytes, &line.cache);
        aggregate.by_status.entry(line.status.to_string()).or_default().add(line.bytes, &line.cache);
    }
    all.finish();
    aggregate.hit_ratio = all.hit_ratio;
    aggregate.by_repo.values_mut().chain(aggregate.by_status.values_mut()).for_each(Tally::finish);
    aggregate
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_day(day: u64, second: u64) -> SystemTime {
        // 2026-01-01T00:00:00Z plus `day` days.
        UNIX_EPOCH + Duration::from_secs(1_767_225_600 + day * 86_400 + second)
    }

    fn line(at: SystemTime, status: u16, cache: &str, repo: Option<&str>, client: &str) -> AccessLine {
        AccessLine::new(
            at,
            "GET",
            "/org/model/resolve/main/config.json",
            status,
            100,
            Duration::from_millis(7),
            cache,
            "huggingface_hub/2.4.0",
            Some(client.parse().unwrap()),
            repo.map(str::to_owned),
        )
    }

    #[test]
    fn queued_requests_are_written_as_the_lines_they_stand_for() {
        use hfm_cluster::types::{RepoKey, RepoType};
        let directory = tempfile::tempdir().unwrap();
        let hostile_agent = format!("agent \"quoted\" \\ \u{1}\n{}", "é".repeat(600));
        let cases = [
            (
                http::Method::GET,
                "/org/model/resolve/main/config.json",
                Some("huggingface_hub/2.4.0"),
                Some("203.0.113.9".parse().unwrap()),
                Some(RepoKey::new(RepoType::Model, "org/model")),
                at_day(0, 86_399) + Duration::from_millis(999),
            ),
            (
                http::Method::HEAD,
                "/a\"b/\u{7f}",
                Some(hostile_agent.as_str()),
                Some("2001:db8:aaaa:bbbb::1".parse().unwrap()),
                None,
                at_day(1, 0),
            ),
            (
                http::Method::from_bytes(b"PROPFIND").unwrap(),
                "/",
                None,
                None,
                Some(RepoKey::new(RepoType::Dataset, "o/\"x\"")),
                at_day(1, 5) + Duration::from_millis(7),
            ),
        ];
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        for (method, path, agent, client, repo, at) in cases {
            let answer =
                || Answer { at, status: 206, bytes: 12_345, duration: Duration::from_micros(7_900), cache: "HIT", repo: repo.clone() };
            expected.push(Requested::new(&method, path, agent, client).into_line(answer()));
            batch.push((Requested::new(&method, path, agent, client), answer()));
        }
        append_requests(directory.path(), &batch).unwrap();
        let read = |day: &str| -> Vec<AccessLine> {
            let text = std::fs::read_to_string(directory.path().join(format!("access-{day}.jsonl"))).unwrap();
            text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
        };
        assert_eq!(read("2026-01-01"), expected[..1]);
        assert_eq!(read("2026-01-02"), expected[1..]);
        assert_eq!(expected[0].time, "2026-01-01T23:59:59.999Z");
        assert_eq!((expected[0].repo.as_deref(), expected[2].repo.as_deref()), (Some("model:org/model"), Some("dataset:o/\"x\"")));
        assert_eq!(expected[1].user_agent.chars().count(), 512);
        assert_eq!(
            (expected[1].client.as_str(), expected[2].client.as_str(), expected[2].user_agent.as_str()),
            ("2001:db8:aaaa::", "-", "-")
        );
    }

    #[test]
    fn lines_carry_anonymised_addresses_and_millisecond_times() {
        let line = line(at_day(0, 3723) + Duration::from_millis(45), 200, "HIT", None, "2001:db8:aaaa:bbbb::1");
        assert_eq!(line.time, "2026-01-01T01:02:03.045Z");
        assert_eq!(line.client, "2001:db8:aaaa::");
        assert_eq!(line.day(), "2026-01-01");
    }

    #[test]
    fn days_older_than_fourteen_become_anonymous_aggregates() {
        let directory = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        for day in 0..20 {
            lines.push(line(at_day(day, 10), 200, "HIT", Some("model:org/model"), "203.0.113.9"));
            lines.push(line(at_day(day, 20), 200, "MISS", Some("model:org/model"), "203.0.113.9"));
            lines.push(line(at_day(day, 30), 404, "-", None, "198.51.100.4"));
        }
        append(directory.path(), &lines).unwrap();
        // "Now" is day 19: days 6..=19 (14 days) stay, days 0..=5 are reduced.
        let reduced = reduce_old_days(directory.path(), at_day(19, 3600)).unwrap();
        assert_eq!(reduced, (1..=6).map(|day| format!("2026-01-{day:02}")).collect::<Vec<_>>());
        let mut names: Vec<String> =
            std::fs::read_dir(directory.path()).unwrap().map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names.iter().filter(|name| name.starts_with("access-")).count(), 14);
        assert_eq!(names.iter().filter(|name| name.starts_with("daily-")).count(), 19, "every complete day has its aggregate");
        assert!(names.contains(&"access-2026-01-07.jsonl".to_owned()) && !names.contains(&"access-2026-01-06.jsonl".to_owned()));
        let text = std::fs::read_to_string(directory.path().join("daily-2026-01-01.json")).unwrap();
        let aggregate: DailyAggregate = serde_json::from_str(&text).unwrap();
        assert_eq!((aggregate.requests, aggregate.bytes, aggregate.hit_ratio), (3, 300, Some(0.5)));
        assert_eq!(aggregate.by_repo["model:org/model"].requests, 2);
        assert_eq!(aggregate.by_status["404"].requests, 1);
        assert!(!text.contains("203.0.113") && !text.contains("198.51.100"), "aggregates carry no addresses");
        // A second run finds nothing more to reduce.
        assert!(reduce_old_days(directory.path(), at_day(19, 7200)).unwrap().is_empty());
        // The status page's ranking: the seven complete days before day 19.
        append(directory.path(), &[line(at_day(18, 40), 200, "HIT", Some("dataset:org/data"), "203.0.113.9")]).unwrap();
        std::fs::remove_file(directory.path().join("daily-2026-01-19.json")).unwrap();
        reduce_old_days(directory.path(), at_day(19, 9000)).unwrap();
        let top = top_repositories(directory.path(), at_day(19, 9000), 7, 10);
        assert_eq!(top, [("model:org/model".to_owned(), 14), ("dataset:org/data".to_owned(), 1)]);
        assert_eq!(top_repositories(directory.path(), at_day(19, 9000), 7, 1).len(), 1);
    }
}
