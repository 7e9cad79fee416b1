//! Fuzzes `herald_server::fuzzing::channel_name`: it must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_server::fuzzing::channel_name(data));
