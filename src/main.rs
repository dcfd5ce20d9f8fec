//! The `baton` binary: `baton serve`, and client subcommands. See `baton --help`.

/// mimalloc instead of the system allocator: the load benchmark measured
/// CPU per turn halved and closed-loop throughput doubled (the profile was
/// a third malloc/free; see docs/performance.md). Embedders choose their own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    baton_cli::main()
}
