#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| falsifier_fuzz::trace_aprt(data));
