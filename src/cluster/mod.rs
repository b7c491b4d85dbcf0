//! The clustered mode (`serve --cluster nats://… --node-id NAME`): customers
//! hash into a fixed number of partitions; each partition has one owner node
//! at a time, by a lease in a JetStream key-value bucket; the owner's changes
//! to the partition's customers, transfers and event ids go to the partition's
//! journal (`journal`) instead of the local disk, and a node that takes a
//! partition over rebuilds it from there. `api` asks [`Cluster::route`] where a
//! customer's calls go: here, or forwarded to the owner.
//!
//! Leases are judged by the NATS servers' clocks (the bucket's `max_age`): an
//! owner that stops renewing loses its keys when they age out, and a live node
//! may then `create` them. The owner stops serving a partition a margin
//! before its lease can age out (by its own monotonic clock, which runs on
//! while a process is stopped), and the journal's expected-sequence check
//! refuses any write a deposed owner still makes.
//!
//! Also the facts every node shares: the watchlist (a bucket every node
//! follows), payee-paid facts (a stream every node counts in its fan-in),
//! and the rulesets each node has loaded (a staged ruleset goes live when
//! every owner has it). docs/scaling.md has the design.
//!
//! Cohesive rather than small: membership, leases, takeover (replay, fence,
//! compaction), hand-over and the shared facts all work on one view of the
//! partitions (`parts`) and one set of NATS handles. Its errors are strings
//! to log: nothing here is answered to a caller but through [`Route`].
//!
//! Owns membership, leases, the hand-over of partitions and the routing view.
//! Must not decide transfers or touch state except through `TransferGuard`'s
//! partition methods; the single-node mode never builds one.

pub mod alertbook;
pub mod journal;

use crate::service::TransferGuard;
use crate::store::{decode_batch, Refused, Replica, Store};
use async_nats::jetstream::{self, kv};
use journal::{Journal, JournalError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How a clustered node joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS servers (comma-separated URLs).
    pub url: String,
    /// This node's name: unique in the cluster, stable across its restarts.
    pub node_id: String,
    /// The gRPC address other nodes forward calls to.
    pub advertise: String,
    /// Partitions of the customers; fixed when the cluster is created.
    pub partitions: u16,
    /// How long a lease (and a node's heartbeat) lasts without renewal.
    pub lease: Duration,
    /// JetStream replicas of the buckets and the journal (3 on a 3-server cluster).
    pub replicas: usize,
    /// Names of the buckets (`<PREFIX>_owners`, `<PREFIX>_nodes`), the stream and its subjects.
    pub prefix: String,
}

pub const DEFAULT_PARTITIONS: u16 = 256;
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);
/// How long joining waits for JetStream to be ready (a cluster electing leaders).
const JOIN_WAIT: Duration = Duration::from_secs(60);

impl ClusterConfig {
    pub fn new(url: &str, node_id: &str, advertise: &str) -> ClusterConfig {
        ClusterConfig {
            url: url.into(),
            node_id: node_id.into(),
            advertise: advertise.into(),
            partitions: DEFAULT_PARTITIONS,
            lease: DEFAULT_LEASE,
            replicas: 1,
            prefix: "transferguard".into(),
        }
    }
}

pub use crate::state::partition_of;

/// Where this node stands with a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Holding {
    /// Another node's, or nobody's.
    Foreign = 0,
    /// Leased here; the journal is being replayed: not serving yet.
    Acquiring = 1,
    Owned = 2,
    /// Handing over: its queued changes are written, no new calls are served.
    Releasing = 3,
}

impl Holding {
    fn from_u8(v: u8) -> Holding {
        match v {
            1 => Holding::Acquiring,
            2 => Holding::Owned,
            3 => Holding::Releasing,
            _ => Holding::Foreign,
        }
    }
}

#[derive(Default)]
struct Part {
    /// Held while appending to the partition's journal: a compaction holds it
    /// from reading the journal to purging it, so nothing lands in between.
    appending: tokio::sync::Mutex<()>,
    /// Appends since the journal was last compacted.
    since_compaction: AtomicU64,
    holding: AtomicU8,
    /// Milliseconds since the node started: serve only before this.
    valid_until: AtomicU64,
    /// The lease's revision this node last wrote.
    revision: AtomicU64,
    /// The last journal sequence this node wrote or read.
    last: AtomicU64,
    /// The owner as last read from the bucket (for routing).
    owner: RwLock<Option<Arc<str>>>,
}

impl Part {
    fn holding(&self) -> Holding {
        Holding::from_u8(self.holding.load(Ordering::Acquire))
    }

    fn set(&self, h: Holding) {
        self.holding.store(h as u8, Ordering::Release);
    }
}

/// Where a customer's call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Forward {
        node: Arc<str>,
        addr: Arc<str>,
    },
    /// Nobody can take it now (a partition changing hands): retry shortly.
    Unavailable(String),
}

pub struct Cluster {
    config: ClusterConfig,
    parts: Arc<[Part]>,
    /// Live nodes' gRPC addresses, by node id (this one included).
    peers: RwLock<HashMap<Arc<str>, Arc<str>>>,
    /// The rulesets each live node has loaded (live, staged, or just replaced).
    loaded: RwLock<HashMap<Arc<str>, Vec<String>>>,
    /// Every node that owns partitions has loaded this node's live ruleset:
    /// only then does it serve (see [`Cluster::route`]).
    agreed: std::sync::atomic::AtomicBool,
    /// The ruleset this node replaced last, still reported as loaded until
    /// every owner has gone live with the new one.
    previous: std::sync::Mutex<Option<String>>,
    journal: Journal,
    owners: kv::Store,
    nodes: kv::Store,
    /// The police watchlist every node reads (key: the account as normalised, hex).
    watchlist: kv::Store,
    /// Payee-paid facts on their way to the other nodes.
    facts: tokio::sync::mpsc::UnboundedSender<Fact>,
    client: async_nats::Client,
    js: jetstream::Context,
    guard: Arc<TransferGuard>,
    runtime: tokio::runtime::Handle,
    epoch: Instant,
    me: Arc<str>,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Cluster {
    /// Joins the cluster: creates the buckets and the journal if missing,
    /// sends this node's changes to the journal from now on, and starts the
    /// lease loop (which takes a fair share of the partitions).
    pub async fn join(config: ClusterConfig, guard: Arc<TransferGuard>, store: &Store) -> Result<Arc<Cluster>, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .name(format!("transfer-guard {}", config.node_id))
            .connect(servers(&config.url)?)
            .await
            .map_err(|e| format!("connect {}: {e}", config.url))?;
        let js = jetstream::new(client.clone());
        // A bucket is a stream of the shape `create_key_value` makes; made
        // here because that call first queries the account, which nats-server
        // 2.9 answers in a form the client does not read.
        let open = |name: &'static str, max_age: Duration| {
            let js = js.clone();
            let bucket = format!("{}_{name}", config.prefix.replace(['.', '-'], "_"));
            let stream = jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                allow_rollup: true,
                deny_delete: true,
                // Reads from the stream's leader only: a replica answering a
                // direct get may lag, and a lease must never look older than it is.
                allow_direct: false,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            };
            async move {
                js.get_or_create_stream(stream).await.map_err(|e| format!("create bucket {bucket}: {e}"))?;
                js.get_key_value(&bucket).await.map_err(|e| format!("open bucket {bucket}: {e}"))
            }
        };
        // A JetStream cluster just started elects its leaders first: retry for a while.
        let deadline = Instant::now() + JOIN_WAIT;
        let (owners, nodes, watchlist, journal) = loop {
            let opened = async {
                Ok::<_, String>((
                    open("owners", config.lease).await?,
                    open("nodes", config.lease).await?,
                    // Watchlist entries end by their own expiry, not the bucket's.
                    open("watchlist", Duration::ZERO).await?,
                    Journal::open(js.clone(), &config.prefix, config.replicas).await?,
                ))
            };
            match opened.await {
                Ok(all) => break all,
                Err(e) if Instant::now() < deadline => {
                    tracing::info!(error = %e, "the cluster's buckets are not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let payees = jetstream::stream::Config {
            name: journal::stream_name(&config.prefix, "PAYEES"),
            subjects: vec![format!("{}.payees", config.prefix)],
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            max_age: Duration::from_secs(FACTS_KEPT_SECS),
            ..Default::default()
        };
        js.get_or_create_stream(payees).await.map_err(|e| format!("create the payees' stream: {e}"))?;
        let retention = Duration::from_secs(guard.alert_retention_secs().max(60) as u64);
        js.get_or_create_stream(alertbook::stream(&config.prefix, config.replicas, retention))
            .await
            .map_err(|e| format!("create the alert book's stream: {e}"))?;
        let (facts, unsent) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            facts,
            client,
            js: js.clone(),
            parts: (0..config.partitions).map(|_| Part::default()).collect(),
            me: config.node_id.as_str().into(),
            config,
            peers: RwLock::new(HashMap::new()),
            loaded: RwLock::new(HashMap::new()),
            agreed: std::sync::atomic::AtomicBool::new(false),
            previous: std::sync::Mutex::new(None),
            journal,
            owners,
            nodes,
            watchlist,
            guard,
            runtime: tokio::runtime::Handle::current(),
            epoch: Instant::now(),
        });
        cluster.guard.set_cluster_ids(&cluster.me, cluster.config.partitions);
        store.replicate_to(cluster.clone());
        tokio::spawn(cluster.clone().run());
        tokio::spawn(cluster.clone().follow_watchlist());
        tokio::spawn(cluster.clone().follow_owners());
        tokio::spawn(cluster.clone().send_facts(unsent));
        tokio::spawn(cluster.clone().follow_facts());
        tokio::spawn(cluster.clone().follow_alerts());
        tracing::info!(node = %cluster.me, partitions = cluster.config.partitions, "joined the cluster");
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.me
    }

    pub fn partitions(&self) -> u16 {
        self.config.partitions
    }

    /// How long a lease lasts unrenewed.
    pub fn lease(&self) -> Duration {
        self.config.lease
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Where the calls of `customer_id` go now.
    pub fn route(&self, customer_id: &str) -> Route {
        self.route_partition(partition_of(customer_id, self.config.partitions))
    }

    /// The other live nodes' (id, address).
    pub fn peers(&self) -> Vec<(Arc<str>, Arc<str>)> {
        read(&self.peers).into_iter().filter(|(n, _)| **n != *self.me).collect()
    }

    /// Keeps the routing view of who owns what up to date as leases are
    /// taken and given back (the rounds see leases that aged out).
    async fn follow_owners(self: Arc<Self>) {
        loop {
            match self.owners.watch_all().await {
                Ok(mut changes) => {
                    while let Some(Ok(entry)) = tokio_stream::StreamExt::next(&mut changes).await {
                        let Some(part) = entry
                            .key
                            .strip_prefix('p')
                            .and_then(|p| p.parse::<usize>().ok())
                            .and_then(|p| self.parts.get(p))
                        else {
                            continue;
                        };
                        let owner = (entry.operation == kv::Operation::Put)
                            .then(|| Arc::<str>::from(String::from_utf8_lossy(&entry.value).as_ref()));
                        *part.owner.write().unwrap_or_else(|e| e.into_inner()) = owner;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the leases; routing follows the rounds only"),
            }
            tokio::time::sleep(self.config.lease / 3).await;
        }
    }

    /// Applies every change to the shared watchlist, from whichever node, to
    /// this node's state (its own too: applying twice changes nothing).
    async fn follow_watchlist(self: Arc<Self>) {
        loop {
            match self.watchlist.watch_with_history(">").await {
                Ok(mut changes) => {
                    while let Some(change) = tokio_stream::StreamExt::next(&mut changes).await {
                        match change {
                            Ok(entry) => self.apply_watch(&entry),
                            Err(e) => {
                                tracing::warn!(error = %e, "watchlist watch interrupted");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the shared watchlist; retrying"),
            }
            tokio::time::sleep(self.config.lease / 3).await;
        }
    }

    fn apply_watch(&self, entry: &kv::Entry) {
        let Some(key) = from_hex(&entry.key) else { return };
        let key = String::from_utf8_lossy(&key);
        let value = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<crate::store::WatchEntryRec>(&entry.value) {
                Ok(rec) => Some(rec.into()),
                Err(e) => return tracing::warn!(error = %e, "a watchlist entry in the bucket does not read"),
            },
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        self.guard.state().watchlist_apply(&key, value);
    }

    /// Puts watchlist changes (a [`crate::store::SHARED`] batch) into the shared bucket.
    async fn share(&self, batch: &[u8]) -> Result<(), String> {
        for (space, key, value) in decode_batch(batch).ok_or("a shared batch does not read")? {
            if space != crate::store::Space::Watchlist {
                continue;
            }
            let key = to_hex(&key);
            match value {
                Some(v) => self.watchlist.put(&key, v.into()).await.map(drop).map_err(|e| format!("watchlist: {e}"))?,
                None => self.watchlist.delete(&key).await.map_err(|e| format!("watchlist: {e}"))?,
            }
        }
        Ok(())
    }

    /// Publishes payee-paid facts in batches as they come (best effort: a
    /// batch that cannot be sent is logged and dropped; the payer's own node
    /// counted it already).
    async fn send_facts(self: Arc<Self>, mut unsent: tokio::sync::mpsc::UnboundedReceiver<Fact>) {
        let subject = format!("{}.payees", self.config.prefix);
        let mut batch = Vec::new();
        while unsent.recv_many(&mut batch, 1024).await > 0 {
            let mut bytes = Vec::with_capacity(batch.len() * 24);
            for (payee, sender, at) in batch.drain(..) {
                bytes.extend_from_slice(&payee.to_be_bytes());
                bytes.extend_from_slice(&sender.to_be_bytes());
                bytes.extend_from_slice(&at.to_be_bytes());
            }
            let sent = match self.js.publish(subject.clone(), bytes.into()).await {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, "payee facts not sent; other nodes' fan-in misses them");
            }
        }
    }

    /// Counts every node's payee-paid facts of the last day in this node's
    /// fan-in (its own too: counting twice changes nothing).
    async fn follow_facts(self: Arc<Self>) {
        use jetstream::consumer::DeliverPolicy;
        let stream_name = journal::stream_name(&self.config.prefix, "PAYEES");
        loop {
            let since = time::OffsetDateTime::now_utc() - time::Duration::seconds(crate::state::WINDOW_SECS);
            match self.ordered(&stream_name, DeliverPolicy::ByStartTime { start_time: since }).await {
                Ok(mut messages) => {
                    while let Some(message) = tokio_stream::StreamExt::next(&mut messages).await {
                        let Ok(message) = message else { break };
                        if let Ok(info) = message.info() {
                            let lag = time::OffsetDateTime::now_utc() - info.published;
                            self.guard.metrics().cluster_fact_lag_seconds.observe(lag.as_seconds_f64().max(0.0));
                        }
                        for fact in message.payload.chunks_exact(24) {
                            let word = |i: usize| u64::from_be_bytes(fact[i..i + 8].try_into().expect("8 bytes"));
                            let (payee, sender, at) = (word(0), word(8), word(16) as i64);
                            self.guard.state().record_sender(
                                crate::state::PayeeKey(payee),
                                crate::state::Sender(sender),
                                at,
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow the payee facts; retrying"),
            }
            tokio::time::sleep(self.config.lease / 3).await;
        }
    }

    /// The sink that publishes this node's alert events for the other nodes' books.
    pub fn alert_feed(&self) -> alertbook::AlertFeed {
        alertbook::AlertFeed { js: self.js.clone(), prefix: self.config.prefix.clone() }
    }

    /// Keeps a copy of every other node's alerts in this node's book: the
    /// latest event of each alert from the stream, then each new one.
    async fn follow_alerts(self: Arc<Self>) {
        let stream_name = journal::stream_name(&self.config.prefix, "ALERTBOOK");
        loop {
            match self.ordered(&stream_name, jetstream::consumer::DeliverPolicy::All).await {
                Ok(mut messages) => {
                    while let Some(message) = tokio_stream::StreamExt::next(&mut messages).await {
                        let Ok(message) = message else { break };
                        let Some(event) = alertbook::decode(&message.payload) else {
                            tracing::warn!(subject = %message.subject, "an alert book entry this node cannot read");
                            continue;
                        };
                        // The owner's own book is the true one.
                        let owner_here = crate::alerts::partition_of_id(&event.alert.id)
                            .and_then(|p| self.parts.get(p as usize))
                            .is_some_and(|part| part.holding() != Holding::Foreign);
                        if !owner_here && self.guard.alerts().mirror(event) {
                            if let Ok(info) = message.info() {
                                let lag = (time::OffsetDateTime::now_utc() - info.published).as_seconds_f64();
                                self.guard.metrics().cluster_alert_copy_lag_seconds.observe(lag.max(0.0));
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow the alert book; retrying"),
            }
            tokio::time::sleep(self.config.lease / 3).await;
        }
    }

    /// An ordered push consumer of `stream_name` from `policy`, as a stream of messages.
    async fn ordered(
        &self,
        stream_name: &str,
        policy: jetstream::consumer::DeliverPolicy,
    ) -> Result<jetstream::consumer::push::Ordered, String> {
        use jetstream::consumer::push;
        let stream = self.js.get_stream_no_info(stream_name).await.map_err(|e| e.to_string())?;
        stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                deliver_policy: policy,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .messages()
            .await
            .map_err(|e| e.to_string())
    }

    /// How many partitions this node serves now.
    pub fn owned(&self) -> usize {
        self.parts.iter().filter(|p| p.holding() == Holding::Owned).count()
    }

    fn count_owned(&self) {
        self.guard.metrics().cluster_partitions.set(self.owned() as i64);
    }

    /// Renews this node's leases every third of a lease, on a task of its
    /// own (a slow takeover never delays a renewal); reads the cluster,
    /// releases and takes partitions every third of a lease too, for ever.
    async fn run(self: Arc<Self>) {
        let tick = self.config.lease / 3;
        let renewing = self.clone();
        tokio::spawn(async move {
            loop {
                renewing.renew_all().await;
                tokio::time::sleep(tick).await;
            }
        });
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "cluster round failed; retrying");
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// One round: heartbeat, read who is live and who owns what, give back
    /// what is above a fair share, take free partitions up to it. Each read is
    /// bounded by a third of a lease.
    async fn round(self: &Arc<Self>) -> Result<(), String> {
        let step = self.config.lease / 3;
        let bounded = |what: &'static str| move |_| format!("{what}: no answer within {} ms", step.as_millis());
        tokio::time::timeout(step, self.nodes.put(&*self.me, self.heartbeat().into()))
            .await
            .map_err(bounded("heartbeat"))?
            .map_err(|e| format!("heartbeat: {e}"))?;
        tokio::time::timeout(step, self.read_peers()).await.map_err(bounded("nodes"))??;
        let owners = tokio::time::timeout(step, self.read_owners()).await.map_err(bounded("owners"))??;
        let mut resumed = JoinSet::new();
        let mut mine = Vec::new();
        let mut free = Vec::new();
        // Partitions per live node, from the bucket.
        let mut counts: HashMap<Arc<str>, usize> = read(&self.peers).keys().map(|n| (n.clone(), 0)).collect();
        for (node, _) in owners.iter().flatten() {
            if let Some(n) = counts.get_mut(node) {
                *n += 1;
            }
        }
        for (p, owner) in owners.into_iter().enumerate() {
            let part = &self.parts[p];
            let p = p as u16;
            match owner {
                Some((node, revision)) if *node == *self.me => {
                    mine.push(p);
                    // Ours in the bucket but not in memory: this node restarted within its lease.
                    if part.holding() == Holding::Foreign {
                        let this = self.clone();
                        resumed.spawn(async move { this.acquire(p, Some(revision)).await });
                    }
                    *part.owner.write().unwrap_or_else(|e| e.into_inner()) = Some(node);
                }
                Some((node, _)) => {
                    if matches!(part.holding(), Holding::Owned | Holding::Acquiring) {
                        self.lose(p, &format!("the bucket names {node}"));
                    }
                    *part.owner.write().unwrap_or_else(|e| e.into_inner()) = Some(node);
                }
                None => {
                    if matches!(part.holding(), Holding::Owned | Holding::Acquiring) {
                        self.lose(p, "the lease aged out");
                    }
                    *part.owner.write().unwrap_or_else(|e| e.into_inner()) = None;
                    free.push(p);
                }
            }
        }
        while resumed.join_next().await.is_some() {}
        for (p, part) in self.parts.iter().enumerate() {
            if part.holding() == Holding::Owned && part.since_compaction.load(Ordering::Relaxed) >= COMPACT_EVERY {
                if let Err(e) = self.compact(p as u16).await {
                    tracing::warn!(partition = p, error = %e, "journal not compacted");
                }
            }
        }
        self.agree_on_rules();
        if !self.agreed.load(Ordering::Acquire) {
            // Take nothing while this node's rules are not the cluster's.
            return Ok(());
        }
        let live = counts.len().max(1);
        let (floor, fair) = (self.config.partitions as usize / live, (self.config.partitions as usize).div_ceil(live));
        // Give back what is above the fair share, and above the floor while a
        // live node is below it (else 86 + 86 + 84 of 256 would stay so).
        let short: usize = counts.values().map(|n| floor.saturating_sub(*n)).sum();
        let excess = mine.len().saturating_sub(fair).max(mine.len().saturating_sub(floor).min(short));
        if excess > 0 {
            // The newest node takes them: give back the highest-numbered first.
            for p in mine.iter().rev().take(excess) {
                self.release(*p).await;
            }
        } else if mine.len() < fair && !free.is_empty() {
            // Start at a place of this node's own, so joining nodes do not all race for partition 0.
            let start = partition_of(&self.me, free.len() as u16) as usize;
            free.rotate_left(start);
            let mut takes = JoinSet::new();
            for p in free.into_iter().take(fair - mine.len()) {
                let this = self.clone();
                takes.spawn(async move { this.acquire(p, None).await });
            }
            while takes.join_next().await.is_some() {}
        }
        Ok(())
    }

    /// The live nodes and their addresses: the heartbeat keys the nodes
    /// bucket holds (read from the stream's subjects, without a consumer).
    async fn read_peers(&self) -> Result<(), String> {
        let prefix = format!("$KV.{}.", self.nodes.name);
        let stream = self.nodes.stream.clone();
        let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await.map_err(|e| format!("nodes: {e}"))?;
        let (mut peers, mut loaded) = (HashMap::new(), HashMap::new());
        while let Some(subject) = tokio_stream::StreamExt::next(&mut subjects).await {
            let (subject, _) = subject.map_err(|e| format!("nodes: {e}"))?;
            let Some(node) = subject.strip_prefix(&prefix) else { continue };
            if let Ok(Some(e)) = self.nodes.entry(node).await {
                if e.operation == kv::Operation::Put {
                    let Ok(beat) = serde_json::from_slice::<Heartbeat>(&e.value) else { continue };
                    peers.insert(Arc::from(node), Arc::from(beat.addr.as_str()));
                    loaded.insert(Arc::from(node), beat.loaded);
                }
            }
        }
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// What this node tells the others: where to forward to, and the rulesets it has loaded.
    fn heartbeat(&self) -> Vec<u8> {
        let mut loaded = vec![self.guard.ruleset().version.to_string()];
        loaded.extend(self.guard.staged_version());
        loaded.extend(self.previous.lock().unwrap_or_else(|e| e.into_inner()).clone());
        serde_json::to_vec(&Heartbeat { addr: self.config.advertise.clone(), loaded }).expect("a heartbeat serialises")
    }

    /// The rules' agreement, after reading the nodes and the owners: a staged
    /// ruleset goes live once every owner has loaded it; this node serves only
    /// while every owner has loaded its live ruleset (a node holding no
    /// partition is not asked: a newcomer with other rules cannot stop the
    /// cluster, it only serves nothing itself).
    fn agree_on_rules(&self) {
        let owners: std::collections::HashSet<Arc<str>> =
            self.parts.iter().filter_map(|p| read(&p.owner)).filter(|n| **n != *self.me).collect();
        let loaded = read(&self.loaded);
        let everyone_has =
            |version: &str| owners.iter().all(|n| loaded.get(n).is_none_or(|l| l.iter().any(|v| v == version)));
        let live = self.guard.ruleset().version.to_string();
        if let Some(staged) = self.guard.staged_version() {
            if everyone_has(&staged) && self.guard.activate_staged(&staged) {
                *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(live);
                return self.agree_on_rules();
            }
        }
        // The replaced version is dropped once every owner is live on ours.
        let mut previous = self.previous.lock().unwrap_or_else(|e| e.into_inner());
        if previous.is_some() && owners.iter().all(|n| loaded.get(n).is_none_or(|l| l.first() == Some(&live))) {
            *previous = None;
        }
        let agreed = everyone_has(&live);
        if self.agreed.swap(agreed, Ordering::AcqRel) != agreed {
            if agreed {
                tracing::info!(version = %live, "every node owning partitions has this node's rules loaded");
            } else {
                tracing::error!(version = %live, "a node owning partitions has not loaded this node's rules: serving nothing here until it has");
            }
        }
    }

    /// Every partition's (owner, revision), None where free.
    async fn read_owners(&self) -> Result<Vec<Option<(Arc<str>, u64)>>, String> {
        let mut reads = JoinSet::new();
        // A few dozen reads in flight at once.
        for chunk in (0..self.config.partitions).collect::<Vec<_>>().chunks(32) {
            let (owners, chunk) = (self.owners.clone(), chunk.to_vec());
            reads.spawn(async move {
                let mut out = Vec::with_capacity(chunk.len());
                for p in chunk {
                    let entry = owners.entry(lease_key(p)).await.map_err(|e| format!("lease {p}: {e}"))?;
                    let owner = entry
                        .filter(|e| e.operation == kv::Operation::Put)
                        .map(|e| (Arc::<str>::from(String::from_utf8_lossy(&e.value).as_ref()), e.revision));
                    out.push((p, owner));
                }
                Ok::<_, String>(out)
            });
        }
        let mut owners = vec![None; self.config.partitions as usize];
        while let Some(done) = reads.join_next().await {
            for (p, owner) in done.map_err(|e| e.to_string())?? {
                owners[p as usize] = owner;
            }
        }
        Ok(owners)
    }

    /// Renews every lease this node holds, from the revisions it holds.
    async fn renew_all(self: &Arc<Self>) {
        let mut renewals = JoinSet::new();
        for (p, part) in self.parts.iter().enumerate() {
            if matches!(part.holding(), Holding::Owned | Holding::Acquiring) {
                let this = self.clone();
                let revision = part.revision.load(Ordering::Acquire);
                renewals.spawn(async move { this.renew(p as u16, revision).await });
            }
        }
        while renewals.join_next().await.is_some() {}
    }

    /// How long after sending a renewal this node may serve on it: a sixth
    /// of the lease short of when the bucket could age it out.
    fn valid_from(&self, sent: u64) -> u64 {
        let lease = self.config.lease.as_millis() as u64;
        sent + lease - lease / 6
    }

    async fn renew(&self, p: u16, revision: u64) {
        let part = &self.parts[p as usize];
        let sent = self.now_ms();
        let renewal = self.owners.update(lease_key(p), self.me.as_bytes().to_vec().into(), revision);
        match tokio::time::timeout(self.config.lease / 3, renewal).await {
            Ok(Ok(rev)) => {
                part.revision.store(rev, Ordering::Release);
                part.valid_until.store(self.valid_from(sent), Ordering::Release);
            }
            Ok(Err(e)) => self.lose(p, &format!("renewal refused: {e}")),
            // Not renewed (yet): the lease runs out by itself unless the next round renews it.
            Err(_) => tracing::warn!(partition = p, "lease renewal unanswered"),
        }
    }

    /// Takes partition `p` (a free one, or ours at `revision` after a
    /// restart): leases it, replays its journal into the service, fences the
    /// journal, then serves it.
    async fn acquire(&self, p: u16, revision: Option<u64>) {
        let part = &self.parts[p as usize];
        let sent = self.now_ms();
        let me = bytes::Bytes::from(self.me.as_bytes().to_vec());
        let leased = match revision {
            None => self.owners.create(lease_key(p), me).await.map_err(|e| e.to_string()),
            Some(rev) => self.owners.update(lease_key(p), me, rev).await.map_err(|e| e.to_string()),
        };
        let Ok(rev) = leased else { return };
        part.revision.store(rev, Ordering::Release);
        part.valid_until.store(self.valid_from(sent), Ordering::Release);
        part.set(Holding::Acquiring);
        let started = Instant::now();
        for _ in 0..3 {
            let (batches, last) = match self.journal.replay(p).await {
                Ok(read) => read,
                Err(e) => return self.lose(p, &format!("cannot replay: {e}")),
            };
            // Fence first: what restoring writes (adopted alerts' events) is appended after the fence.
            match self.journal.fence(p, last, &self.me).await {
                Ok(seq) => part.last.store(seq, Ordering::Release),
                // A late write of the deposed owner landed while we read: read again.
                Err(JournalError::Fenced(_)) => continue,
                Err(e) => return self.lose(p, &e.to_string()),
            }
            let changes = batches.iter().filter_map(|b| decode_batch(b)).flatten().collect::<Vec<_>>();
            let n = changes.len();
            if batches.len() > 1 {
                // What the next owner replays: the current images, not the history.
                let _appending = part.appending.lock().await;
                if let Err(e) = self.compact_with(p, &changes).await {
                    return self.lose(p, &format!("cannot compact: {e}"));
                }
            }
            self.forget(p);
            if let Err(e) = self.guard.restore_partition(changes) {
                return self.lose(p, &format!("cannot restore: {e}"));
            }
            part.set(Holding::Owned);
            self.count_owned();
            self.guard.metrics().cluster_takeover_seconds.observe(started.elapsed().as_secs_f64());
            tracing::info!(partition = p, changes = n, ms = started.elapsed().as_millis() as u64, "partition taken");
            return;
        }
        self.lose(p, "the journal kept moving while it was replayed");
    }

    /// Hands partition `p` back: stops serving it, waits until its queued
    /// changes are written, forgets it, deletes the lease.
    async fn release(&self, p: u16) {
        let part = &self.parts[p as usize];
        part.set(Holding::Releasing);
        if let Err(e) = self.guard.committed().await {
            tracing::warn!(partition = p, error = %e, "releasing a partition whose last changes did not commit");
        }
        self.forget(p);
        part.set(Holding::Foreign);
        *part.owner.write().unwrap_or_else(|e| e.into_inner()) = None;
        self.count_owned();
        let rev = part.revision.load(Ordering::Acquire);
        let _ = self.owners.delete_expect_revision(lease_key(p), Some(rev)).await;
        tracing::info!(partition = p, "partition given back for a fair share");
    }

    /// Rewrites partition `p`'s journal as its current images: reads it (no
    /// append can land meanwhile), appends the images, purges what was before.
    async fn compact(&self, p: u16) -> Result<(), String> {
        let part = &self.parts[p as usize];
        let _appending = part.appending.lock().await;
        if part.holding() != Holding::Owned {
            return Ok(());
        }
        let (batches, last) = self.journal.replay(p).await?;
        if last != part.last.load(Ordering::Acquire) {
            self.lose(p, "the journal moved under this owner");
            return Err(format!("partition {p}: fenced"));
        }
        let changes = batches.iter().filter_map(|b| decode_batch(b)).flatten().collect::<Vec<_>>();
        self.compact_with(p, &changes).await
    }

    /// Appends the last image of each record of `changes` (deleted ones
    /// left out) in chunks a message can carry, from the partition's last
    /// sequence, then purges the messages before them. The caller holds
    /// the partition's append lock.
    async fn compact_with(&self, p: u16, changes: &[crate::store::Change]) -> Result<(), String> {
        let started = Instant::now();
        let part = &self.parts[p as usize];
        let mut latest: HashMap<(u8, &[u8]), usize> = HashMap::new();
        for (i, (space, key, _)) in changes.iter().enumerate() {
            latest.insert((*space as u8, key.as_slice()), i);
        }
        // Event ids past the idempotency window are pruned by each node, not in the journal: drop them here.
        let cutoff = self.guard.now() - crate::service::IDEMPOTENCY_SECS;
        let current = |i: &usize| match &changes[*i] {
            (_, _, None) => false,
            (space @ crate::store::Space::Events, key, Some(v)) => {
                crate::store::decode_change::<(u64, i64)>(*space, key, v).is_ok_and(|(_, at)| at >= cutoff)
            }
            _ => true,
        };
        let mut keep: Vec<usize> = latest.into_values().filter(current).collect();
        keep.sort_unstable();
        let (mut first, mut chunk) = (None, Vec::new());
        let mut last = part.last.load(Ordering::Acquire);
        for (n, i) in keep.iter().enumerate() {
            let (space, key, value) = &changes[*i];
            crate::store::encode_change(&mut chunk, *space, key, value.as_deref());
            if chunk.len() >= COMPACT_CHUNK_BYTES || n + 1 == keep.len() {
                last = self.journal.append(p, last, std::mem::take(&mut chunk)).await.map_err(|e| e.to_string())?;
                first.get_or_insert(last);
            }
        }
        let first = match first {
            Some(f) => f,
            // Nothing current: a marker to purge before.
            None => {
                last = self.journal.fence(p, last, &self.me).await.map_err(|e| e.to_string())?;
                last
            }
        };
        part.last.store(last, Ordering::Release);
        self.journal.purge_before(p, first).await?;
        part.since_compaction.store(0, Ordering::Relaxed);
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(partition = p, from = changes.len(), to = keep.len(), ms, "journal compacted");
        Ok(())
    }

    /// This node no longer owns `p`: stop serving it and forget its state.
    fn lose(&self, p: u16, why: &str) {
        let part = &self.parts[p as usize];
        if part.holding() != Holding::Foreign {
            part.set(Holding::Foreign);
            self.count_owned();
            self.guard.metrics().cluster_partitions_lost.inc();
            self.forget(p);
            tracing::warn!(partition = p, why, "partition lost");
        }
    }

    fn forget(&self, p: u16) {
        let n = self.config.partitions;
        // Its alerts stay, as copies the new owner's events keep current.
        self.guard.forget_customers(|customer| partition_of(customer, n) == p);
    }

    /// Where calls about partition `p` go now.
    pub fn route_partition(&self, p: u16) -> Route {
        let Some(part) = self.parts.get(p as usize) else {
            return Route::Unavailable(format!("no partition {p} in this cluster"));
        };
        match part.holding() {
            Holding::Owned if !self.agreed.load(Ordering::Acquire) => {
                Route::Unavailable(format!("partition {p}: the nodes have not all loaded this node's rules"))
            }
            Holding::Owned if self.now_ms() < part.valid_until.load(Ordering::Acquire) => Route::Local,
            Holding::Owned => Route::Unavailable(format!("partition {p}: this node's lease is being renewed")),
            Holding::Acquiring | Holding::Releasing => {
                Route::Unavailable(format!("partition {p} is changing owner; retry shortly"))
            }
            Holding::Foreign => match read(&part.owner) {
                Some(node) if *node == *self.me => Route::Unavailable(format!("partition {p} is being taken back")),
                Some(node) => match read(&self.peers).get(&node) {
                    Some(addr) => Route::Forward { addr: addr.clone(), node },
                    None => Route::Unavailable(format!("partition {p}: owner {node} has no address yet")),
                },
                None => Route::Unavailable(format!("partition {p} has no owner yet; retry shortly")),
            },
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    text.len()
        .is_multiple_of(2)
        .then(|| (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect())
        .flatten()
}

/// The NATS servers of a comma-separated list of URLs.
fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse().map_err(|e| format!("NATS server `{u}`: {e}")))
        .collect()
}

/// A partition's journal is compacted after this many appends.
const COMPACT_EVERY: u64 = 1_000;
/// A compacted journal is written in messages of about this size (JetStream's
/// default limit is 1 MB).
const COMPACT_CHUNK_BYTES: usize = 256 * 1024;

/// A payee-paid fact: (payee key, the sender ([`crate::state::Sender`]: stable hash, new-payee bit), when).
type Fact = (u64, u64, i64);

/// How long payee-paid facts are kept: the longest fan-in window, and an hour.
const FACTS_KEPT_SECS: u64 = 25 * 3600;

/// A node's heartbeat, the value of its key in the nodes bucket.
#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    /// Where to forward calls to it.
    addr: String,
    /// The rulesets it has loaded: live first, then staged, then just replaced.
    loaded: Vec<String>,
}

fn lease_key(p: u16) -> String {
    format!("p{p}")
}

impl Replica for Cluster {
    fn partition(&self, customer_id: &str) -> u16 {
        partition_of(customer_id, self.config.partitions)
    }

    fn paid(&self, payee: u64, sender: u64, at: i64) {
        let _ = self.facts.send((payee, sender, at));
    }

    fn append(&self, batches: Vec<(u16, Vec<u8>)>) -> Result<(), Refused> {
        let mut refused = Refused { partitions: Vec::new(), why: String::new() };
        let mut refuse = |p: u16, why: String| {
            refused.partitions.push(p);
            if !refused.why.is_empty() {
                refused.why.push_str("; ");
            }
            refused.why.push_str(&why);
        };
        let started = Instant::now();
        self.runtime.block_on(async {
            let mut appends = JoinSet::new();
            let mut unanswered = std::collections::BTreeSet::new();
            for (p, batch) in batches {
                if p == crate::store::SHARED {
                    if let Err(e) = self.share(&batch).await {
                        refuse(p, e);
                    }
                    continue;
                }
                let part = &self.parts[p as usize];
                if part.holding() == Holding::Foreign {
                    refuse(p, format!("partition {p} is not this node's"));
                    continue;
                }
                let (journal, parts) = (self.journal.clone(), self.parts.clone());
                unanswered.insert(p);
                appends.spawn(async move {
                    let part = &parts[p as usize];
                    let _appending = part.appending.lock().await;
                    let appended = journal.append(p, part.last.load(Ordering::Acquire), batch).await;
                    if let Ok(seq) = appended {
                        part.last.store(seq, Ordering::Release);
                        part.since_compaction.fetch_add(1, Ordering::Relaxed);
                    }
                    (p, appended)
                });
            }
            while let Some(done) = appends.join_next().await {
                let Ok((p, appended)) = done else { continue };
                unanswered.remove(&p);
                match appended {
                    Ok(_) => {}
                    Err(JournalError::Fenced(_)) => {
                        self.lose(p, "the journal was fenced by a newer owner");
                        refuse(p, format!("partition {p} has a newer owner"));
                    }
                    Err(e) => refuse(p, e.to_string()),
                }
            }
            // An append whose task did not finish (it panicked) was not made.
            for p in unanswered {
                refuse(p, format!("partition {p}: the append did not finish"));
            }
        });
        self.guard.metrics().cluster_append_seconds.observe(started.elapsed().as_secs_f64());
        if refused.partitions.is_empty() {
            Ok(())
        } else {
            Err(refused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_has_one_partition_on_every_node_and_build() {
        assert_eq!(partition_of("c-1", 256), partition_of("c-1", 256));
        let spread: std::collections::HashSet<u16> = (0..4096).map(|i| partition_of(&format!("c-{i}"), 256)).collect();
        assert_eq!(spread.len(), 256, "4,096 customers reach every partition");
        assert!((0..1000).all(|i| partition_of(&format!("x{i}"), 7) < 7));
        // Pinned: a change here would move every customer to another partition.
        assert_eq!((partition_of("seed-customer", 256), partition_of("customer-1", 256)), (200, 155));
    }

    #[test]
    fn bucket_keys_round_trip_any_account_spelling() {
        for account in ["6222020200112233", "GB33 BUKB-2020", "账户/1"] {
            assert_eq!(from_hex(&to_hex(account.as_bytes())).unwrap(), account.as_bytes());
        }
        assert_eq!(from_hex("6"), None);
        assert_eq!(from_hex("zz"), None);
    }

    #[test]
    fn holdings_round_trip() {
        for h in [Holding::Foreign, Holding::Acquiring, Holding::Owned, Holding::Releasing] {
            assert_eq!(Holding::from_u8(h as u8), h);
        }
    }
}
