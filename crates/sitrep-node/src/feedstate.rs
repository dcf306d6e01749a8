//! Feed state beside the store: the aggregator's subscriptions and a
//! subscriber's requests (each a small JSON file in the channel store's
//! directory, so `secure` state stays on the secure volume, written to a
//! temporary file, synced, renamed and the directory synced), and the
//! roll-ups a node holds per feed with their recent history, which the
//! Server-Sent Events replay.
//!
//! Not here: the roll-up rules (`sitrep_core::feed`), who may subscribe and
//! what is sent (`feeds`), the reports (the store's inbox).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sitrep_core::{Channel, NodeId};
use sitrep_proto::v1 as pb;

/// Roll-ups kept per feed for Server-Sent Events to resume from.
pub(crate) const HISTORY: usize = 256;

/// The aggregator's subscriptions on one channel, and how far into the
/// inbox it has read requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Subscriptions {
    /// Inbox cursor up to which SUBSCRIBE and UNSUBSCRIBE were handled.
    pub(crate) cursor: u64,
    /// One per (feed, subscriber).
    pub(crate) subscriptions: Vec<Subscription>,
}

/// One subscriber of one feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Subscription {
    pub(crate) feed: String,
    /// Node id.
    pub(crate) subscriber: String,
    /// SCB county codes it asked for; empty: all.
    pub(crate) regions: Vec<String>,
    /// When it was taken, ms since the epoch.
    pub(crate) since_ms: i64,
}

impl Subscriptions {
    pub(crate) fn file(store_dir: &Path) -> PathBuf {
        store_dir.join("feed-subscriptions.json")
    }

    /// Adds or replaces the subscription of (feed, subscriber).
    pub(crate) fn put(&mut self, sub: Subscription) {
        self.subscriptions
            .retain(|s| !(s.feed == sub.feed && s.subscriber == sub.subscriber));
        self.subscriptions.push(sub);
    }

    /// Removes it; whether there was one.
    pub(crate) fn remove(&mut self, feed: &str, subscriber: &NodeId) -> bool {
        let before = self.subscriptions.len();
        self.subscriptions
            .retain(|s| !(s.feed == feed && s.subscriber == subscriber.as_str()));
        self.subscriptions.len() != before
    }
}

/// What became of a subscription a node asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RequestState {
    /// Sent; no answer yet.
    Pending,
    /// Updates arrive.
    Active,
    /// The aggregator refused it.
    Refused,
    /// Unsubscribed, or ended by the aggregator.
    Ended,
}

impl RequestState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Refused => "refused",
            Self::Ended => "ended",
        }
    }
}

/// A subscription this node asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) feed: String,
    /// Node id.
    pub(crate) aggregator: String,
    pub(crate) channel: String,
    pub(crate) regions: Vec<String>,
    pub(crate) state: RequestState,
    /// Why it was refused or ended.
    pub(crate) reason: String,
    /// The SUBSCRIBE (or UNSUBSCRIBE) message id.
    pub(crate) request_id: String,
    pub(crate) updated_ms: i64,
}

/// The subscriptions a node asked for on one channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Requests {
    pub(crate) requests: Vec<Request>,
}

impl Requests {
    pub(crate) fn file(store_dir: &Path) -> PathBuf {
        store_dir.join("feed-requests.json")
    }

    /// Adds or replaces the request for (feed, aggregator).
    pub(crate) fn put(&mut self, r: Request) {
        self.requests
            .retain(|x| !(x.feed == r.feed && x.aggregator == r.aggregator));
        self.requests.push(r);
    }

    pub(crate) fn get_mut(&mut self, feed: &str, aggregator: &NodeId) -> Option<&mut Request> {
        self.requests
            .iter_mut()
            .find(|x| x.feed == feed && x.aggregator == aggregator.as_str())
    }
}

/// Reads a state file; a missing file is the default (nothing yet).
///
/// # Errors
/// A file that cannot be read or does not parse: named, with the reason.
pub(crate) fn load<T: Default + serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| format!("{} does not parse: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes a state file durably: a temporary file (mode 0600), `fdatasync`,
/// rename over the old one, `fsync` of the directory. A crash leaves the old
/// file or the new one.
///
/// # Errors
/// Any I/O failure, with the path.
pub(crate) fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| format!("{}: {e}", path.display()))?;
    let tmp = path.with_extension("json.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| fail("create", e))?;
    f.write_all(&bytes).map_err(|e| fail("write", e))?;
    f.sync_data().map_err(|e| fail("sync", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| fail("rename into", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail("sync the directory of", e))?;
    }
    Ok(())
}

/// The roll-ups a node holds for one feed: the latest and the recent ones,
/// oldest first, by sequence.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    /// The channel it travels on.
    pub(crate) channel: Channel,
    /// When the latest arrived (at a subscriber) or was built (at the
    /// aggregator), ms since the epoch.
    pub(crate) received_ms: i64,
    pub(crate) history: VecDeque<Arc<pb::NationalRollup>>,
}

impl Held {
    pub(crate) fn new(channel: Channel, received_ms: i64) -> Self {
        Self {
            channel,
            received_ms,
            history: VecDeque::new(),
        }
    }

    pub(crate) fn latest(&self) -> Option<&Arc<pb::NationalRollup>> {
        self.history.back()
    }

    /// Keeps `r` if it is newer than the latest; whether it was.
    pub(crate) fn offer(&mut self, r: pb::NationalRollup, received_ms: i64) -> bool {
        if self.latest().is_some_and(|l| l.sequence >= r.sequence) {
            return false;
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Arc::new(r));
        self.received_ms = received_ms;
        true
    }

    /// Roll-ups after sequence `after`, oldest first. If `after` is older
    /// than the history reaches (or 0, a client new to the feed), the
    /// latest alone: every roll-up is the whole picture, so nothing of the
    /// state is missed.
    pub(crate) fn after(&self, after: u64) -> Vec<Arc<pb::NationalRollup>> {
        let reaches = self.history.front().is_some_and(|first| first.sequence <= after);
        if reaches {
            self.history
                .iter()
                .filter(|r| r.sequence > after)
                .cloned()
                .collect()
        } else {
            self.latest()
                .filter(|l| l.sequence > after)
                .cloned()
                .into_iter()
                .collect()
        }
    }
}

/// The feeds a node holds, by name.
pub(crate) type HeldFeeds = BTreeMap<String, Held>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rollup(sequence: u64) -> pb::NationalRollup {
        pb::NationalRollup {
            feed: "f".into(),
            sequence,
            ..pb::NationalRollup::default()
        }
    }

    #[test]
    fn held_keeps_newer_only_and_replays_after_a_sequence() {
        let mut h = Held::new(Channel::Open, 0);
        assert!(h.offer(rollup(10), 1));
        assert!(!h.offer(rollup(10), 2), "equal is not newer");
        assert!(!h.offer(rollup(9), 3), "older is not newer");
        assert!(h.offer(rollup(20), 4));
        assert!(h.offer(rollup(30), 5));
        let seqs = |v: Vec<Arc<pb::NationalRollup>>| v.iter().map(|r| r.sequence).collect::<Vec<_>>();
        assert_eq!(seqs(h.after(0)), [30], "a new client: the latest");
        assert_eq!(seqs(h.after(10)), [20, 30]);
        assert_eq!(seqs(h.after(30)), Vec::<u64>::new());
        for s in 0..HISTORY as u64 {
            h.offer(rollup(100 + s), 6);
        }
        assert_eq!(h.history.len(), HISTORY);
        assert_eq!(
            seqs(h.after(10)),
            [100 + HISTORY as u64 - 1],
            "too old: the latest alone"
        );
    }

    #[test]
    fn state_files_round_trip_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Subscriptions::file(dir.path());
        let none: Subscriptions = load(&path).expect("missing is empty");
        assert!(none.subscriptions.is_empty());
        let mut s = Subscriptions {
            cursor: 7,
            ..Subscriptions::default()
        };
        s.put(Subscription {
            feed: "f".into(),
            subscriber: "msb".into(),
            regions: vec!["03".into()],
            since_ms: 1,
        });
        save(&path, &s).expect("save");
        let back: Subscriptions = load(&path).expect("load");
        assert_eq!(back.cursor, 7);
        assert_eq!(back.subscriptions, s.subscriptions);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"{not json").expect("write");
        let err = load::<Subscriptions>(&path).expect_err("broken");
        assert!(err.contains("feed-subscriptions.json does not parse"), "{err}");
    }
}
