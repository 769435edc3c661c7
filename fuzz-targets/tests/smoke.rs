//! A short fuzz run in every test run: each target on a few thousand
//! deterministic mutations of its seeds (the longer cargo-fuzz runs and their
//! results are in docs/BENCHMARKS.md).

#[test]
fn input_log_survives_mutations() {
    cachet_fuzz_targets::smoke("input_log", 50_000);
}

#[test]
fn module_load_survives_mutations() {
    cachet_fuzz_targets::smoke("module_load", 3_000);
}

#[test]
fn cache_entry_survives_mutations() {
    cachet_fuzz_targets::smoke("cache_entry", 5_000);
}

#[test]
fn stat_memo_survives_mutations() {
    cachet_fuzz_targets::smoke("stat_memo", 3_000);
}
