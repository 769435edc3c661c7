//! `wat2wasm IN.wat OUT.wasm`: the benchmarks' hand-written modules, built
//! with the same `wat` crate the tests use.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm");
        return std::process::ExitCode::from(2);
    };
    match wat::parse_file(input).map(|bytes| std::fs::write(output, bytes)) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("wat2wasm: cannot write {output}: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wat2wasm: {input}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
