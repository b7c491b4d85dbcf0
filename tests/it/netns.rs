//! The clustered mode across a real network: nats-server and two nodes each
//! in a network namespace of its own, joined by veth links to a bridge that
//! the test (the tellers) sits on; then one node is cut off from the NATS
//! server and the other node (blackhole routes in its namespace) while the
//! tellers can still reach it, and the cut is healed. Needs root (`ip netns`);
//! without it the test says so and does nothing else.

use crate::cluster::{gist, node_flags, screen_until_answered, wait_until_spread, Teller};
use crate::harness::{ordinary, repo};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use transfer_guard::api::forward::NODE_HEADER;
use transfer_guard::api::proto as pb;

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip (Debian package iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A bridge on this host and namespaces hanging off it, each with one
/// address; all removed on drop (with the processes started in them).
struct Network {
    tag: String,
    subnet: String,
    spaces: Vec<String>,
    children: Vec<Child>,
}

impl Network {
    fn new() -> Network {
        let n = std::process::id() % 100_000;
        let subnet = format!("10.213.{}", n % 250);
        let net = Network { tag: n.to_string(), subnet, spaces: Vec::new(), children: Vec::new() };
        let bridge = net.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.1/24", net.subnet), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        net
    }

    fn bridge(&self) -> String {
        format!("tgbr{}", self.tag)
    }

    /// A namespace with address `<subnet>.<host>`; returns its address.
    fn host(&mut self, name: char, host: u8) -> String {
        let (ns, outside, inside) =
            (format!("tg{name}{}", self.tag), format!("tgv{}{name}", self.tag), format!("tgp{}{name}", self.tag));
        ip(&["netns", "add", &ns]);
        self.spaces.push(ns.clone());
        ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
        ip(&["link", "set", &outside, "master", &self.bridge(), "up"]);
        ip(&["link", "set", &inside, "netns", &ns]);
        let addr = format!("{}.{host}", self.subnet);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inside]);
        ip(&["-n", &ns, "link", "set", &inside, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        addr
    }

    fn namespace(&self, name: char) -> String {
        format!("tg{name}{}", self.tag)
    }

    /// Starts `program args` inside namespace `name`, its stderr in `log`.
    fn spawn(&mut self, name: char, program: &str, args: &[String], log: &Path) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace(name), program])
            .args(args)
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("ip netns exec");
        self.children.push(child);
    }

    /// Cuts namespace `name` off from `addrs` (packets to them are dropped), or heals the cut.
    fn cut(&self, name: char, addrs: &[&str], cut: bool) {
        for addr in addrs {
            let verb = if cut { "add" } else { "del" };
            ip(&["-n", &self.namespace(name), "route", verb, "blackhole", &format!("{addr}/32")]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.spaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).status();
    }
}

fn wait_listening(addr: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_err() {
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        assert!(Instant::now() < deadline, "nothing listens on {addr}:\n{logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn teller(addr: &str) -> Teller {
    Teller::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_cluster_never_answers_for_what_it_lost_and_rejoins() {
    if effective_uid() != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Network::new();
    let nats_ip = net.host('n', 2);
    let a_ip = net.host('a', 3);
    let b_ip = net.host('b', 4);
    let store = dir.path().join("js");
    let args: Vec<String> =
        ["-js", "-a", &nats_ip, "-p", "4222", "-sd", store.to_str().unwrap()].map(String::from).into();
    net.spawn('n', "nats-server", &args, &dir.path().join("nats.log"));
    wait_listening(&format!("{nats_ip}:4222"), &dir.path().join("nats.log"));
    let bin = env!("CARGO_BIN_EXE_transfer-guard");
    let mut grpc = HashMap::new();
    for (name, addr) in [('a', &a_ip), ('b', &b_ip)] {
        let listen = format!("{addr}:50051");
        let mut flags = vec!["serve".to_string(), "--listen".into(), listen.clone(), "--insecure-plaintext".into()];
        flags.extend(node_flags(&format!("nats://{nats_ip}:4222"), &name.to_string()));
        let data = dir.path().join(name.to_string());
        flags.extend(["--data-dir".into(), data.display().to_string(), "--advertise".into(), listen.clone()]);
        let log = dir.path().join(format!("{name}.log"));
        net.spawn(name, bin, &flags, &log);
        wait_listening(&listen, &log);
        grpc.insert(name, listen);
    }
    let (mut via_a, mut via_b) = (teller(&grpc[&'a']).await, teller(&grpc[&'b']).await);
    wait_until_spread(&mut via_a, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Customers of both nodes, through both, across the network.
    let requests: Vec<pb::ScreenRequest> =
        (0..32).map(|i| ordinary(&format!("net-{i}"), &format!("net-customer-{i}"), "6222020200112233")).collect();
    let mut first = HashMap::new();
    let mut owner = HashMap::new();
    for (i, r) in requests.iter().enumerate() {
        let t = if i % 2 == 0 { &mut via_a } else { &mut via_b };
        let (answer, node) = screen_until_answered(t, r, Duration::from_secs(30)).await;
        first.insert(r.request_id.clone(), gist(&answer));
        owner.insert(r.request_id.clone(), node);
    }
    assert!(owner.values().any(|n| n == "b"), "b owned some customers before the cut");

    // Cut b off from NATS and from a; the tellers still reach b.
    net.cut('b', &[&nats_ip, &a_ip], true);
    let cut_at = Instant::now();
    // a takes b's partitions over; every customer is answered through a, the same as before.
    for r in &requests {
        let (answer, node) = screen_until_answered(&mut via_a, r, Duration::from_secs(60)).await;
        assert_eq!(node, "a", "{}", r.request_id);
        assert_eq!(gist(&answer), first[&r.request_id], "{}", r.request_id);
    }
    // New transfers of b's former customers are decided by a meanwhile.
    let during: Vec<pb::ScreenRequest> = requests
        .iter()
        .filter(|r| owner[&r.request_id] == "b")
        .map(|r| {
            let customer = &r.customer.as_ref().unwrap().customer_id;
            ordinary(&format!("{}-during", r.request_id), customer, "6222020200112233")
        })
        .collect();
    for r in &during {
        let (answer, _) = screen_until_answered(&mut via_a, r, Duration::from_secs(60)).await;
        first.insert(r.request_id.clone(), gist(&answer));
    }
    // Past its lease, b answers nothing from what it knew (refuses, or says it
    // cannot record: the fail-safe), and every call to it ends.
    let past_lease = Duration::from_secs(3);
    tokio::time::sleep(past_lease.saturating_sub(cut_at.elapsed())).await;
    let mut tally: HashMap<&str, usize> = HashMap::new();
    for r in requests.iter().chain(&during) {
        let asked = tokio::time::timeout(Duration::from_secs(20), via_b.screen(r.clone())).await;
        match asked.unwrap_or_else(|_| panic!("{}: b did not answer within 20 s", r.request_id)) {
            Err(s) => {
                assert!(
                    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded),
                    "{}: {s:?}",
                    r.request_id
                );
                *tally.entry("refused").or_default() += 1;
            }
            Ok(answer) => {
                let node = answer.metadata().get(NODE_HEADER).map(|v| v.to_str().unwrap().to_string());
                let answer = answer.into_inner();
                let fail_safe = answer.hits.iter().any(|h| h.rule_id == "fail-safe");
                assert!(
                    fail_safe || gist(&answer) == first[&r.request_id],
                    "{}: b answered {:?} (node {node:?}), the cluster had {:?}",
                    r.request_id,
                    gist(&answer),
                    first[&r.request_id]
                );
                *tally.entry(if fail_safe { "fail-safe" } else { "the same answer" }).or_default() += 1;
            }
        }
    }
    eprintln!("b, cut off, answered: {tally:?}");

    // Healed: b rejoins, takes its share again, and every answer stands, through either node.
    net.cut('b', &[&nats_ip, &a_ip], false);
    wait_until_spread(&mut via_b, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, r) in requests.iter().chain(&during).enumerate() {
        let t = if i % 2 == 0 { &mut via_b } else { &mut via_a };
        let (answer, _) = screen_until_answered(t, r, Duration::from_secs(60)).await;
        assert_eq!(gist(&answer), first[&r.request_id], "{} after the heal", r.request_id);
    }
}

/// The effective user id (root may make namespaces).
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u32::MAX)
}
