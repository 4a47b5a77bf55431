//! The fake upstream Hub (`tests/fakehub/fake_hub.py`, the same one the client suite uses), run as a
//! child process on the harness's network.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use serde_json::Value;

pub struct FakeHub {
    child: Child,
    pub url: String,
    client: reqwest::Client,
}

/// One file of a repository at a revision, as the fake Hub describes it.
#[derive(Clone, Debug)]
pub struct HubFile {
    pub path: String,
    pub size: u64,
    /// The LFS sha256 of LFS files, else the git blob sha1: the blob's etag.
    pub etag: String,
}

impl FakeHub {
    /// Starts the fake Hub on `host` (its CDN on `cdn_host`); `big_size` adds `bench/big` with one
    /// file of that many bytes, built under `work_dir`.
    pub fn start(root: &Path, host: Ipv4Addr, cdn_host: Ipv4Addr, big_size: u64, work_dir: &Path) -> anyhow::Result<FakeHub> {
        let mut command = Command::new("python3");
        command.arg(root.join("tests/fakehub/fake_hub.py")).args([
            "--host",
            &host.to_string(),
            "--port",
            "0",
            "--cdn-host",
            &cdn_host.to_string(),
            "--cdn-port",
            "0",
        ]);
        if big_size > 0 {
            command.args(["--big-size", &big_size.to_string(), "--big-dir"]).arg(work_dir.join("big"));
        }
        let log = std::fs::File::create(work_dir.join("fakehub.log"))?;
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).spawn().context("starting the fake Hub")?;
        let stdout = child.stdout.take().context("fake Hub stdout")?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let Some(url) = first.split_whitespace().nth(1).filter(|_| first.starts_with("fakehub ")) else {
            let _ = child.kill();
            bail!("the fake Hub did not start: {first:?}");
        };
        let client = reqwest::Client::builder().no_proxy().build()?;
        Ok(FakeHub { url: url.to_owned(), child, client })
    }

    async fn control(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let response = self.client.request(method, format!("{}{path}", self.url)).send().await?.error_for_status()?;
        let body = response.bytes().await?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Every request the Hub and its CDN saw since the last reset.
    pub async fn requests(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.control(reqwest::Method::GET, "/_fake/requests").await?.as_array().cloned().unwrap_or_default())
    }

    /// The CDN GETs of one blob (by etag) since the last reset.
    pub async fn cdn_gets(&self, etag: &str) -> anyhow::Result<usize> {
        let requests = self.requests().await?;
        Ok(requests
            .iter()
            .filter(|request| request["server"] == "cdn" && request["method"] == "GET")
            .filter(|request| request["path"].as_str().is_some_and(|path| path.contains(etag)))
            .count())
    }

    /// The `Range` headers of the CDN GETs of one blob since the last reset (`None`: the whole file).
    pub async fn cdn_ranges(&self, etag: &str) -> anyhow::Result<Vec<Option<String>>> {
        let requests = self.requests().await?;
        Ok(requests
            .iter()
            .filter(|request| request["server"] == "cdn" && request["method"] == "GET")
            .filter(|request| request["path"].as_str().is_some_and(|path| path.contains(etag)))
            .map(|request| request["range"].as_str().map(str::to_owned))
            .collect())
    }

    /// Requests to the Hub's `/api/` (metadata, not file bytes) since the last reset.
    pub async fn api_requests(&self) -> anyhow::Result<Vec<String>> {
        let requests = self.requests().await?;
        Ok(requests
            .iter()
            .filter(|request| request["server"] == "hub" && request["path"].as_str().is_some_and(|path| path.starts_with("/api/")))
            .filter_map(|request| Some(format!("{} {}", request["method"].as_str()?, request["path"].as_str()?)))
            .collect())
    }

    pub async fn reset(&self) -> anyhow::Result<()> {
        self.control(reqwest::Method::POST, "/_fake/reset").await.map(|_| ())
    }

    /// Throttles CDN bodies to `bytes_per_sec` (0: off).
    pub async fn throttle(&self, bytes_per_sec: u64) -> anyhow::Result<()> {
        self.control(reqwest::Method::POST, &format!("/_fake/throttle?bytes_per_sec={bytes_per_sec}")).await.map(|_| ())
    }

    /// Moves a branch of `repo` to its prepared next commit; returns the new commit.
    pub async fn move_branch(&self, repo: &str, branch: &str) -> anyhow::Result<String> {
        let answer = self.control(reqwest::Method::POST, &format!("/_fake/move-branch?repo={repo}&branch={branch}")).await?;
        answer["sha"].as_str().map(str::to_owned).context("move-branch answered no sha")
    }

    /// The commit a branch or tag of `repo` points to.
    pub async fn commit(&self, repo: &str, revision: &str) -> anyhow::Result<String> {
        let state = self.control(reqwest::Method::GET, "/_fake/state").await?;
        state["repos"][repo]["refs"][revision].as_str().map(str::to_owned).with_context(|| format!("no {revision} in {repo}"))
    }

    /// The bytes of a model file at `revision`, as upstream has them.
    pub async fn content(&self, repo: &str, revision: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        let encode = |text: &str| percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string();
        let url = format!("{}/_fake/file?repo={}&rev={}&path={}&type=model", self.url, encode(repo), encode(revision), encode(path));
        let response = self.client.get(url).send().await?.error_for_status()?;
        Ok(response.bytes().await?.to_vec())
    }

    /// The files of `repo` (`org/model`, `datasets/org/dataset`) at `revision`.
    pub async fn files(&self, repo: &str, revision: &str) -> anyhow::Result<Vec<HubFile>> {
        let state = self.control(reqwest::Method::GET, "/_fake/state").await?;
        let repo_state = &state["repos"][repo];
        let commit = repo_state["refs"][revision].as_str().unwrap_or(revision);
        let files = repo_state["commits"][commit]["files"].as_object().with_context(|| format!("no files for {repo}@{revision}"))?;
        Ok(files
            .iter()
            .map(|(path, file)| HubFile {
                path: path.clone(),
                size: file["size"].as_u64().unwrap_or(0),
                etag: file["sha256"].as_str().or(file["oid"].as_str()).unwrap_or_default().to_owned(),
            })
            .collect())
    }

    pub async fn file(&self, repo: &str, revision: &str, path: &str) -> anyhow::Result<HubFile> {
        self.files(repo, revision).await?.into_iter().find(|file| file.path == path).with_context(|| format!("no {path} in {repo}"))
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
