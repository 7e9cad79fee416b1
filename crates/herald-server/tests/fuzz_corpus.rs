//! Replays every fuzz target's seeds and regression cases (`fuzz/seeds`,
//! `fuzz/regressions`) through the same entry points the fuzzers call, on
//! the stable toolchain: an input that once made a parser panic stays a
//! test. The long fuzzing runs themselves are by hand (see SECURITY.md).

use std::path::{Path, PathBuf};

use herald_server::fuzzing;

/// The fuzz folder of the repository.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Feeds every file of a target's corpus and regressions to `parse`, and
/// returns how many it fed.
fn replay(target: &str, parse: impl Fn(&[u8])) -> usize {
    let mut fed = 0;
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.file_name().is_some_and(|name| name == ".keep") {
                continue;
            }
            let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parse(&input);
            fed += 1;
        }
    }
    fed
}

macro_rules! replays {
    ($($target:ident => $parse:expr),* $(,)?) => {$(
        #[test]
        fn $target() {
            let fed = replay(stringify!($target), $parse);
            assert!(fed > 0, "the {} corpus has inputs", stringify!($target));
        }
    )*};
}

replays! {
    centrifuge_frame => fuzzing::centrifuge_frame,
    protobuf_frame => fuzzing::protobuf_frame,
    pusher_frame => fuzzing::pusher_frame,
    api_call => fuzzing::api_call,
    token => fuzzing::token,
    config_toml => fuzzing::config_toml,
    channel_name => fuzzing::channel_name,
    redis_wire => |data: &[u8]| {
        let _ = herald_redis::wire::decode(bytes::Bytes::copy_from_slice(data));
        let _ = herald_redis::Keys::new("herald").channel_of(data);
    },
}
