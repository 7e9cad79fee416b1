//! The Protobuf wire types (`src/centrifuge/protobuf/wire.rs`) are what
//! prost-build generates from `proto/centrifuge.proto`: a change to one
//! without the other fails here. `REGENERATE=1` writes the file anew.
//! Needs `protoc` (Debian's `protobuf-compiler`); `.ci/run` installs it.

use std::path::{Path, PathBuf};

fn protoc_present() -> bool {
    std::process::Command::new(std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into()))
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn the_committed_wire_types_are_what_the_schema_generates() {
    if !protoc_present() {
        assert!(
            std::env::var("CI").is_err(),
            "protoc is missing: install Debian's protobuf-compiler (apt-get install protobuf-compiler)"
        );
        eprintln!("skipped: protoc is missing (apt-get install protobuf-compiler); CI runs this");
        return;
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out: PathBuf = std::env::temp_dir().join(format!("herald-protobuf-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut config = prost_build::Config::new();
    config
        .out_dir(&out)
        .bytes(["."])
        .btree_map(["."])
        .type_attribute(".", "#[derive(serde::Deserialize)]\n#[serde(default)]")
        .field_attribute("data", "#[serde(deserialize_with = \"crate::centrifuge::protobuf::json_bytes\")]")
        .field_attribute("conn_info", "#[serde(deserialize_with = \"crate::centrifuge::protobuf::json_bytes\")]")
        .field_attribute("chan_info", "#[serde(deserialize_with = \"crate::centrifuge::protobuf::json_bytes\")]");
    config
        .compile_protos(&[crate_dir.join("proto/centrifuge.proto")], &[crate_dir.join("proto")])
        .expect("the schema compiles");
    let generated = std::fs::read_to_string(out.join("centrifuge.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let committed_path = crate_dir.join("src/centrifuge/protobuf/wire.rs");
    if std::env::var("REGENERATE").is_ok() {
        std::fs::write(&committed_path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "src/centrifuge/protobuf/wire.rs is not what proto/centrifuge.proto generates: \
         run REGENERATE=1 cargo test -p herald-server --test server protobuf_schema"
    );
}
