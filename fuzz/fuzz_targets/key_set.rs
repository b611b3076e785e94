#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keygate_fuzz::key_set(data));
