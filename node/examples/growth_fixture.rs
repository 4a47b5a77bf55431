//! Writes a node's data directory as a mirror that has served for a long time would have it, for
//! `bench/growth.sh`: REPOS public model repositories of FILES files each, every one with its policy,
//! its `main` ref and its commit's manifest in `catalog.redb`, and every file's bytes stored as a blob
//! with its chunk sums under `blobs/`. Nothing goes through upstream; the records are written with
//! the catalog's own API (what a fill records), the blobs in the store's on-disk layout.
//!
//!     cargo run --release -p hfm-node --example growth_fixture -- DATA_DIR REPOS FILES
//!
//! Prints, for the benchmark, one line per repository sample: `url /org/repo-N/resolve/COMMIT/PATH`
//! for repo 0 file 0 first, then a spread of others.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use hfm_cluster::catalog::{Catalog, EntryKind, LocalCatalog, Manifest, ManifestEntry, PolicyRecord, RefRecord};
use hfm_cluster::types::{RepoKey, RepoType};
use sha1::Digest;

/// The bytes of file `file` of repository `repo`: small and distinct, like a config or a tokenizer
/// file (the store's cost per blob is what grows, not its bytes).
fn content(repo: usize, file: usize) -> Vec<u8> {
    format!("{{\"repo\": {repo}, \"file\": {file}, \"padding\": \"growth fixture\"}}\n").into_bytes()
}

/// The git blob sha1 of `bytes`: the etag the Hub gives a regular (not LFS) file.
fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex::encode(hasher.finalize())
}

fn commit_of(repo: usize) -> String {
    format!("{repo:040x}")
}

fn path_of(file: usize) -> String {
    format!("configs/part-{file:04}.json")
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> std::io::Result<String> {
    let etag = git_blob_sha1(bytes);
    let shard = blobs.join(&etag[..2]);
    std::fs::create_dir_all(&shard)?;
    let path = shard.join(&etag);
    std::fs::write(&path, bytes)?;
    // One 1 MiB chunk: its xxh3-64, little-endian (the store's `.sums` format).
    let mut sums = path.clone().into_os_string();
    sums.push(".sums");
    std::fs::write(sums, xxhash_rust::xxh3::xxh3_64(bytes).to_le_bytes())?;
    Ok(etag)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [data_dir, repos, files] = arguments.as_slice() else {
        anyhow::bail!("usage: growth_fixture DATA_DIR REPOS FILES");
    };
    let (data_dir, repos, files) = (Path::new(data_dir), repos.parse::<usize>()?, files.parse::<usize>()?);
    let blobs = data_dir.join("blobs");
    std::fs::create_dir_all(&blobs)?;
    let catalog = Arc::new(LocalCatalog::open(&data_dir.join("catalog.redb"))?);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (catalog, next, blobs) = (catalog.clone(), next.clone(), blobs.clone());
            tokio::spawn(async move {
                loop {
                    let repo = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if repo >= repos {
                        return anyhow::Ok(());
                    }
                    let key = RepoKey::new(RepoType::Model, format!("org/repo-{repo}"));
                    let blobs = blobs.clone();
                    let entries = tokio::task::spawn_blocking(move || {
                        (0..files)
                            .map(|file| {
                                let bytes = content(repo, file);
                                let oid = write_blob(&blobs, &bytes)?;
                                Ok(ManifestEntry { path: path_of(file), kind: EntryKind::File, size: bytes.len() as u64, oid, lfs: None })
                            })
                            .collect::<std::io::Result<Vec<_>>>()
                    })
                    .await??;
                    // The directory itself, as the Hub's recursive tree lists it.
                    let mut entries = entries;
                    entries.push(ManifestEntry {
                        path: "configs".into(),
                        kind: EntryKind::Directory,
                        size: 0,
                        oid: "0".repeat(40),
                        lfs: None,
                    });
                    catalog.put_policy(&key, PolicyRecord { cacheable: true, reason: "public".into(), checked_at_ms: now_ms }).await?;
                    catalog.put_manifest(&key, &commit_of(repo), Manifest::new(entries)).await?;
                    catalog.put_ref(&key, "main", RefRecord { commit: commit_of(repo), checked_at_ms: now_ms }).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let mut out = std::io::stdout().lock();
    // Repo 0 file 0 first (the benchmark's single-URL load), then a spread across the whole catalog.
    let samples = 1000.min(repos * files);
    for sample in 0..samples {
        let index = (sample as u64 * 2_654_435_761 % (repos * files) as u64) as usize;
        let (repo, file) = if sample == 0 { (0, 0) } else { (index / files, index % files) };
        writeln!(out, "url /org/repo-{repo}/resolve/{}/{}", commit_of(repo), path_of(file))?;
    }
    Ok(())
}
