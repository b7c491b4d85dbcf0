use clap::Parser;
use transfer_guard::cli::{run, Cli};

/// Fewer instructions per allocation than glibc's, and no lock when a record
/// made on a worker is freed on the audit writer (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
