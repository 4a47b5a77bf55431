//! Multi-node test harness for hf-mirror.
//!
//! [`Cluster::start`] runs the nodes of `topology.toml` as real `hf-mirror serve` processes (the
//! built binary), each with its own data directory, on a [`Network`] of their own: one network
//! namespace per node joined by veth pairs to a bridge where the fake Hub and the test client live,
//! or loopback addresses where namespaces cannot be made (the test output says which ran). Each
//! node's HTTP and peer sockets are bound by the harness inside the node's namespace and handed over
//! to the process (`HF_MIRROR_LISTEN_FDS`), so a restarted node gets the same ports back.
//!
//! Helpers kill a node with SIGKILL, restart it, pause it (SIGSTOP/SIGCONT), cut and heal links
//! between nodes, and move a node's data directory onto a small tmpfs that can be filled and grown
//! (root only; unmounted when the cluster is dropped). Scenarios live in `tests/scenarios.rs`; they assert counts, bytes and hashes, never
//! wall-clock times, but print the durations they observe (`measure:` lines) for the benchmarks.

pub mod hub;
pub mod net;

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hfm_node::cli::cluster_up::{NodeAddresses, local_topology};
use hfm_node::transport::sockets::{ChildSockets, LISTEN_FDS_VARIABLE};
pub use hub::{FakeHub, HubFile};
pub use net::{Network, NetworkKind, SlowLink};
use serde_json::Value;
use sha2::Digest;

/// Held while a child is spawned with inheritable sockets, so no other child of this process
/// inherits them by accident.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

const HTTP_PORT: u16 = 8080;
const PEER_PORT: u16 = 7443;
const GOSSIP_PORT: u16 = 7946;
const DNS_PORT: u16 = 5353;
const RSYNC_PORT: u16 = 8873;
const OPERATOR_PORT: u16 = 9090;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root.
/// libfaketime, for the threads of a multi-threaded process (Debian's `faketime` package).
const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// The `hf-mirror` binary under test: `HF_MIRROR_BIN`, else the one built beside this test.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HF_MIRROR_BIN") {
        return Ok(PathBuf::from(path));
    }
    let test = std::env::current_exe()?;
    // target/debug/deps/scenarios-… → target/debug/hf-mirror
    let candidate = test.parent().and_then(Path::parent).map(|dir| dir.join("hf-mirror")).context("no target directory")?;
    if !candidate.exists() {
        bail!("{} is not built; run `cargo build --workspace` first", candidate.display());
    }
    Ok(candidate)
}

/// What a cluster is started with.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// A big LFS file (`bench/big`, `big.bin`) of this many bytes on the fake Hub; 0: none.
    pub big_size: u64,
    /// How often nodes reconcile their replicas.
    pub replica_check_interval: &'static str,
    /// Each node's store limit (`--max-disk`), to make eviction happen.
    pub max_disk: Option<&'static str>,
    /// Pins declared in the topology: (repository, type).
    pub pins: &'static [(&'static str, &'static str)],
    /// What the scenario needs network namespaces for (cutting links), if it does: then a network
    /// without them is an error, reported before any node starts.
    pub needs_namespaces: Option<&'static str>,
    /// `--ref-ttl` of every node.
    pub ref_ttl: &'static str,
    /// Every node runs under libfaketime, its wall clock set by [`Cluster::set_clock`] (monotonic
    /// time stays real, as NTP stepping the clock leaves it).
    pub fake_clocks: bool,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            big_size: 0,
            replica_check_interval: "2s",
            max_disk: None,
            pins: &[],
            needs_namespaces: None,
            ref_ttl: "5s",
            fake_clocks: false,
        }
    }
}

pub struct Node {
    pub name: String,
    pub addresses: NodeAddresses,
    pub url: String,
    /// The operator port: status, drain, pins, replicas (with the token).
    pub operator_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Flags added to `serve` (for instance the small disk's `--min-free-disk`).
    extra_args: Vec<String>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    placement: hfm_cluster::placement::Placement,
    pub hub: FakeHub,
    pub client: reqwest::Client,
    binary: PathBuf,
    topology_path: PathBuf,
    /// The operator token every node shares, and its file.
    pub token_file: PathBuf,
    pub token: String,
    max_disk: Option<&'static str>,
    ref_ttl: &'static str,
    fake_clocks: bool,
    // Dropped last: the nodes and the Hub go before their disks, network and directory.
    small_disks: Vec<SmallDisk>,
    pub net: Network,
    pub dir: tempfile::TempDir,
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

impl Cluster {
    /// Starts the fake Hub and the four nodes of `topology.toml`, and waits until each node's gossip
    /// sees all four.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = root();
        let binary = binary()?;
        let mut topology = hfm_node::config::read_topology(&root.join("topology.toml"))?;
        topology.cluster.replica_check_interval = Some(options.replica_check_interval.to_owned());
        topology.pins = options
            .pins
            .iter()
            .map(|(repo, repo_type)| hfm_node::config::PinEntry {
                repo: (*repo).into(),
                repo_type: (*repo_type).into(),
                revision: "main".into(),
            })
            .collect();
        let names: Vec<String> = topology.nodes.iter().map(|node| node.name.clone()).collect();
        let net = Network::create(names.len());
        println!("{}", net.describe());
        if let Some(needed_for) = options.needs_namespaces {
            net.require_namespaces(needed_for)?;
        }
        let dir = tempfile::Builder::new().prefix("hfm-cluster-").tempdir()?;
        let hub = FakeHub::start(&root, net.hub_ip(), net.cdn_ip(), options.big_size, dir.path())?;
        let certs_dir = dir.path().join("certs");
        hfm_cluster::peer::certs::generate_cluster_certs(&certs_dir, &topology.cluster.name, &names)?;
        let addresses: Vec<NodeAddresses> = (0..names.len())
            .map(|index| {
                let ip = net.node_ip(index);
                NodeAddresses {
                    http: SocketAddr::from((ip, HTTP_PORT)),
                    peer: SocketAddr::from((ip, PEER_PORT)),
                    gossip: SocketAddr::from((ip, GOSSIP_PORT)),
                    dns: SocketAddr::from((ip, DNS_PORT)),
                    rsync: SocketAddr::from((ip, RSYNC_PORT)),
                    operator: SocketAddr::from((ip, OPERATOR_PORT)),
                }
            })
            .collect();
        let topology_path = dir.path().join("topology.toml");
        // One operator token for all nodes, made before any starts; the test's own clients (on the
        // bridge, or loopback in the fallback) are not limited.
        let token_file = hfm_node::cli::cluster_up::operator_token_path(dir.path());
        let token = hfm_node::common::secret::ensure_token_file(&token_file)?;
        let clients = net.client_prefix();
        std::fs::write(&topology_path, local_topology(&topology, dir.path(), &certs_dir, &addresses, &[&clients, "127.0.0.0/8"])?)?;
        // The placement the nodes compute, from the same file.
        let local = hfm_node::config::read_topology(&topology_path)?;
        let origin = topology_path.display().to_string();
        let resolved = hfm_node::config::resolve(Some((&local, origin.as_str())), Some(&names[0]), &Default::default())?;
        let peers = resolved.cluster.context("the topology has no cluster")?.peers;
        let placement = hfm_cluster::placement::Placement::new(
            peers.iter().map(|peer| hfm_cluster::placement::WeightedNode { name: peer.name.clone(), weight: peer.weight }).collect(),
        )?;
        let nodes = names
            .iter()
            .zip(&addresses)
            .map(|(name, addresses)| Node {
                name: name.clone(),
                addresses: *addresses,
                url: format!("http://{}", addresses.http),
                operator_url: format!("http://{}", addresses.operator),
                data_dir: dir.path().join(name),
                log: dir.path().join(format!("{name}.log")),
                child: None,
                paused: false,
                extra_args: Vec::new(),
            })
            .collect();
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build()?;
        if options.fake_clocks {
            anyhow::ensure!(
                Path::new(FAKETIME_LIBRARY).exists(),
                "this scenario sets node clocks with libfaketime, which is not installed ({FAKETIME_LIBRARY}; apt-get install faketime)"
            );
            for name in &names {
                std::fs::write(dir.path().join(format!("{name}.faketime")), "+0\n")?;
            }
        }
        let mut cluster = Cluster {
            nodes,
            placement,
            hub,
            client,
            binary,
            topology_path,
            token_file,
            token,
            max_disk: options.max_disk,
            ref_ttl: options.ref_ttl,
            fake_clocks: options.fake_clocks,
            small_disks: Vec::new(),
            net,
            dir,
        };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index)?;
        }
        for index in 0..cluster.nodes.len() {
            cluster.wait_started(index).await?;
        }
        cluster.wait_live_everywhere().await?;
        Ok(cluster)
    }

    /// The node indexes in a blob's placement order (the first is its fill leader).
    pub fn preference(&self, etag: &str) -> Vec<usize> {
        self.placement.preference_list(etag).into_iter().map(|name| self.index(name)).collect()
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|node| node.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let (http, peer, dns) = (node.addresses.http, node.addresses.peer, node.addresses.dns);
        let sockets = self.net.run_in(index, move || ChildSockets::bind(http, peer, Some(dns)))?;
        let stdout = self.dir.path().join(format!("{}.stdout", node.name));
        let log = OpenOptions::new().create(true).append(true).open(&node.log)?;
        let mut command = self.command_on(index);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.topology_path)
            .args(["--node", &node.name, "--upstream", &self.hub.url, "--ref-ttl", self.ref_ttl])
            .args(self.max_disk.iter().flat_map(|max_disk| ["--max-disk", max_disk]))
            .args(&node.extra_args)
            .env("RUST_LOG", "info")
            .envs(self.fake_clock_environment(index))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(log);
        let child = {
            let _spawning = SPAWN_LOCK.lock().expect("spawn lock poisoned");
            command.env(LISTEN_FDS_VARIABLE, sockets.inheritable()?);
            let child = command.spawn().with_context(|| format!("starting {}", node.name))?;
            drop(sockets);
            child
        };
        self.nodes[index].child = Some(child);
        self.nodes[index].paused = false;
        Ok(())
    }

    /// libfaketime's settings for node `index`: its offset is read from a file [`Cluster::set_clock`]
    /// writes, again every second, so the clock can jump while the node runs.
    fn fake_clock_environment(&self, index: usize) -> Vec<(&'static str, String)> {
        if !self.fake_clocks {
            return Vec::new();
        }
        let file = self.dir.path().join(format!("{}.faketime", self.nodes[index].name));
        vec![
            ("LD_PRELOAD", FAKETIME_LIBRARY.to_owned()),
            ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
            ("FAKETIME_CACHE_DURATION", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
    }

    /// Sets node `index`'s wall clock to the real time plus `offset` (libfaketime's syntax: `+5m`,
    /// `-300`, `+0`); a running node sees the jump within a second. Needs `fake_clocks`.
    pub fn set_clock(&self, index: usize, offset: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.fake_clocks, "the cluster was started without fake_clocks");
        std::fs::write(self.dir.path().join(format!("{}.faketime", self.nodes[index].name)), format!("{offset}\n"))?;
        Ok(())
    }

    /// The value of a gauge or counter (without labels) in node `index`'s `/metrics`.
    pub async fn metric(&self, index: usize, name: &str) -> anyhow::Result<f64> {
        let url = format!("{}/metrics", self.nodes[index].operator_url);
        let response = self.client.get(url).bearer_auth(&self.token).timeout(Duration::from_secs(3)).send().await?;
        let text = response.error_for_status()?.text().await?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("{} has no metric {name}", self.nodes[index].name))
    }

    /// Waits for the node's `node NAME URL` line.
    async fn wait_started(&mut self, index: usize) -> anyhow::Result<()> {
        let name = self.nodes[index].name.clone();
        let stdout = self.dir.path().join(format!("{name}.stdout"));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if text.lines().any(|line| line.starts_with(&format!("node {name} "))) {
                return Ok(());
            }
            if let Some(child) = self.nodes[index].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{name} exited ({status}) before it was ready:\n{}", self.log_tail(index));
            }
            if Instant::now() > deadline {
                bail!("{name} did not start:\n{}", self.log_tail(index));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log).unwrap_or_default()
    }

    fn log_tail(&self, index: usize) -> String {
        let log = self.log(index);
        log[log.len().saturating_sub(4000)..].to_owned()
    }

    /// SIGKILL: no shutdown, no goodbye to gossip; the data directory stays.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops a node, then waits (up to a minute) for it to exit by itself.
    pub async fn stop(&mut self, index: usize) -> anyhow::Result<std::process::ExitStatus> {
        self.signal(index, rustix::process::Signal::TERM)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let child = self.nodes[index].child.as_mut().context("node not running")?;
            if let Some(status) = child.try_wait()? {
                self.nodes[index].child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not stop within a minute of SIGTERM:\n{}", self.nodes[index].name, self.log_tail(index));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a killed node again, on the same addresses and data directory.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.kill(index);
        self.spawn(index)?;
        self.wait_started(index).await
    }

    fn signal(&self, index: usize, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let pid = self.nodes[index].pid().context("node not running")?;
        let pid = rustix::process::Pid::from_raw(pid as i32).context("bad pid")?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// Whether node `index`'s process has exited by itself (it was not killed by the harness).
    pub fn exited(&mut self, index: usize) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.nodes[index].child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Moves node `index` onto a tmpfs of `size` (`mount -o size=`, e.g. `64m`) mounted as its data
    /// directory: the node is killed, its data copied over, and it is started again with
    /// `--min-free-disk min_free`. The tmpfs is unmounted when the cluster is dropped, after the
    /// nodes are killed, also when the test fails. Needs root.
    pub async fn move_to_small_disk(&mut self, index: usize, size: &str, min_free: &str) -> anyhow::Result<()> {
        self.kill(index);
        let data_dir = self.nodes[index].data_dir.clone();
        let before = data_dir.with_extension("before-small-disk");
        std::fs::rename(&data_dir, &before).with_context(|| format!("moving {} aside", data_dir.display()))?;
        std::fs::create_dir(&data_dir)?;
        run_command("mount", &["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "hfm-small-disk", &data_dir.display().to_string()])
            .context("mounting a tmpfs as the node's data directory (the test needs root)")?;
        self.small_disks.push(SmallDisk { path: data_dir.clone() });
        run_command("cp", &["-a", &format!("{}/.", before.display()), &data_dir.display().to_string()])?;
        std::fs::remove_dir_all(&before)?;
        self.nodes[index].extra_args = vec!["--min-free-disk".into(), min_free.into()];
        self.restart(index).await
    }

    /// Grows (or shrinks, down to what it holds) the tmpfs of node `index`.
    pub fn resize_small_disk(&self, index: usize, size: &str) -> anyhow::Result<()> {
        let data_dir = &self.nodes[index].data_dir;
        anyhow::ensure!(self.small_disks.iter().any(|disk| &disk.path == data_dir), "{} is not on a small disk", self.nodes[index].name);
        run_command("mount", &["-o", &format!("remount,size={size}"), &data_dir.display().to_string()])
    }

    /// Fills node `index`'s file system to the last byte with a ballast file in its data directory
    /// (outside the store); returns the ballast's size.
    pub fn fill_disk(&self, index: usize) -> anyhow::Result<u64> {
        use std::io::Write;
        let path = self.nodes[index].data_dir.join("ballast");
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut chunk = vec![0xa5u8; 1 << 20];
        let mut written = 0u64;
        while !chunk.is_empty() {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(count) => written += count as u64,
                Err(error) if error.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    chunk.truncate(chunk.len() / 2);
                }
                Err(error) => return Err(error.into()),
            }
        }
        file.sync_all().ok();
        Ok(written)
    }

    /// Free bytes of the file system holding node `index`'s data directory.
    pub fn free_bytes(&self, index: usize) -> anyhow::Result<u64> {
        let stats = rustix::fs::statvfs(&self.nodes[index].data_dir)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// The files in node `index`'s fill directory (`tmp/`): fills in progress or left behind.
    pub fn temp_files(&self, index: usize) -> Vec<PathBuf> {
        std::fs::read_dir(self.nodes[index].data_dir.join("tmp"))
            .map(|entries| entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
            .unwrap_or_default()
    }

    /// The blobs on node `index`'s disk (etags).
    pub fn blobs_on_disk(&self, index: usize) -> Vec<String> {
        let mut etags = Vec::new();
        let Ok(shards) = std::fs::read_dir(self.nodes[index].data_dir.join("blobs")) else { return etags };
        for shard in shards.flatten() {
            for blob in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                let name = blob.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".sums") {
                    etags.push(name);
                }
            }
        }
        etags.sort();
        etags
    }

    /// SIGSTOP: the process freezes with every socket open, like a node stuck in a long pause.
    pub fn pause(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, rustix::process::Signal::STOP)?;
        self.nodes[index].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, index: usize) -> anyhow::Result<()> {
        self.signal(index, rustix::process::Signal::CONT)?;
        self.nodes[index].paused = false;
        Ok(())
    }

    /// The holders of a blob as `index`'s catalog records them.
    pub async fn replica_holders(&self, index: usize, etag: &str) -> anyhow::Result<Vec<String>> {
        let url = format!("{}/_hfm/replicas/{etag}", self.nodes[index].operator_url);
        let response = self.client.get(url).bearer_auth(&self.token).send().await?;
        let record: Value = serde_json::from_slice(&response.bytes().await?)?;
        Ok(record["holders"]
            .as_array()
            .map(|holders| holders.iter().filter_map(|name| name.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// `hf-mirror drain` run on the node's own host (inside its namespace), through its operator port.
    pub async fn drain(&self, index: usize) -> anyhow::Result<()> {
        let url = self.nodes[index].operator_url.clone();
        self.run_operator_command(index, &["drain", "--url", &url]).await.map(|_| ())
    }

    /// An operator command (`status`, `drain`, `mirror`, `pins`) run on node `index`'s host with
    /// the cluster's operator token.
    pub async fn run_operator_command(&self, index: usize, args: &[&str]) -> anyhow::Result<String> {
        let token_file = self.token_file.display().to_string();
        let with_token: Vec<&str> = args.iter().copied().chain(["--token-file", token_file.as_str()]).collect();
        self.run_on(index, &with_token).await
    }

    /// The `hf-mirror` binary as a command run on node `index`'s host (inside its namespace).
    fn command_on(&self, index: usize) -> Command {
        match self.net.namespace(index) {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &namespace]).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        }
    }

    /// Runs an `hf-mirror` subcommand on node `index`'s own host (inside its namespace); returns its
    /// standard output, or an error with its standard error.
    pub async fn run_on(&self, index: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut command = tokio::process::Command::from(self.command_on(index));
        let output = command.args(args).output().await?;
        if !output.status.success() {
            bail!("hf-mirror {} on {} failed: {}", args.join(" "), self.nodes[index].name, String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The addresses node `index`'s DNS server answers for `name` (type A), with `dig`.
    pub async fn dns_answers(&self, index: usize, name: &str) -> anyhow::Result<Vec<String>> {
        self.dns_answers_for(index, name, None).await
    }

    /// The A records a node's DNS server answers for `name`, asked with an EDNS Client Subnet (as a
    /// resolver in that network would) when `subnet` is given.
    pub async fn dns_answers_for(&self, index: usize, name: &str, subnet: Option<&str>) -> anyhow::Result<Vec<String>> {
        let address = self.nodes[index].addresses.dns;
        let mut command = tokio::process::Command::new("dig");
        command.args([format!("@{}", address.ip()), "-p".into(), address.port().to_string()]);
        if let Some(subnet) = subnet {
            command.arg(format!("+subnet={subnet}"));
        }
        let output = command
            .args(["+short", "+tries=1", "+time=1", name, "A"])
            .output()
            .await
            .context("dig is missing (apt-get install bind9-dnsutils)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        if text.contains("timed out") || text.contains("no servers") {
            bail!("{} did not answer DNS", self.nodes[index].name);
        }
        let mut answers: Vec<String> = text.lines().map(str::to_owned).filter(|line| !line.is_empty()).collect();
        answers.sort();
        Ok(answers)
    }

    /// A node's `/_hfm/status` (on its operator port).
    pub async fn status(&self, index: usize) -> anyhow::Result<Value> {
        let url = format!("{}/_hfm/status", self.nodes[index].operator_url);
        let response = self.client.get(url).bearer_auth(&self.token).timeout(Duration::from_secs(3)).send().await?;
        Ok(serde_json::from_slice(&response.bytes().await?)?)
    }

    /// The names a node's gossip sees live (ready, not draining).
    pub async fn live_seen_by(&self, index: usize) -> anyhow::Result<Vec<String>> {
        Ok(hfm_node::cli::status::live_members(&self.status(index).await?))
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|index| self.nodes[*index].is_running() && !self.nodes[*index].paused).collect()
    }

    /// Waits until every running node sees every running node live.
    pub async fn wait_live_everywhere(&self) -> anyhow::Result<()> {
        let running = self.running();
        let expected: Vec<String> = running.iter().map(|index| self.nodes[*index].name.clone()).collect();
        wait_until("every running node sees the others live", Duration::from_secs(60), || async {
            for index in &running {
                let mut live = self.live_seen_by(*index).await.unwrap_or_default();
                live.sort();
                let mut wanted = expected.clone();
                wanted.sort();
                if live != wanted {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// The catalog leader's name as `index` sees it.
    pub async fn raft_leader_seen_by(&self, index: usize) -> Option<String> {
        let status = self.status(index).await.ok()?;
        status["raft"]["leader_name"].as_str().map(str::to_owned)
    }

    /// A node's Raft term and last applied log index.
    pub async fn raft_progress(&self, index: usize) -> Option<(u64, u64)> {
        let status = self.status(index).await.ok()?;
        Some((status["raft"]["term"].as_u64()?, status["raft"]["last_applied"].as_u64().unwrap_or(0)))
    }

    /// A GET through node `index`, read whole; a body cut short is an error.
    pub async fn get(&self, index: usize, path: &str) -> anyhow::Result<Answer> {
        self.request(index, reqwest::Method::GET, path).await
    }

    pub async fn request(&self, index: usize, method: reqwest::Method, path: &str) -> anyhow::Result<Answer> {
        let response = self.client.request(method, format!("{}{path}", self.nodes[index].url)).send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?.to_vec();
        Ok(Answer { status, headers, body })
    }

    /// Whether node `index` holds a blob on disk.
    pub fn holds(&self, index: usize, etag: &str) -> bool {
        self.nodes[index].data_dir.join("blobs").join(&etag[..2]).join(etag).exists()
    }

    pub fn blob_path(&self, index: usize, etag: &str) -> PathBuf {
        self.nodes[index].data_dir.join("blobs").join(&etag[..2]).join(etag)
    }

    /// Checks every blob on every node's disk against its name: sha256 for LFS etags, the git blob
    /// sha1 otherwise. Returns how many were checked; a blob that does not match is an error (a
    /// half-written or corrupt blob published as complete).
    pub fn verify_disks(&self) -> anyhow::Result<usize> {
        let mut checked = 0;
        for node in &self.nodes {
            let Ok(shards) = std::fs::read_dir(node.data_dir.join("blobs")) else { continue };
            for shard in shards {
                for blob in std::fs::read_dir(shard?.path())? {
                    let path = blob?.path();
                    let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_owned();
                    if name.ends_with(".sums") {
                        continue;
                    }
                    let bytes = std::fs::read(&path)?;
                    let actual = if name.len() == 64 {
                        sha256_hex(&bytes)
                    } else {
                        let mut hasher = sha1::Sha1::new();
                        hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
                        hasher.update(&bytes);
                        hex::encode(hasher.finalize())
                    };
                    if actual != name {
                        bail!("{} holds {} whose bytes hash to {actual}", node.name, path.display());
                    }
                    checked += 1;
                }
            }
        }
        Ok(checked)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                let _ = self.resume(index);
            }
            self.kill(index);
        }
    }
}

/// A tmpfs mounted as a node's data directory; unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let path = self.path.display().to_string();
        // Lazily if something still holds it open: the mount must not outlive the test.
        if run_command("umount", &[&path]).is_err()
            && let Err(error) = run_command("umount", &["-l", &path])
        {
            eprintln!("cluster harness: could not unmount the small disk {path}: {error:#}");
        }
    }
}

fn run_command(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Polls `condition` until it holds, or fails after `timeout` naming `what`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
