//! The `driftless` command line, built inside the test package (see Cargo.toml).

fn main() -> std::process::ExitCode {
    driftless::main()
}
