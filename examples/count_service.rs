//! Screens through the whole service in-process — a tonic client, the
//! loopback socket, the server's gate, admission, validation, the service,
//! the answer — for counting instructions (`valgrind --tool=callgrind`),
//! which a busy machine does not disturb; and the same through the no-op
//! tonic server of the same request and response shapes.
//!
//! ```sh
//! cargo build --release --example count_service
//! for what in service noop; do for n in 200 400; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$what.$n \
//!       target/release/examples/count_service $what $n 2>&1 | grep 'refs'
//! done; done
//! ```
//!
//! One screen is (total at 400 − total at 200) / 200: start-up, the ruleset's
//! compilation and the first requests' warm-up cancel out. One runtime thread,
//! so the count does not depend on scheduling. In-memory service
//! (`--durability none`), open trust, fresh customers (a new one per request).

use std::sync::Arc;
use transfer_guard::api::proto as pb;
use transfer_guard::app::Setup;
use transfer_guard::loadgen;
use transfer_guard::store::Durability;

/// The binary's allocator (src/main.rs), so the count is the shipped service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "service".into());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let data = tempfile::tempdir().expect("a temp dir");
        let (addr, stop) = match what.as_str() {
            "noop" => loadgen::start_noop().await.expect("the no-op server"),
            _ => {
                let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
                let setup = Setup::new(&rules, data.path(), Durability::None);
                let guard: Arc<_> = transfer_guard::app::build(&setup).expect("the service").guard;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
                let addr = format!("http://{}", listener.local_addr().expect("an address"));
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(transfer_guard::server::run(listener, guard, async {
                    let _ = stopped.await;
                }));
                (addr, stop)
            }
        };
        let channel = tonic::transport::Channel::from_shared(addr).expect("a URI").connect().await.expect("connect");
        let mut client = pb::screening_client::ScreeningClient::new(channel);
        for k in 0..n {
            let answer = client.screen(loadgen::request("count", k)).await.expect("an answer");
            std::hint::black_box(answer);
        }
        let _ = stop.send(());
    });
}
