//! The `baton` binary: `baton serve`, and client subcommands. See `baton --help`.

fn main() -> std::process::ExitCode {
    baton_cli::main()
}
