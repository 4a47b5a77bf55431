//! The directories the rsync modules serve: pinned repositories as hard links to this node's
//! verified blobs, and the catalog's Parquet indexes.
//!
//! Every module serves one *generation*, `DATA/rsync/gen/{module}/{N}`, which never changes once
//! built. A change (a pin completed on this node, a pinned branch switched to its new commit, a new
//! index snapshot) builds generation N+1 beside it and points the daemon's configuration at it. The
//! daemon reads its configuration once per connection, so a client in the middle of a transfer keeps
//! the generation it started with — the old tree or the new one, never a mix — and the next
//! connection gets the new one. A retired generation is deleted once no process works inside it
//! (checked through `/proc/*/cwd`) and a grace period has passed.
//!
//! - A repository appears (`models/ORG/NAME/…`, `datasets/ORG/NAME/…`) only when every file of its
//!   commit is a verified blob on this node; until the new commit is complete here the old one stays.
//! - File times are derived from the blob's etag, the same on every node and every rebuild, so a
//!   second pull (from any node) transfers nothing; directories carry one fixed time.
//! - `ORG/NAME/.hf-mirror-trace` names the commit and when this node switched to it; it is written
//!   after the repository's files.
//! - `indexes/latest/*.parquet` is the newest snapshot; `indexes/{UTC stamp}/` keeps the last few.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hfm_cluster::catalog::EntryKind;
use hfm_cluster::types::{RepoKey, RepoType};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::daemon::{ModuleDirs, Rsyncd};
use super::pins::Pins;
use crate::common::time::{now_ms, utc_time};
use crate::store::{BlobStore, is_valid_etag};

/// The name of the per-repository trace file.
pub const TRACE_FILE: &str = ".hf-mirror-trace";
/// How often the trees are compared with the pins and the store.
const ROUND: Duration = Duration::from_secs(3);
/// How long a retired generation stays at least (a connection reads the configuration, then enters
/// the module directory; this covers that gap many times over).
const RETIRED_GRACE: Duration = Duration::from_secs(60);
/// The modification time of every directory in a tree (2001-09-09T01:46:40Z).
const DIRECTORY_TIME: u64 = 1_000_000_000;
/// How many index snapshots the `indexes` module keeps besides `latest`.
const KEPT_INDEX_SNAPSHOTS: usize = 7;

/// The modules that hold repositories, by repository type.
pub fn module_of(repo_type: RepoType) -> Option<&'static str> {
    match repo_type {
        RepoType::Model => Some("models"),
        RepoType::Dataset => Some("datasets"),
        RepoType::Space | RepoType::Kernel => None,
    }
}

/// The modification time every node gives a blob in the trees: derived from the etag (28 bits of
/// it, so 2001–2010), so that equal content has equal times everywhere and rsync's quick check
/// (size and time) skips it, while changed content of the same size almost surely differs in time.
pub fn blob_time(etag: &str) -> SystemTime {
    let bits = u64::from_str_radix(etag.get(..7).unwrap_or("0"), 16).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(DIRECTORY_TIME + bits)
}

/// Splits a repository path from upstream into components safe to create under a tree: no empty,
/// `.` or `..` component, no NUL, no absolute path, bounded lengths. `None` for anything else.
pub fn safe_components(path: &str) -> Option<Vec<&str>> {
    if path.is_empty() || path.len() > 4096 || path.starts_with('/') {
        return None;
    }
    let components: Vec<&str> = path.split('/').collect();
    let safe = components.iter().all(|component| {
        !component.is_empty() && *component != "." && *component != ".." && component.len() <= 255 && !component.contains('\0')
    });
    safe.then_some(components)
}

/// One repository as a module shows it.
#[derive(Clone, Debug)]
pub struct RepoTree {
    pub repo: RepoKey,
    pub revision: String,
    pub commit: String,
    pub switched_at_ms: u64,
    /// (path in the repository, verified blob, etag).
    pub files: Vec<(String, PathBuf, String)>,
}

fn set_time(path: &Path, time: SystemTime) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.modified().ok() != Some(time) {
        file.set_modified(time)?;
    }
    Ok(())
}

/// Gives every directory below `directory` (and itself) [`DIRECTORY_TIME`], children first.
fn set_directory_times(directory: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(directory)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            set_directory_times(&entry.path())?;
        }
    }
    set_time(directory, UNIX_EPOCH + Duration::from_secs(DIRECTORY_TIME))
}

/// Lays out one repository under `base` (`…/ORG/NAME`): hard links, then the trace file.
fn build_repo(base: &Path, tree: &RepoTree, node: &str) -> anyhow::Result<()> {
    for (path, blob, etag) in &tree.files {
        let components = safe_components(path).with_context(|| format!("unsafe path {path:?}"))?;
        if components == [TRACE_FILE] {
            anyhow::bail!("the repository has a file named {TRACE_FILE}, which the trace needs");
        }
        let target = components.iter().fold(base.to_path_buf(), |target, component| target.join(component));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating the directory of {path:?}"))?;
        }
        // The blob's inode carries the time, so every link (and every later generation) shows it.
        set_time(blob, blob_time(etag)).with_context(|| format!("setting the time of {}", blob.display()))?;
        std::fs::hard_link(blob, &target).with_context(|| format!("linking {path:?}"))?;
    }
    std::fs::create_dir_all(base)?;
    let seconds = tree.switched_at_ms / 1000;
    let trace = format!(
        "repo: {}\ntype: {}\nrevision: {}\ncommit: {}\nswitched: {}\nnode: {node}\n",
        tree.repo.repo_id,
        tree.repo.repo_type.as_str(),
        tree.revision,
        tree.commit,
        utc_time(seconds, false)
    );
    let trace_path = base.join(TRACE_FILE);
    std::fs::write(&trace_path, trace)?;
    set_time(&trace_path, UNIX_EPOCH + Duration::from_secs(seconds))?;
    Ok(())
}

/// Builds a generation of a repository module at `target` (staged beside it, renamed into place when
/// whole). Returns the repositories built; one that cannot be laid out (an unsafe path, a blob
/// evicted meanwhile) is left out and reported in the second list.
pub fn build_generation(target: &Path, trees: &[RepoTree], node: &str) -> anyhow::Result<(Vec<RepoKey>, Vec<(RepoKey, String)>)> {
    let staged = target.with_file_name(format!(".building-{}", target.file_name().and_then(|name| name.to_str()).unwrap_or("x")));
    if staged.exists() {
        std::fs::remove_dir_all(&staged)?;
    }
    std::fs::create_dir_all(&staged).with_context(|| format!("creating {}", staged.display()))?;
    let (mut built, mut failed) = (Vec::new(), Vec::new());
    for tree in trees {
        let Some(base) =
            safe_components(&tree.repo.repo_id).filter(|parts| parts.len() == 2).map(|parts| staged.join(parts[0]).join(parts[1]))
        else {
            failed.push((tree.repo.clone(), "not ORG/NAME".to_owned()));
            continue;
        };
        match build_repo(&base, tree, node) {
            Ok(()) => built.push(tree.repo.clone()),
            Err(error) => {
                let _ = std::fs::remove_dir_all(&base);
                failed.push((tree.repo.clone(), format!("{error:#}")));
            }
        }
    }
    set_directory_times(&staged)?;
    std::fs::rename(&staged, target).with_context(|| format!("renaming {} into place", staged.display()))?;
    Ok((built, failed))
}

/// Whether any process (an rsync daemon's connection) has its working directory inside `directory`.
pub fn in_use(directory: &Path) -> bool {
    let Ok(processes) = std::fs::read_dir("/proc") else { return false };
    processes
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|byte| byte.is_ascii_digit()))
        .any(|entry| std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(directory)))
}

/// What the trees showed, kept in `DATA/rsync/trees.json` across restarts.
#[derive(Default, Serialize, Deserialize)]
struct TreesState {
    /// Per repository (`type:ORG/NAME`): the commit shown and since when.
    shown: BTreeMap<String, Shown>,
    /// Per module: the generation served and the (repository, commit) pairs in it.
    generations: BTreeMap<String, Generation>,
    last_index_ms: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Shown {
    commit: String,
    switched_at_ms: u64,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
struct Generation {
    number: u64,
    layout: Vec<(String, String)>,
}

fn state_path(root: &Path) -> PathBuf {
    root.join("trees.json")
}

fn generation_dir(root: &Path, module: &str, number: u64) -> PathBuf {
    root.join("gen").join(module).join(number.to_string())
}

fn load_state(root: &Path) -> TreesState {
    std::fs::read(state_path(root)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
}

/// The directories the modules served before this start (their generations, when still on disk),
/// else empty ones: the daemon starts with them, so a restart does not hide the trees.
pub fn initial_module_dirs(data_dir: &Path) -> anyhow::Result<ModuleDirs> {
    let root = data_dir.join("rsync");
    let mut modules = super::daemon::empty_module_dirs(data_dir)?;
    for (module, generation) in load_state(&root).generations {
        let directory = generation_dir(&root, &module, generation.number);
        if directory.is_dir() && modules.contains_key(&module) {
            modules.insert(module, directory);
        }
    }
    Ok(modules)
}

/// Keeps the module trees and indexes of one node.
struct Trees {
    pins: Pins,
    store: BlobStore,
    node_name: String,
    rsyncd: Rsyncd,
    root: PathBuf,
    index_interval: Duration,
    state: TreesState,
    /// (repository, commit) pairs that cannot be laid out; not tried again until the node restarts.
    broken: HashSet<(String, String)>,
    /// The store's removal cursor this far ([`BlobStore::removed_since`]).
    removals_seen: u64,
    /// Retired generations and when they were first seen retired.
    retired: HashMap<PathBuf, Instant>,
}

/// Starts the keeper of the trees; it stops on `shutdown`.
pub fn spawn(
    pins: Pins,
    store: BlobStore,
    node_name: String,
    data_dir: &Path,
    rsyncd: Rsyncd,
    index_interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let root = data_dir.join("rsync");
    let state = load_state(&root);
    let mut pins_changed = pins.watch().subscribe();
    let removals_seen = store.removed_since(0).1;
    let mut trees = Trees {
        pins,
        store,
        node_name,
        rsyncd,
        root,
        index_interval,
        state,
        broken: HashSet::new(),
        removals_seen,
        retired: HashMap::new(),
    };
    tokio::spawn(async move {
        loop {
            if let Err(error) = trees.round().await {
                warn!(error = format!("{error:#}"), "cannot update the rsync trees now");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = pins_changed.changed() => {}
                () = tokio::time::sleep(ROUND) => {}
            }
        }
    })
}

impl Trees {
    fn save_state(&self) -> anyhow::Result<()> {
        let path = state_path(&self.root);
        let staged = path.with_extension("json.new");
        std::fs::write(&staged, serde_json::to_vec_pretty(&self.state)?)?;
        std::fs::rename(&staged, &path)?;
        Ok(())
    }

    async fn round(&mut self) -> anyhow::Result<()> {
        // A blob removed since the last round (found damaged, evicted) may be linked in a served
        // generation, even if it was filled again since (the new file is another inode): a module
        // showing one is built again, so the old link leaves the live tree now.
        let (removed, cursor) = self.store.removed_since(self.removals_seen);
        self.removals_seen = cursor;
        let wanted = self.wanted_trees().await?;
        for module in ["models", "datasets"] {
            let trees = wanted.get(module).cloned().unwrap_or_default();
            let stale = match &removed {
                None => true,
                Some(removed) => {
                    let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();
                    !removed.is_empty() && self.shows_any(module, &removed).await?
                }
            };
            self.update_module(module, trees, stale).await?;
        }
        if now_ms().saturating_sub(self.state.last_index_ms) >= self.index_interval.as_millis() as u64 {
            self.write_indexes().await?;
        }
        self.collect_garbage();
        Ok(())
    }

    /// What each repository module should show: for every pin, its commit when complete on this
    /// node, else the commit shown before while that one is still complete.
    async fn wanted_trees(&self) -> anyhow::Result<BTreeMap<&'static str, Vec<RepoTree>>> {
        let catalog = self.pins.catalog();
        let store = &self.store;
        let mut wanted: BTreeMap<&'static str, Vec<RepoTree>> = BTreeMap::new();
        let mut pins = catalog.list_pins().await?;
        pins.sort_by(|left, right| left.0.cmp(&right.0));
        for (repo, pin) in pins {
            let Some(module) = module_of(repo.repo_type) else { continue };
            let key = repo.to_string();
            let shown = self.state.shown.get(&key);
            let candidates =
                std::iter::once(pin.commit.clone()).chain(shown.map(|shown| shown.commit.clone()).filter(|commit| *commit != pin.commit));
            'commits: for commit in candidates {
                if self.broken.contains(&(key.clone(), commit.clone())) {
                    continue;
                }
                let Some(manifest) = catalog.get_manifest(&repo, &commit).await? else { continue };
                let mut files = Vec::new();
                for index in 0..manifest.page_count() {
                    let page = manifest.page(index).await?;
                    for entry in page.entries().iter().filter(|entry| entry.kind == EntryKind::File) {
                        if !is_valid_etag(entry.etag()) {
                            debug!(%repo, path = %entry.path, "a file without a content address is left out of the tree");
                            continue;
                        }
                        match store.get(entry.etag()) {
                            Some(blob) if blob.size == entry.size => files.push((entry.path.clone(), blob.path, entry.etag().to_owned())),
                            _ => continue 'commits,
                        }
                    }
                }
                let switched_at_ms = shown.filter(|shown| shown.commit == commit).map_or_else(now_ms, |shown| shown.switched_at_ms);
                wanted.entry(module).or_default().push(RepoTree {
                    repo: repo.clone(),
                    revision: pin.revision.clone(),
                    commit,
                    switched_at_ms,
                    files,
                });
                break;
            }
        }
        Ok(wanted)
    }

    /// Whether the generation `module` serves links any of the `removed` blobs.
    async fn shows_any(&self, module: &str, removed: &HashSet<&str>) -> anyhow::Result<bool> {
        let Some(generation) = self.state.generations.get(module) else { return Ok(false) };
        let catalog = self.pins.catalog();
        for (key, commit) in &generation.layout {
            let Some((repo_type, repo_id)) = key.split_once(':') else { continue };
            let Some(repo_type) = RepoType::parse(repo_type) else { continue };
            let repo = RepoKey::new(repo_type, repo_id);
            let Some(manifest) = catalog.get_manifest(&repo, commit).await? else { return Ok(true) };
            for index in 0..manifest.page_count() {
                if manifest.page(index).await?.entries().iter().any(|entry| removed.contains(entry.etag())) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Builds and switches to a new generation of `module` when what it should show changed, or
    /// when `stale` (a blob it links was removed).
    async fn update_module(&mut self, module: &str, trees: Vec<RepoTree>, stale: bool) -> anyhow::Result<()> {
        let layout: Vec<(String, String)> = trees.iter().map(|tree| (tree.repo.to_string(), tree.commit.clone())).collect();
        let current = self.state.generations.get(module).cloned().unwrap_or_default();
        let current_dir = generation_dir(&self.root, module, current.number);
        let served = self.rsyncd.modules().get(module).is_some_and(|served| *served == current_dir);
        if !stale && current.layout == layout && served && (current.number > 0 || layout.is_empty()) {
            return Ok(());
        }
        let number = current.number + 1;
        let target = generation_dir(&self.root, module, number);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        let node = self.node_name.clone();
        let (built, failed) = {
            let (target, trees, node) = (target.clone(), trees.clone(), node.clone());
            tokio::task::spawn_blocking(move || build_generation(&target, &trees, &node)).await??
        };
        for (repo, error) in &failed {
            warn!(%repo, %error, "a pinned repository cannot be laid out for rsync");
            if let Some(tree) = trees.iter().find(|tree| tree.repo == *repo) {
                self.broken.insert((repo.to_string(), tree.commit.clone()));
            }
        }
        self.rsyncd.switch_module(module, &target)?;
        let built_trees: Vec<&RepoTree> = trees.iter().filter(|tree| built.contains(&tree.repo)).collect();
        for tree in &built_trees {
            let key = tree.repo.to_string();
            if self.state.shown.get(&key).map(|shown| &shown.commit) != Some(&tree.commit) {
                info!(repo = %tree.repo, commit = %tree.commit, module, "rsync tree switched");
            }
            self.state.shown.insert(key, Shown { commit: tree.commit.clone(), switched_at_ms: tree.switched_at_ms });
        }
        // Repositories no longer shown in this module forget their commit.
        let shown_here: HashSet<String> = built_trees.iter().map(|tree| tree.repo.to_string()).collect();
        let prefix = match module {
            "models" => "model:",
            _ => "dataset:",
        };
        self.state.shown.retain(|key, _| !key.starts_with(prefix) || shown_here.contains(key));
        let layout = built_trees.iter().map(|tree| (tree.repo.to_string(), tree.commit.clone())).collect();
        self.state.generations.insert(module.to_owned(), Generation { number, layout });
        self.save_state()?;
        Ok(())
    }

    /// Writes a catalog snapshot and switches the `indexes` module to a generation showing it.
    async fn write_indexes(&mut self) -> anyhow::Result<()> {
        let snapshot = super::indexes::Snapshot::gather(&self.pins).await?;
        let now = now_ms();
        let stamp = utc_time(now / 1000, true);
        let snapshots = self.root.join("index-snapshots");
        let number = self.state.generations.get("indexes").map_or(0, |generation| generation.number) + 1;
        let target = generation_dir(&self.root, "indexes", number);
        let (snapshots_dir, target_dir) = (snapshots.clone(), target.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            std::fs::create_dir_all(&snapshots_dir)?;
            let staged = snapshots_dir.join(format!(".writing-{stamp}"));
            if staged.exists() {
                std::fs::remove_dir_all(&staged)?;
            }
            std::fs::create_dir_all(&staged)?;
            snapshot.write(&staged)?;
            let written = snapshots_dir.join(&stamp);
            if written.exists() {
                std::fs::remove_dir_all(&written)?;
            }
            std::fs::rename(&staged, &written)?;
            let mut kept: Vec<String> = std::fs::read_dir(&snapshots_dir)?
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect();
            kept.sort();
            while kept.len() > KEPT_INDEX_SNAPSHOTS {
                std::fs::remove_dir_all(snapshots_dir.join(kept.remove(0)))?;
            }
            if target_dir.exists() {
                std::fs::remove_dir_all(&target_dir)?;
            }
            let staged_target = target_dir.with_file_name(format!(".building-{number}"));
            if staged_target.exists() {
                std::fs::remove_dir_all(&staged_target)?;
            }
            for (index, name) in kept.iter().enumerate() {
                let mut shown_as = vec![name.clone()];
                if index + 1 == kept.len() {
                    shown_as.push("latest".to_owned());
                }
                for shown in shown_as {
                    let directory = staged_target.join(&shown);
                    std::fs::create_dir_all(&directory)?;
                    for table in super::indexes::TABLES {
                        let file = format!("{table}.parquet");
                        std::fs::hard_link(snapshots_dir.join(name).join(&file), directory.join(&file))?;
                    }
                }
            }
            std::fs::create_dir_all(&staged_target)?;
            std::fs::rename(&staged_target, &target_dir)?;
            Ok(())
        })
        .await??;
        self.rsyncd.switch_module("indexes", &target)?;
        self.state.generations.insert("indexes".to_owned(), Generation { number, layout: Vec::new() });
        self.state.last_index_ms = now;
        self.save_state()?;
        debug!(generation = number, "index snapshot written");
        Ok(())
    }

    /// Deletes retired generations nobody works in any more, and stale staging directories.
    fn collect_garbage(&mut self) {
        let served: HashSet<PathBuf> = self.rsyncd.modules().into_values().collect();
        let Ok(modules) = std::fs::read_dir(self.root.join("gen")) else { return };
        let mut present = HashSet::new();
        for module in modules.flatten() {
            let Ok(generations) = std::fs::read_dir(module.path()) else { continue };
            for generation in generations.flatten() {
                let path = generation.path();
                if served.contains(&path) || generation.file_name().to_string_lossy().starts_with(".building") {
                    continue;
                }
                present.insert(path.clone());
                let retired_at = *self.retired.entry(path.clone()).or_insert_with(Instant::now);
                if retired_at.elapsed() >= RETIRED_GRACE && !in_use(&path) {
                    match std::fs::remove_dir_all(&path) {
                        Ok(()) => debug!(path = %path.display(), "retired rsync generation deleted"),
                        Err(error) => warn!(path = %path.display(), %error, "cannot delete a retired rsync generation"),
                    }
                }
            }
        }
        self.retired.retain(|path, _| present.contains(path));
    }
}

#[cfg(test)]
mod tests;
