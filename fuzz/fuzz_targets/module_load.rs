#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cachet_fuzz_targets::module_load(data));
