//! The `cachet` binary: parse, run, exit. Everything else is in the library.

fn main() -> std::process::ExitCode {
    cachet::main(std::env::args_os())
}
