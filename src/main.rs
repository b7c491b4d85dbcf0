use clap::Parser;
use transfer_guard::cli::{run, Cli};

/// Fewer instructions per allocation than glibc's, and no lock when a record
/// made on a worker is freed on the audit writer (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Transparent huge pages off for this process. mimalloc asks for them on its
/// arenas, and the first touch of each one zeroes 2 MiB inside whichever
/// request touched it: on a server pinned to one core that tripled the p99
/// (docs/performance.md, "Tail latency on one core"). Pages of 4 KiB fault
/// more often, each too briefly to show. Applies to the whole process, on any
/// THP setting of the kernel (`always` or `madvise`).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag of this process's
    // memory map; it reads and writes no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
