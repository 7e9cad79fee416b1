//! Entry points for the fuzz targets in `fuzz/` and for the replay of their
//! corpora in `tests/fuzz_corpus.rs`: each feeds arbitrary bytes to one
//! parser of network or operator input. None may panic, whatever it gets.
//! (Compiled with the `fuzzing` feature only.)

use herald_engine::ChannelName;

/// A Centrifuge frame: its lines, each decoded as a command.
pub fn centrifuge_frame(data: &[u8]) {
    let mut rest = bytes::Bytes::copy_from_slice(data);
    while let Some(line) = crate::centrifuge::command::next_line(&mut rest) {
        let _ = crate::centrifuge::command::Command::decode(&line);
    }
}

/// A Centrifuge Protobuf frame: its length-delimited commands, each
/// decoded into the session's command; and the same bytes as a JSON reply
/// to put in Protobuf.
pub fn protobuf_frame(data: &[u8]) {
    let mut rest = bytes::Bytes::copy_from_slice(data);
    while let Some(Ok(_)) = crate::centrifuge::protobuf::next_command(&mut rest) {}
    let _ = crate::centrifuge::protobuf::transcode(data);
}

/// A Pusher client frame, and the data of every event it may be.
pub fn pusher_frame(data: &[u8]) {
    crate::pusher::session::read_frame(data);
}

/// A server API call: `<method>\n<body>`.
pub fn api_call(data: &[u8]) {
    let (method, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (data.get(..at).unwrap_or_default(), data.get(at.saturating_add(1)..).unwrap_or_default()),
        None => (data, &[][..]),
    };
    let _ = crate::api::ApiCommand::parse(&String::from_utf8_lossy(method), body);
}

/// A connection token, verified with a fixed HMAC key as a node would.
pub fn token(data: &[u8]) {
    let client = crate::config::ClientConfig {
        token_hmac_secret: Some(crate::config::Secret::new("fuzzing-secret")),
        ..Default::default()
    };
    let Ok(verifier) = crate::auth::TokenVerifier::from_config(&client) else { return };
    let token = String::from_utf8_lossy(data);
    let _ = verifier.connection(&token);
    let _ = verifier.subscription(&token);
}

/// A config file's text, parsed and typed (not validated: validation reads
/// key files).
pub fn config_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::type_toml(text);
    }
}

/// A channel name and what the hub reads from one.
pub fn channel_name(data: &[u8]) {
    let Ok(channel) = ChannelName::new(&String::from_utf8_lossy(data)) else { return };
    let _ = herald_core::ChannelRules::namespace_of(&channel);
    let _ = herald_core::ChannelRules::local_name(&channel);
    let _ = herald_core::ChannelRules::user_admitted(&channel, &herald_engine::UserId::anonymous());
    let _ = herald_core::hub::glob_match(channel.as_str(), "chat:lobby");
}
