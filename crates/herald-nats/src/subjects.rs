//! Subject names. Channel names may hold anything a subject token may not
//! (`.`, `*`, `>`, spaces), so each channel becomes one token by escaping:
//! ASCII letters, digits and `-_:#,=@!~+` stay, every other byte becomes
//! `%XX`. The escape is one-to-one, so two channels never share a subject
//! and no channel is refused.

use herald_engine::ChannelName;

/// Bytes that stay as they are in a channel's token.
fn kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_:#,=@!~+".contains(&byte)
}

/// The subjects of one Herald cluster, under its prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (one or more tokens, e.g. `herald`).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// Where `channel`'s publications, joins and leaves travel.
    pub fn channel(&self, channel: &ChannelName) -> String {
        let mut subject = format!("{}.ch.", self.prefix);
        for byte in channel.as_str().bytes() {
            if kept(byte) {
                subject.push(char::from(byte));
            } else {
                subject.push_str(&format!("%{byte:02X}"));
            }
        }
        subject
    }

    /// Where control commands travel.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(name: &str) -> String {
        Subjects::new("herald").channel(&ChannelName::new(name).unwrap())
    }

    #[test]
    fn channel_names_become_one_valid_token_each_and_never_collide() {
        assert_eq!(subject("chat:lobby"), "herald.ch.chat:lobby");
        assert_eq!(subject("a.b"), "herald.ch.a%2Eb");
        assert_eq!(subject("a%2Eb"), "herald.ch.a%252Eb", "an escaped-looking name is escaped again");
        assert_eq!(subject("news*>"), "herald.ch.news%2A%3E");
        assert_eq!(subject("dialog#42,43"), "herald.ch.dialog#42,43");
        for name in ["a.b", "a b", "ü", "x>y", "$sys"] {
            let token = subject(name).trim_start_matches("herald.ch.").to_owned();
            assert!(
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && !b".*>".contains(&b)),
                "{token}"
            );
        }
    }
}
