//! Fuzzes `herald_server::fuzzing::protobuf_frame`: it must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_server::fuzzing::protobuf_frame(data));
