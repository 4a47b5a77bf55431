//! The `hf-mirror` binary: parses the command line, sets up logging and signals, and runs a node.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hfm_node::config::{self, Overrides};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Parser)]
#[command(name = "hf-mirror", version, about = "A federated, read-through mirror of the Hugging Face Hub")]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "human", env = "HF_MIRROR_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one node. Without arguments: the embedded default (127.0.0.1:8080, ./hf-mirror-data,
    /// upstream https://huggingface.co).
    Serve(ServeArgs),
    /// Shows a node's (and its cluster's) members, disk use and hit ratio.
    Status {
        /// The node's operator port (`--operator-listen` of `serve`).
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "HF_MIRROR_URL")]
        url: String,
        /// The operator token (the node's `DATA/operator-token` unless set otherwise).
        #[arg(long, default_value = "hf-mirror-data/operator-token", env = "HF_MIRROR_OPERATOR_TOKEN_FILE")]
        token_file: PathBuf,
        /// Prints one JSON document (the node's status and each member's) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Drains a node: out of placement and DNS, catalog leadership handed over, fills finished;
    /// then it can be stopped. Through the node's operator port, with the operator token.
    Drain {
        /// The node's operator port (`--operator-listen` of `serve`).
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "HF_MIRROR_URL")]
        url: String,
        /// The operator token (the node's `DATA/operator-token` unless set otherwise).
        #[arg(long, default_value = "hf-mirror-data/operator-token", env = "HF_MIRROR_OPERATOR_TOKEN_FILE")]
        token_file: PathBuf,
    },
    /// Pins a repository at a revision and fills every file onto every node (kept, never evicted),
    /// showing progress until done. Safe to interrupt and re-run. Through a node's operator port.
    Mirror {
        /// The repository, ORG/NAME.
        #[arg(long)]
        repo: String,
        #[arg(long = "type", default_value = "model", value_parser = ["model", "dataset"])]
        repo_type: String,
        /// A branch (followed), a tag or a commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Removes the pin instead.
        #[arg(long)]
        unpin: bool,
        /// The node's operator port (`--operator-listen` of `serve`).
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "HF_MIRROR_URL")]
        url: String,
        /// The operator token (the node's `DATA/operator-token` unless set otherwise).
        #[arg(long, default_value = "hf-mirror-data/operator-token", env = "HF_MIRROR_OPERATOR_TOKEN_FILE")]
        token_file: PathBuf,
    },
    /// Lists the pins with their commit and how complete each node is.
    Pins {
        /// The node's operator port (`--operator-listen` of `serve`).
        #[arg(long, default_value = "http://127.0.0.1:9090", env = "HF_MIRROR_URL")]
        url: String,
        /// The operator token (the node's `DATA/operator-token` unless set otherwise).
        #[arg(long, default_value = "hf-mirror-data/operator-token", env = "HF_MIRROR_OPERATOR_TOKEN_FILE")]
        token_file: PathBuf,
    },
    /// Cluster operations: certificates, a local four-node try-out.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Fetches one URL over HTTP/3 and prints the status and headers (the body goes to --output);
    /// for checking a node's HTTP/3, which Debian's curl cannot.
    #[cfg(feature = "http3")]
    H3Get {
        /// An https:// URL.
        url: String,
        /// PEM certificate(s) to trust (the system's roots are not loaded).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Request headers, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// HEAD instead of GET.
        #[arg(long)]
        head: bool,
        /// Where the body goes (default: discarded).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        /// A benchmark instead: this many GETs on one connection; prints the rate.
        #[arg(long)]
        repeat: Option<u64>,
        /// Streams at a time with --repeat.
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Creates the cluster CA and a certificate for every node of the topology.
    Certs {
        #[arg(long, default_value = "topology.toml", env = "HF_MIRROR_CONFIG")]
        config: PathBuf,
        /// Directory to write ca.pem, ca.key and NODE.pem/NODE.key into. A CA already there is
        /// kept, and so is every node's certificate: only nodes without one get one.
        #[arg(long)]
        out: PathBuf,
        /// Also issue a new certificate and key for this node (repeatable), e.g. after a host's key
        /// leaked or was lost.
        #[arg(long, value_name = "NODE")]
        reissue: Vec<String>,
    },
    /// Starts every node of the topology on loopback and prints `node NAME http://ADDR:PORT` for
    /// each once all are ready; SIGINT or SIGTERM stops them.
    Up {
        #[arg(long, default_value = "topology.toml", env = "HF_MIRROR_CONFIG")]
        config: PathBuf,
        /// Directory for every node's data, logs and the generated certificates.
        #[arg(long, default_value = "./hf-mirror-cluster")]
        data_dir: PathBuf,
        /// The upstream Hub for every node.
        #[arg(long, env = "HF_MIRROR_UPSTREAM")]
        upstream: Option<String>,
        /// How long a branch or tag resolution is trusted.
        #[arg(long, env = "HF_MIRROR_REF_TTL")]
        ref_ttl: Option<String>,
    },
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Certs { config: path, out, reissue } => {
            let topology = config::read_topology(&path)?;
            let names: Vec<String> = topology.nodes.iter().map(|node| node.name.clone()).collect();
            if let Some(unknown) = reissue.iter().find(|name| !names.contains(name)) {
                anyhow::bail!("--reissue {unknown}: no node of {} has that name", path.display());
            }
            let written = hfm_cluster::peer::certs::issue_cluster_certs(&out, &topology.cluster.name, &names, &reissue)?;
            let list = |names: &[String]| if names.is_empty() { "none".to_owned() } else { names.join(" ") };
            println!(
                "{} the cluster CA in {}; issued certificates for: {}; kept: {}",
                if written.new_ca { "made" } else { "kept" },
                out.display(),
                list(&written.issued),
                list(&written.kept)
            );
            Ok(())
        }
        ClusterCommand::Up { config: path, data_dir, upstream, ref_ttl } => {
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone())?;
            let options = hfm_node::cli::cluster_up::UpOptions { topology: path, data_dir, upstream, ref_ttl };
            hfm_node::cli::cluster_up::run(options, shutdown).await
        }
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The cluster's topology.toml; without it, the embedded single-node default is used.
    #[arg(long, env = "HF_MIRROR_CONFIG")]
    config: Option<PathBuf>,
    /// Which node of the topology this is.
    #[arg(long, env = "HF_MIRROR_NODE")]
    node: Option<String>,
    /// Address to listen on for HTTP, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, env = "HF_MIRROR_LISTEN")]
    listen: Option<String>,
    /// Directory for the catalog and the blobs.
    #[arg(long, env = "HF_MIRROR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The upstream Hub, e.g. https://huggingface.co.
    #[arg(long, env = "HF_MIRROR_UPSTREAM")]
    upstream: Option<String>,
    /// How long a branch or tag resolution is trusted (e.g. 60s).
    #[arg(long, env = "HF_MIRROR_REF_TTL")]
    ref_ttl: Option<String>,
    /// How long a repo's public/gated status is trusted (e.g. 10m).
    #[arg(long, env = "HF_MIRROR_POLICY_TTL")]
    policy_ttl: Option<String>,
    /// The most blob bytes to keep (e.g. 500GiB); least recently used blobs are evicted beyond it.
    #[arg(long, env = "HF_MIRROR_MAX_DISK")]
    max_disk: Option<String>,
    /// Free space to always leave on the data file system (e.g. 1GiB).
    #[arg(long, env = "HF_MIRROR_MIN_FREE_DISK")]
    min_free_disk: Option<String>,
    /// The URL clients reach this node at, for absolute pagination links (default: the Host header).
    #[arg(long, env = "HF_MIRROR_PUBLIC_URL")]
    public_url: Option<String>,
    /// Entries per page of tree listings.
    #[arg(long, env = "HF_MIRROR_TREE_PAGE_SIZE")]
    tree_page_size: Option<String>,
    /// The pause between two passes of the scrubber over the stored blobs (default 24h; 0 turns it off).
    #[arg(long, env = "HF_MIRROR_SCRUB_INTERVAL")]
    scrub_interval: Option<String>,
    /// Bytes per second the scrubber reads at most (default 50MB).
    #[arg(long, env = "HF_MIRROR_SCRUB_RATE")]
    scrub_rate: Option<String>,
    /// Check stored blobs' chunk sums on every read (default false: once per change of the file,
    /// the scrubber checking again on its schedule).
    #[arg(long, env = "HF_MIRROR_VERIFY_EVERY_READ")]
    verify_every_read: Option<bool>,
    /// The UDP and TCP address of the node's DNS server (cluster with a `[dns]` section only).
    #[arg(long, env = "HF_MIRROR_DNS_LISTEN")]
    dns_listen: Option<String>,
    /// The TCP address of the node's rsync daemon (topologies with an `[rsync]` section only).
    #[arg(long, env = "HF_MIRROR_RSYNC_LISTEN")]
    rsync_listen: Option<String>,
    /// The operator port: `/metrics`, `/healthz`, `/readyz` for anyone reaching it, and status,
    /// drain and pins for a bearer of the operator token (off by default). Also `--operator-listen`.
    #[arg(long, alias = "operator-listen", env = "HF_MIRROR_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// The operator token's file (default `DATA/operator-token`, made at first start).
    #[arg(long, env = "HF_MIRROR_OPERATOR_TOKEN_FILE")]
    operator_token_file: Option<PathBuf>,
    /// The access log's directory, or `off` (default `DATA/logs`).
    #[arg(long, env = "HF_MIRROR_ACCESS_LOG")]
    access_log: Option<String>,
    /// PEM certificate chain: the HTTP port also speaks TLS (ALPN h2, http/1.1); SIGHUP reloads it.
    #[arg(long, env = "HF_MIRROR_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "HF_MIRROR_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

/// The HTTP port's listener, with a deep accept queue: a burst of new connections (many clients at
/// once, a load balancer's reconnect) waits in the kernel rather than having SYNs dropped and
/// retried a second later. The kernel caps it at `net.core.somaxconn`.
///
/// With port 0 the kernel picks the TCP port, and HTTP/3 (served when TLS is on) later binds UDP on
/// that same port, which another program may hold: a few tries find a port free for both (the ports
/// tried are held until the end, so the kernel offers a new one each time).
fn bind_http(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    const ACCEPT_QUEUE: u32 = 4096;
    const PORT_TRIES: usize = 16;
    let bind = || {
        let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(ACCEPT_QUEUE)
    };
    if address.port() != 0 {
        return bind();
    }
    let mut tried = Vec::new();
    for _ in 0..PORT_TRIES {
        let listener = bind()?;
        if std::net::UdpSocket::bind(listener.local_addr()?).is_ok() {
            return Ok(listener);
        }
        tried.push(listener);
    }
    // Every port offered had its UDP twin taken: serve HTTP/1.1 and HTTP/2 on the last (HTTP/3, if
    // TLS asks for it, then says which port it could not bind).
    Ok(tried.pop().expect("PORT_TRIES > 0"))
}

fn init_tracing(format: LogFormat) {
    // openraft warns on every missed heartbeat (4 a second per unreachable voter); gossip already
    // says which node is down, once.
    let filter = tracing_subscriber::EnvFilter::try_from_env("HF_MIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn,openraft::core::heartbeat=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels the token on SIGTERM or SIGINT.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(signal = name, "shutting down");
        shutdown.cancel();
    });
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let handed_over = hfm_node::transport::sockets::take_handed_over()?;
    let topology = match &args.config {
        Some(path) => Some(config::read_topology(path)?),
        None => None,
    };
    let origin = args.config.as_ref().map(|path| path.display().to_string()).unwrap_or_default();
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        upstream: args.upstream,
        ref_ttl: args.ref_ttl,
        policy_ttl: args.policy_ttl,
        max_disk: args.max_disk,
        min_free_disk: args.min_free_disk,
        public_url: args.public_url,
        scrub_interval: args.scrub_interval,
        scrub_rate: args.scrub_rate,
        verify_every_read: args.verify_every_read,
        tree_page_size: args.tree_page_size,
        // Bind addresses of the cluster plane come from the topology only.
        peer_listen: None,
        gossip_listen: None,
        dns_listen: args.dns_listen,
        rsync_listen: args.rsync_listen,
        metrics_listen: args.metrics_listen,
        operator_token_file: args.operator_token_file,
        access_log: args.access_log,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
    };
    let node_config = config::resolve(topology.as_ref().map(|topology| (topology, origin.as_str())), args.node.as_deref(), &overrides)?;
    let listener = match handed_over.http {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => bind_http(node_config.listen).with_context(|| format!("binding {}", node_config.listen))?,
    };
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    hfm_node::serve::run(node_config, listener, handed_over.peer, handed_over.dns, shutdown).await
}

/// `hf-mirror h3-get`.
#[cfg(feature = "http3")]
async fn h3_get(
    url: &str,
    cacert: Option<&std::path::Path>,
    headers: &[String],
    head: bool,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|header| {
            let (name, value) = header.split_once(':').with_context(|| format!("{header:?} is not Name: value"))?;
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        })
        .collect::<anyhow::Result<_>>()?;
    let (status, response_headers, body) = hfm_node::cli::h3_client::get(url, cacert, &headers, head).await?;
    println!("HTTP/3 {}", status.as_u16());
    for (name, value) in &response_headers {
        println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
    }
    if let Some(output) = output {
        std::fs::write(output, &body).with_context(|| format!("writing {}", output.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hf-mirror: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Cluster(command) => cluster(command).await,
            Command::Status { url, token_file, json } => hfm_node::cli::status::print_status(&url, &token_file, json).await,
            #[cfg(feature = "http3")]
            Command::H3Get { url, cacert, headers, head, output, repeat: None, .. } => {
                h3_get(&url, cacert.as_deref(), &headers, head, output.as_deref()).await
            }
            #[cfg(feature = "http3")]
            Command::H3Get { url, cacert, repeat: Some(requests), concurrency, .. } => {
                let (ok, failed, took) = hfm_node::cli::h3_client::load(&url, cacert.as_deref(), requests, concurrency).await?;
                println!("requests {ok} failed {failed} in {:.2} s: {:.1} req/s", took.as_secs_f64(), ok as f64 / took.as_secs_f64());
                Ok(())
            }
            Command::Drain { url, token_file } => hfm_node::cli::status::drain(&url, &token_file).await,
            Command::Mirror { repo, repo_type, revision, unpin, url, token_file } => {
                hfm_node::cli::pins::mirror_command(&url, &token_file, &repo, &repo_type, &revision, unpin).await
            }
            Command::Pins { url, token_file } => hfm_node::cli::pins::print_pins(&url, &token_file).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hf-mirror: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
