//! Lays out the hostile suite (issue 7) in a directory, for
//! `scripts/bench-hostile`: `cargo run -p cachet-testkit --example
//! hostile_tree -- DIR [COPIES_OF_THE_OUTPUT_FLOOD]`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = std::path::Path::new(&args[1]);
    match args.get(2) {
        None => {
            cachet_testkit::hostile_tree(root);
        }
        Some(n) => {
            let flood = &cachet_testkit::fixture("limit_output_flood").wasm;
            for i in 0..n.parse::<usize>().expect("a count") {
                let dir = root.join(format!("flood{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(flood, dir.join("flood.wasm")).unwrap();
            }
        }
    }
}
