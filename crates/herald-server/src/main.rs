//! The `herald` command. Everything lives in the library; see `cli`.

#![forbid(unsafe_code)]

/// With the `mimalloc` feature: see the feature's note in Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    herald_server::cli::main()
}
