//! A network namespace a test makes itself, joined to the host by a veth pair, whose link can
//! be made slow and lossy with `tc`: netem delay and loss where the kernel has netem, else a
//! token bucket (tbf) so narrow that its queue delays packets by seconds and drops the excess.
//! One connection's packets to the namespace can also be dropped silently (a NAT that forgot
//! that connection's mapping): a u32 filter sends them to a tbf whose bucket holds no packet.
//! Needs CAP_NET_ADMIN and iproute2; [`Netns::create`] says why it cannot, so a test can skip.

use std::net::Ipv4Addr;
use std::process::Command;

/// A namespace and its veth pair; both are deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    /// The host's end of the pair.
    pub host_ip: Ipv4Addr,
    /// The namespace's end: where a node started with [`Netns::wrapper`] listens.
    pub ns_ip: Ipv4Addr,
}

/// How the link was impaired, for the test's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Impairment {
    /// `netem`: fixed delay and random loss on both directions.
    Netem(String),
    /// `tbf`: a few kbit/s; queueing delay of seconds and tail drops, on both directions.
    Tbf(String),
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// Makes the namespace and the pair, addressed `host_ip`/30 <-> `ns_ip`/30. The names and
    /// the subnet derive from the process id, so parallel test binaries do not collide.
    pub fn create() -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let subnet = (
            u8::try_from(100 + id % 100).unwrap_or(100),
            u8::try_from((id / 100) % 250).unwrap_or(0),
        );
        let netns = Netns {
            name: format!("tg{id}"),
            host_if: format!("tgh{id}"),
            ns_if: format!("tgn{id}"),
            host_ip: Ipv4Addr::new(10, subnet.0, subnet.1, 1),
            ns_ip: Ipv4Addr::new(10, subnet.0, subnet.1, 2),
        };
        ip(&["netns", "add", &netns.name])?;
        // From here on, Drop cleans up whatever was made.
        netns.wire()?;
        Ok(netns)
    }

    /// [`Netns::create`] for a test, which skips (after saying why) when it gets `None`.
    pub fn for_test() -> Option<Netns> {
        Netns::create()
            .map_err(|why| {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!(
                        "SKIPPED: cannot make a network namespace here ({why}); run as root with iproute2"
                    );
                }
            })
            .ok()
    }

    fn wire(&self) -> Result<(), String> {
        let ns = self.name.as_str();
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
        ])?;
        ip(&["link", "set", &self.ns_if, "netns", ns])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", self.host_ip),
            "dev",
            &self.host_if,
        ])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        in_ns(&[
            "addr",
            "add",
            &format!("{}/30", self.ns_ip),
            "dev",
            &self.ns_if,
        ])?;
        in_ns(&["link", "set", &self.ns_if, "up"])?;
        in_ns(&["link", "set", "lo", "up"])
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(str::to_owned)
            .to_vec()
    }

    /// Makes both directions of the link slow and lossy.
    pub fn impair(&self) -> Result<Impairment, String> {
        let netem = ["netem", "delay", "400ms", "loss", "20%"];
        match self.set_qdisc(&netem) {
            Ok(()) => return Ok(Impairment::Netem(netem.join(" "))),
            // Kernels built without sch_netem (this CI's) say "Specified qdisc kind is unknown".
            Err(err) if err.contains("unknown") => {}
            Err(err) => return Err(err),
        }
        let tbf = ["tbf", "rate", "4kbit", "burst", "1600", "limit", "3000"];
        self.set_qdisc(&tbf)?;
        Ok(Impairment::Tbf(tbf.join(" ")))
    }

    /// Gives the link back its full speed.
    pub fn heal(&self) -> Result<(), String> {
        ip_tc(&["qdisc", "del", "dev", &self.host_if, "root"], None)?;
        ip_tc(
            &["qdisc", "del", "dev", &self.ns_if, "root"],
            Some(&self.name),
        )
    }

    /// The local ports of the namespace's established TCP connections to `peer`.
    pub fn ports_connected_to(&self, peer: std::net::SocketAddr) -> Result<Vec<u16>, String> {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .output()
            .map_err(|e| format!("cannot run `ss`: {e}"))?;
        let listing = String::from_utf8_lossy(&output.stdout);
        // Lines: Recv-Q Send-Q Local:Port Peer:Port.
        Ok(listing
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, remote) = (fields.get(2)?, fields.get(3)?);
                (*remote == peer.to_string())
                    .then(|| local.rsplit(':').next()?.parse().ok())
                    .flatten()
            })
            .collect())
    }

    /// Drops every packet sent to the namespace's end of the connection at `ns_port`, silently,
    /// and lets other connections pass: a NAT that forgot that connection's mapping. The drop is
    /// on the host's side of the link, remote from the namespace: a packet its own qdisc dropped
    /// would count as local congestion, not as a lost one. [`Netns::heal`] undoes it.
    pub fn drop_connection(&self, ns_port: u16) -> Result<(), String> {
        let dev = self.host_if.as_str();
        let port = ns_port.to_string();
        ip_tc(
            &[
                "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
            ],
            None,
        )?;
        for class in ["1:10", "1:20"] {
            ip_tc(
                &[
                    "class", "add", "dev", dev, "parent", "1:", "classid", class, "htb", "rate",
                    "10gbit",
                ],
                None,
            )?;
        }
        // A bucket of 20 bytes: no packet fits, every one is dropped.
        ip_tc(
            &[
                "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "tbf", "rate",
                "8bit", "burst", "20", "limit", "20",
            ],
            None,
        )?;
        ip_tc(
            &[
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dport", &port, "0xffff", "flowid", "1:20",
            ],
            None,
        )
    }

    fn set_qdisc(&self, qdisc: &[&str]) -> Result<(), String> {
        let mut host = vec!["qdisc", "replace", "dev", &self.host_if, "root"];
        host.extend_from_slice(qdisc);
        ip_tc(&host, None)?;
        let mut ns = vec!["qdisc", "replace", "dev", &self.ns_if, "root"];
        ns.extend_from_slice(qdisc);
        ip_tc(&ns, Some(&self.name))
    }
}

/// `tc ARGS`, inside namespace `ns` when given.
fn ip_tc(args: &[&str], ns: Option<&str>) -> Result<(), String> {
    match ns {
        None => run("tc", args),
        Some(ns) => {
            let mut all = vec!["netns", "exec", ns, "tc"];
            all.extend_from_slice(args);
            ip(&all)
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
