//! Fuzzes `herald_server::fuzzing::pusher_frame`: it must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_server::fuzzing::pusher_frame(data));
