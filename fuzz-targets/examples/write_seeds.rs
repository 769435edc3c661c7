//! Writes a target's seeds into a corpus directory, for `scripts/fuzz`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (target, dir) = (&args[1], std::path::Path::new(&args[2]));
    for (i, seed) in cachet_fuzz_targets::seeds(target).iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
    }
}
