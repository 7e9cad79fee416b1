//! Subject names. Channel names may hold anything a subject token may not
//! (`.`, `*`, `>`, spaces), so each channel becomes one token by escaping:
//! ASCII letters, digits and `-_:#,=@!~+` stay, every other byte becomes
//! `%XX`. The escape is one-to-one, so two channels never share a subject
//! and no channel is refused.

use herald_engine::{ChannelName, ClientInfo};

/// Bytes that stay as they are in a channel's token.
fn kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_:#,=@!~+".contains(&byte)
}

/// `text` as one subject token: kept bytes as they are, every other
/// byte `%XX`; the empty text is `%` (which no escape produces).
pub(crate) fn token(text: &str) -> String {
    if text.is_empty() {
        return "%".to_owned();
    }
    let mut token = String::with_capacity(text.len());
    for byte in text.bytes() {
        if kept(byte) {
            token.push(char::from(byte));
        } else {
            token.push('%');
            for digit in [byte >> 4, byte & 0x0f] {
                token.extend(char::from_digit(u32::from(digit), 16).map(|c| c.to_ascii_uppercase()));
            }
        }
    }
    token
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
        format!("{}.ch.{}", self.prefix, token(channel.as_str()))
    }

    /// Every channel's subject (the other end of a stream's republish).
    pub(crate) fn channels_mapped(&self) -> String {
        format!("{}.ch.{{{{wildcard(1)}}}}", self.prefix)
    }

    /// `channel`'s history in the history set `set`.
    pub(crate) fn history(&self, set: &str, channel: &ChannelName) -> String {
        format!("{}.h.{set}.{}", self.prefix, token(channel.as_str()))
    }

    /// Every channel's history in the set `set`.
    pub(crate) fn history_set(&self, set: &str) -> String {
        format!("{}.h.{set}.*", self.prefix)
    }

    /// Where a publication with an idempotency key and no history goes.
    pub(crate) fn once(&self, channel: &ChannelName) -> String {
        format!("{}.once.{}", self.prefix, token(channel.as_str()))
    }

    /// Every channel's subject for publications with a key and no history.
    pub(crate) fn once_all(&self) -> String {
        format!("{}.once.*", self.prefix)
    }

    /// The presence record of `info`'s user in `channel`: one per user,
    /// but one per connection for the anonymous user, whose connections
    /// are many people (`%%` and the client's token: a user's token never
    /// holds `%%`, as every `%` of an escape is followed by two digits).
    pub(crate) fn presence(&self, channel: &ChannelName, info: &ClientInfo) -> String {
        match info.user.is_anonymous() {
            true => format!("{}.pr.{}.%%{}", self.prefix, token(channel.as_str()), token(info.client.as_str())),
            false => format!("{}.pr.{}.{}", self.prefix, token(channel.as_str()), token(info.user.as_str())),
        }
    }

    /// Every user's presence record in `channel`.
    pub(crate) fn presence_in(&self, channel: &ChannelName) -> String {
        format!("{}.pr.{}.*", self.prefix, token(channel.as_str()))
    }

    /// Every presence record.
    pub(crate) fn presence_all(&self) -> String {
        format!("{}.pr.*.*", self.prefix)
    }

    /// The occupancy record of `channel`.
    pub(crate) fn occupancy(&self, channel: &ChannelName) -> String {
        format!("{}.oc.{}", self.prefix, token(channel.as_str()))
    }

    /// Every occupancy record.
    pub(crate) fn occupancy_all(&self) -> String {
        format!("{}.oc.*", self.prefix)
    }

    /// The subject prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
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
        assert_eq!(token(""), "%", "an empty user id is a token too");
    }

    #[test]
    fn each_anonymous_connection_has_a_presence_record_of_its_own() {
        let subjects = Subjects::new("herald");
        let lobby = ChannelName::new("lobby").unwrap();
        let record = |user: &str, client: &str| {
            let info = ClientInfo {
                user: herald_engine::UserId::new(user).unwrap(),
                client: herald_engine::ClientId::new(client),
                conn_info: None,
                chan_info: None,
            };
            subjects.presence(&lobby, &info)
        };
        assert_eq!(record("ann", "c1"), record("ann", "c2"), "a user's connections share a record");
        assert_eq!(record("", "c1"), "herald.pr.lobby.%%c1");
        assert_ne!(record("", "c1"), record("", "c2"), "anonymous connections do not");
        for user in ["%", "%%c1", "%25%25c1"] {
            assert_ne!(record(user, "c9"), record("", "c1"), "no user's record is an anonymous connection's");
        }
        for name in ["a.b", "a b", "ü", "x>y", "$sys"] {
            let token = subject(name).trim_start_matches("herald.ch.").to_owned();
            assert!(
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic() && !b".*>".contains(&b)),
                "{token}"
            );
        }
    }
}
