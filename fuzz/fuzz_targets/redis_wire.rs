//! Fuzzes the Redis wire format (pub/sub messages and history entries) and
//! the mapping of pub/sub names back to channels: neither may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = herald_redis::wire::decode(bytes::Bytes::copy_from_slice(data));
    let _ = herald_redis::Keys::new("herald").channel_of(data);
});
