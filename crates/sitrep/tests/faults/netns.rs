//! The lab: three network namespaces joined by veth pairs, and the kernel faults on them.
//!
//! ```text
//!   region ns                 hub ns                     authority ns
//!   to-hub 10.77.1.2/30 ─── to-region 10.77.1.1/30
//!                             lo 10.77.0.1/32 (the hub's service address)
//!                             to-auth 10.77.2.1/30 ───── to-hub 10.77.2.2/30
//! ```
//!
//! The region and the authority route `10.77.0.0/24` (hub service addresses)
//! through the hub's end of their link; the hub reaches both directly. Each
//! namespace has its loopback up (the node's HTTP API listens on
//! `127.0.0.1:7400` inside it) and an `ifb` device `sink` that stays down:
//! a packet redirected to a down device is dropped by the kernel (`tc
//! mirred`'s "device is down" path), which is how [`Lab::drop_arriving`] cuts a
//! direction of a link silently, as a failed WAN does, with the same kernel
//! parts on any Linux (`ingress` qdisc, `u32`, `mirred`, `ifb`).
//!
//! Every name carries the test process's id and the scenario's tag, so runs
//! never collide; [`Lab`]'s `Drop` deletes the namespaces (and with them
//! their interfaces), also when a test panics.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::process::Command;

/// The hub's first service address (on its loopback).
pub(crate) const HUB_ADDR: &str = "10.77.0.1";
/// Where the hub moves in scenario (c).
pub(crate) const HUB_ADDR_MOVED: &str = "10.77.0.2";
/// The region's end of the region↔hub link.
pub(crate) const REGION_ADDR: &str = "10.77.1.2";
/// The hub's end of the region↔hub link.
pub(crate) const HUB_REGION_SIDE: &str = "10.77.1.1";
/// The authority's end of the hub↔authority link.
pub(crate) const AUTHORITY_ADDR: &str = "10.77.2.2";

/// A node's place in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Site {
    Region,
    Hub,
    Authority,
}

impl Site {
    pub(crate) const ALL: [Self; 3] = [Self::Region, Self::Hub, Self::Authority];

    fn short(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Hub => "hub",
            Self::Authority => "auth",
        }
    }

    /// The node id the test roster gives this site.
    pub(crate) fn node_id(self) -> &'static str {
        match self {
            Self::Region => "region-uppsala",
            Self::Hub => "nspl-hub",
            Self::Authority => "socialstyrelsen",
        }
    }
}

/// One end of a link: the namespace and the device in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct End {
    pub(crate) site: Site,
    pub(crate) dev: &'static str,
}

/// The region↔hub link: the region's end, then the hub's.
pub(crate) const REGION_HUB: (End, End) = (
    End {
        site: Site::Region,
        dev: "to-hub",
    },
    End {
        site: Site::Hub,
        dev: "to-region",
    },
);

/// Three namespaces, wired; deleted on drop.
#[derive(Debug)]
pub(crate) struct Lab {
    prefix: String,
    made: Vec<String>,
}

impl Lab {
    /// Builds the lab for the scenario `tag`.
    ///
    /// # Errors
    /// The first command that failed (not root, no `ip`, a kernel without
    /// network namespaces, veth, ifb or the tc parts), with its output.
    pub(crate) fn build(tag: &str) -> Result<Self, String> {
        remove_stale();
        let mut lab = Self {
            prefix: format!("srf{}-{tag}", std::process::id()),
            made: Vec::new(),
        };
        for site in Site::ALL {
            let name = lab.ns(site);
            run("ip", &["netns", "add", &name])?;
            lab.made.push(name);
            lab.sh(site, "ip link set lo up")?;
            lab.sh(site, "ip link add sink type ifb")?;
        }
        let (region, hub, auth) = (lab.ns(Site::Region), lab.ns(Site::Hub), lab.ns(Site::Authority));
        run(
            "ip",
            &[
                "link",
                "add",
                "to-hub",
                "netns",
                &region,
                "type",
                "veth",
                "peer",
                "name",
                "to-region",
                "netns",
                &hub,
            ],
        )?;
        run(
            "ip",
            &[
                "link", "add", "to-hub", "netns", &auth, "type", "veth", "peer", "name", "to-auth", "netns",
                &hub,
            ],
        )?;
        lab.sh(Site::Region, &format!("ip addr add {REGION_ADDR}/30 dev to-hub"))?;
        lab.sh(Site::Region, "ip link set to-hub up")?;
        lab.sh(
            Site::Region,
            &format!("ip route add 10.77.0.0/24 via {HUB_REGION_SIDE}"),
        )?;
        lab.sh(
            Site::Hub,
            &format!("ip addr add {HUB_REGION_SIDE}/30 dev to-region"),
        )?;
        lab.sh(Site::Hub, "ip addr add 10.77.2.1/30 dev to-auth")?;
        lab.sh(Site::Hub, "ip link set to-region up")?;
        lab.sh(Site::Hub, "ip link set to-auth up")?;
        lab.sh(Site::Hub, &format!("ip addr add {HUB_ADDR}/32 dev lo"))?;
        lab.sh(
            Site::Authority,
            &format!("ip addr add {AUTHORITY_ADDR}/30 dev to-hub"),
        )?;
        lab.sh(Site::Authority, "ip link set to-hub up")?;
        lab.sh(Site::Authority, "ip route add 10.77.0.0/24 via 10.77.2.1")?;
        // Prove the fault mechanism works here before any test relies on it.
        lab.drop_arriving(REGION_HUB.1)?;
        lab.restore_arriving(REGION_HUB.1)?;
        Ok(lab)
    }

    /// The namespace name of `site`.
    pub(crate) fn ns(&self, site: Site) -> String {
        format!("{}-{}", self.prefix, site.short())
    }

    /// Runs an `ip`/`tc` command line (split on spaces) inside `site`'s namespace.
    ///
    /// # Errors
    /// If it fails, with its output.
    pub(crate) fn sh(&self, site: Site, cmd: &str) -> Result<(), String> {
        let ns = self.ns(site);
        let mut args = vec!["netns", "exec", ns.as_str()];
        args.extend(cmd.split(' '));
        run("ip", &args)
    }

    /// From now on, every IP packet arriving at `end` is dropped: the
    /// direction *towards* `end` is cut. ARP still passes, so the link
    /// itself stays up, as when a router in between loses the route.
    ///
    /// # Errors
    /// If `tc` fails.
    pub(crate) fn drop_arriving(&self, end: End) -> Result<(), String> {
        self.sh(end.site, &format!("tc qdisc add dev {} ingress", end.dev))?;
        self.sh(
            end.site,
            &format!(
                "tc filter add dev {} parent ffff: protocol ip u32 match u32 0 0 action mirred egress redirect dev sink",
                end.dev
            ),
        )
    }

    /// Undoes [`Self::drop_arriving`].
    ///
    /// # Errors
    /// If `tc` fails (also when nothing was being dropped).
    pub(crate) fn restore_arriving(&self, end: End) -> Result<(), String> {
        self.sh(end.site, &format!("tc qdisc del dev {} ingress", end.dev))
    }

    /// How many packets arriving at `end` the kernel has dropped since
    /// [`Self::drop_arriving`] (the filter's action counter), to show that
    /// a cut really cut traffic.
    pub(crate) fn dropped_at(&self, end: End) -> u64 {
        let ns = self.ns(end.site);
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "-s", "filter", "show", "dev", end.dev, "ingress",
            ])
            .output();
        let Ok(out) = out else { return 0 };
        // "Sent 384 bytes 6 pkt (dropped 0, overlimits 6 requeues 0)":
        // mirred counts redirects to a down device as overlimits.
        String::from_utf8_lossy(&out.stdout)
            .split("overlimits ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread moved into the network namespace `ns` and waits for
/// it: sockets it opens belong to that namespace (and keep belonging to it
/// whichever thread uses them later), as do threads it spawns.
///
/// # Panics
/// If the namespace cannot be entered, or `f` panics.
pub(crate) fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    match spawn_in_ns(ns, f).join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// As [`in_ns`], without waiting: the thread's handle.
///
/// # Panics
/// If no thread can be spawned; the thread panics if the namespace cannot be entered.
pub(crate) fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::Builder::new()
        .name(format!("in {ns}"))
        .spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .unwrap_or_else(|e| panic!("spawn a thread: {e}"))
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes namespaces that earlier runs of this suite left behind (a run
/// killed before its `Drop`): those whose process no longer exists.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("srf")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
