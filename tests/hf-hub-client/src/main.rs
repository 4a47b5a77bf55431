//! hf-hub-client: downloads files through an endpoint with the official Rust `hf-hub` crate, the way
//! a Rust user would (`HFClient`, `download_file` into the HF cache), and prints what it got.
//!
//!   hf-hub-client --endpoint URL --cache-dir DIR [--repo org/model] [--repo-type model|dataset]
//!                 [--revision main] [--rounds 2] FILE...
//!
//! Every FILE is downloaded once per round, in order, with one client and one cache dir, so the
//! second round finds every file in the cache (hf-hub then sends `If-None-Match` with the cached
//! etag on its HEAD). One JSON line per download on stdout:
//!   {"round":1,"file":"config.json","path":"…/snapshots/<commit>/config.json",
//!    "blob":"<etag the cache stores it under>","commit":"<commit>","size":N,"sha256":"…"}
//! Exits 1 with the error on stderr when a download fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hf_hub::HFClient;
use sha2::{Digest, Sha256};

struct Args {
    endpoint: String,
    cache_dir: PathBuf,
    repo: String,
    repo_type: String,
    revision: Option<String>,
    rounds: u32,
    files: Vec<String>,
}

fn usage() -> String {
    "usage: hf-hub-client --endpoint URL --cache-dir DIR [--repo org/model] [--repo-type model|dataset] \
     [--revision REV] [--rounds N] FILE..."
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut endpoint = None;
    let mut cache_dir = None;
    let mut repo = "org/model".to_string();
    let mut repo_type = "model".to_string();
    let mut revision = None;
    let mut rounds = 2;
    let mut files = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{}", usage()));
        match arg.as_str() {
            "--endpoint" => endpoint = Some(value("--endpoint")?),
            "--cache-dir" => cache_dir = Some(PathBuf::from(value("--cache-dir")?)),
            "--repo" => repo = value("--repo")?,
            "--repo-type" => repo_type = value("--repo-type")?,
            "--revision" => revision = Some(value("--revision")?),
            "--rounds" => rounds = value("--rounds")?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "-h" | "--help" => return Err(usage()),
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}\n{}", usage())),
            file => files.push(file.to_string()),
        }
    }
    let endpoint = endpoint.ok_or_else(|| format!("--endpoint is required\n{}", usage()))?;
    let cache_dir = cache_dir.ok_or_else(|| format!("--cache-dir is required\n{}", usage()))?;
    if files.is_empty() {
        return Err(format!("no FILE given\n{}", usage()));
    }
    Ok(Args { endpoint, cache_dir, repo, repo_type, revision, rounds, files })
}

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let data = std::fs::read(path)?;
    let hex = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect::<String>();
    Ok((data.len() as u64, hex))
}

async fn download(client: &HFClient, args: &Args, file: &str) -> Result<PathBuf, String> {
    let (owner, name) = hf_hub::split_id(&args.repo);
    let result = match args.repo_type.as_str() {
        "model" => {
            client
                .model(owner, name)
                .download_file()
                .filename(file)
                .maybe_revision(args.revision.clone())
                .send()
                .await
        }
        "dataset" => {
            client
                .dataset(owner, name)
                .download_file()
                .filename(file)
                .maybe_revision(args.revision.clone())
                .send()
                .await
        }
        other => return Err(format!("unsupported --repo-type {other}")),
    };
    result.map_err(|e| format!("{e} ({e:?})"))
}

async fn run(args: Args) -> Result<(), String> {
    let client = HFClient::builder()
        .endpoint(args.endpoint.clone())
        .cache_dir(args.cache_dir.clone())
        .retry_max_attempts(2)
        .build()
        .map_err(|e| format!("building the client: {e}"))?;
    for round in 1..=args.rounds {
        for file in &args.files {
            let path = download(&client, &args, file)
                .await
                .map_err(|e| format!("round {round}: downloading {file} from {}: {e}", args.repo))?;
            let (size, sha256) = sha256_file(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            // The cache layout: snapshots/<commit>/<file> -> ../../blobs/<etag>.
            let blob = std::fs::read_link(&path)
                .ok()
                .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
            let commit = path
                .strip_prefix(&args.cache_dir)
                .ok()
                .and_then(|rel| {
                    let parts: Vec<_> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                    parts.iter().position(|p| p == "snapshots").and_then(|i| parts.get(i + 1).cloned())
                });
            let line = serde_json::json!({
                "round": round,
                "repo": args.repo,
                "file": file,
                "path": path,
                "blob": blob,
                "commit": commit,
                "size": size,
                "sha256": sha256,
            });
            println!("{line}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hf-hub-client: {message}");
            ExitCode::FAILURE
        }
    }
}
