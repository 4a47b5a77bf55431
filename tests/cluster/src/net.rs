//! The network the harness's nodes live on: one network namespace per node, joined by veth pairs to
//! a bridge in the harness's own namespace (where the fake Hub and the test client are), or — where
//! namespaces cannot be made — distinct loopback addresses.
//!
//! A link between two nodes is cut by pointing each node's neighbour entry for the other at a MAC
//! address nobody has: frames are sent and silently lost, as on a real partition (no error comes
//! back to the sender), while both nodes still reach the Hub and the clients.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NETWORKS_MADE: AtomicU32 = AtomicU32::new(0);

/// A MAC address no interface has: frames to it vanish.
const NOWHERE_MAC: &str = "02:00:5e:00:de:ad";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkKind {
    Namespaces,
    Loopback,
}

pub struct Network {
    kind: NetworkKind,
    tag: String,
    /// The first three octets of the nodes' addresses.
    prefix: [u8; 3],
    nodes: usize,
    /// Why namespaces were not used, for the test output.
    fallback_reason: Option<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("running ip")?;
    if !output.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

impl Network {
    /// Makes a network for `nodes` nodes: namespaces when possible (and not disabled with
    /// `HFM_HARNESS_NET=loopback`), else loopback addresses.
    pub fn create(nodes: usize) -> Network {
        let serial = NETWORKS_MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:04x}", (pid.wrapping_mul(31).wrapping_add(serial.wrapping_mul(7919))) & 0xffff);
        let third = 1 + ((pid.wrapping_add(serial.wrapping_mul(37))) % 250) as u8;
        let namespaces =
            Network { kind: NetworkKind::Namespaces, tag: tag.clone(), prefix: [10, 213, third], nodes, fallback_reason: None };
        let reason = if std::env::var("HFM_HARNESS_NET").as_deref() == Ok("loopback") {
            "HFM_HARNESS_NET=loopback".to_owned()
        } else {
            match namespaces.build() {
                Ok(()) => return namespaces,
                Err(error) => {
                    namespaces.teardown();
                    format!("{error:#}")
                }
            }
        };
        Network {
            kind: NetworkKind::Loopback,
            tag,
            prefix: [127, 100 + (third % 100), (pid % 250) as u8 + 1],
            nodes,
            fallback_reason: Some(reason),
        }
    }

    fn bridge(&self) -> String {
        format!("hfm{}br", self.tag)
    }

    /// The namespace of node `index`, when nodes run in namespaces.
    pub fn namespace(&self, index: usize) -> Option<String> {
        (self.kind == NetworkKind::Namespaces).then(|| format!("hfm{}n{index}", self.tag))
    }

    fn host_veth(&self, index: usize) -> String {
        format!("hfm{}v{index}", self.tag)
    }

    fn build(&self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.hub_ip()), "dev", &bridge])?;
        ip(&["addr", "add", &format!("{}/24", self.cdn_ip()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for index in 0..self.nodes {
            let namespace = self.namespace(index).expect("namespaces");
            let veth = self.host_veth(index);
            ip(&["netns", "add", &namespace])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", self.node_ip(index)), "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn teardown(&self) {
        for index in 0..self.nodes {
            if let Some(namespace) = self.namespace(index) {
                let _ = ip(&["netns", "del", &namespace]);
            }
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }

    pub fn kind(&self) -> NetworkKind {
        self.kind
    }

    /// An error saying why there are no namespaces, for a scenario that cannot run without them (it
    /// must fail saying so, never pass having done nothing).
    pub fn require_namespaces(&self, needed_for: &str) -> anyhow::Result<()> {
        if self.kind == NetworkKind::Namespaces {
            return Ok(());
        }
        let user = if rustix::process::geteuid().is_root() { "run as root" } else { "not run as root" };
        bail!(
            "{needed_for} needs network namespaces, and the harness has none ({user}): {}",
            self.fallback_reason.as_deref().unwrap_or("?")
        )
    }

    /// One line for the test output saying which network ran.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.fallback_reason) {
            (NetworkKind::Namespaces, _) => format!(
                "cluster harness: network namespaces hfm{}n0..{} on bridge {} ({}.{}.{}.0/24); partitions are real",
                self.tag,
                self.nodes - 1,
                self.bridge(),
                self.prefix[0],
                self.prefix[1],
                self.prefix[2]
            ),
            (NetworkKind::Loopback, reason) => format!(
                "cluster harness: loopback fallback ({}.{}.{}.x), partitions cannot be made here (namespaces unavailable: {})",
                self.prefix[0],
                self.prefix[1],
                self.prefix[2],
                reason.as_deref().unwrap_or("?")
            ),
        }
    }

    /// The prefix the nodes and the test's own clients share (the bridge's subnet, or the loopback
    /// addresses of the fallback).
    pub fn client_prefix(&self) -> String {
        format!("{}.{}.{}.0/24", self.prefix[0], self.prefix[1], self.prefix[2])
    }

    pub fn node_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], index as u8 + 1)
    }

    /// Where the fake Hub listens: reachable from every node and from the test.
    pub fn hub_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 254)
    }

    /// Where the fake Hub's CDN listens (another host, as upstream's CDN is).
    pub fn cdn_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], 253)
    }

    /// Runs `work` inside node `index`'s namespace (on a thread of its own, which is what `setns`
    /// moves), so sockets it binds belong to that namespace.
    pub fn run_in<T: Send>(&self, index: usize, work: impl FnOnce() -> std::io::Result<T> + Send) -> anyhow::Result<T> {
        let Some(namespace) = self.namespace(index) else { return Ok(work()?) };
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<T> {
                    let handle = std::fs::File::open(format!("/var/run/netns/{namespace}")).context("opening the namespace")?;
                    rustix::thread::move_into_link_name_space(handle.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                        .context("entering the namespace")?;
                    Ok(work()?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        })
    }

    /// Cuts the link between two nodes, both ways.
    pub fn cut(&self, first: usize, second: usize) -> anyhow::Result<()> {
        self.set_neighbour(first, second, true)?;
        self.set_neighbour(second, first, true)
    }

    /// Restores the link between two nodes.
    pub fn heal(&self, first: usize, second: usize) -> anyhow::Result<()> {
        self.set_neighbour(first, second, false)?;
        self.set_neighbour(second, first, false)
    }

    /// Cuts every link between nodes on different sides.
    pub fn partition(&self, sides: &[&[usize]]) -> anyhow::Result<()> {
        for (number, side) in sides.iter().enumerate() {
            for other in &sides[number + 1..] {
                for &first in *side {
                    for &second in *other {
                        self.cut(first, second)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restores every link between nodes.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        for first in 0..self.nodes {
            for second in first + 1..self.nodes {
                self.heal(first, second)?;
            }
        }
        Ok(())
    }

    /// Makes node `index`'s outgoing link slow: every packet it sends waits `delay_ms` and `loss` of
    /// them (0..1, seeded) are lost — `tc netem` on its egress, which this kernel lacks, done by a
    /// userspace delay line (`delay_line.py`) on a TUN device the node's routes send everything
    /// through. Dropping the returned link makes the node's link fast again.
    pub fn slow_link(&self, index: usize, delay_ms: u32, loss: f64, seed: u64) -> anyhow::Result<SlowLink> {
        let Some(namespace) = self.namespace(index) else { bail!("a link can only be slowed in a network namespace") };
        let script = crate::root().join("tests/cluster/delay_line.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3"])
            .arg(&script)
            .args(["--name", "slow0", "--delay-ms", &delay_ms.to_string(), "--loss", &loss.to_string(), "--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the delay line")?;
        let mut stdout = BufReader::new(child.stdout.take().context("the delay line's stdout")?);
        let mut ready = String::new();
        stdout.read_line(&mut ready)?;
        let link = SlowLink { namespace, subnet: self.client_prefix(), node_ip: self.node_ip(index).to_string(), child, stdout };
        anyhow::ensure!(ready.trim() == "ready", "the delay line did not start: {ready:?}");
        let sysctl = |setting: &str| -> anyhow::Result<()> {
            let output = Command::new("ip").args(["netns", "exec", &link.namespace, "sysctl", "-q", "-w", setting]).output()?;
            anyhow::ensure!(output.status.success(), "sysctl {setting}: {}", String::from_utf8_lossy(&output.stderr).trim());
            Ok(())
        };
        // What comes out of the delay line carries the node's own address: forward it, do not
        // take it for a spoof.
        for setting in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.slow0.rp_filter=0",
            "net.ipv4.conf.slow0.accept_local=1",
        ] {
            sysctl(setting)?;
        }
        let ns = link.namespace.as_str();
        ip(&["-n", ns, "link", "set", "slow0", "up"])?;
        ip(&["-n", ns, "route", "replace", &link.subnet, "dev", "eth0", "table", "100"])?;
        ip(&["-n", ns, "rule", "add", "iif", "slow0", "lookup", "100", "pref", "100"])?;
        ip(&["-n", ns, "route", "replace", &link.subnet, "dev", "slow0", "src", &link.node_ip])?;
        Ok(link)
    }

    fn set_neighbour(&self, from: usize, to: usize, cut: bool) -> anyhow::Result<()> {
        let Some(namespace) = self.namespace(from) else { bail!("links can only be cut between network namespaces") };
        let target = self.node_ip(to).to_string();
        if cut {
            ip(&["-n", &namespace, "neigh", "replace", &target, "lladdr", NOWHERE_MAC, "nud", "permanent", "dev", "eth0"])
        } else {
            // Absent already is fine (never cut).
            let _ = ip(&["-n", &namespace, "neigh", "del", &target, "dev", "eth0"]);
            Ok(())
        }
    }
}

/// A node's slowed link (see [`Network::slow_link`]); dropped, the link is fast again.
pub struct SlowLink {
    namespace: String,
    subnet: String,
    node_ip: String,
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl SlowLink {
    /// Makes the link fast again; returns the delay line's count of forwarded and dropped packets.
    pub fn restore(mut self) -> anyhow::Result<String> {
        self.unroute();
        if let Some(stdin) = self.child.stdin.take() {
            drop(stdin);
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).context("bad pid")?,
            rustix::process::Signal::TERM,
        );
        let mut counts = String::new();
        self.stdout.read_line(&mut counts)?;
        let _ = self.child.wait();
        Ok(counts.trim().to_owned())
    }

    fn unroute(&self) {
        let ns = self.namespace.as_str();
        let _ = ip(&["-n", ns, "route", "replace", &self.subnet, "dev", "eth0", "src", &self.node_ip]);
        let _ = ip(&["-n", ns, "rule", "del", "iif", "slow0", "lookup", "100", "pref", "100"]);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.unroute();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if self.kind == NetworkKind::Namespaces {
            self.teardown();
        }
    }
}
