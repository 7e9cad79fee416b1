//! The `herald` command. Everything lives in the library; see `cli`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    herald_server::cli::main()
}
