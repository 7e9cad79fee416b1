//! Key and pub/sub channel names.
//!
//! Every key of one channel shares the hash tag `{<channel>}`, so a script
//! over them runs on a single Redis Cluster slot. The part of the name
//! inside the braces is the channel name itself, so two channels never
//! share keys.

use herald_engine::ChannelName;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn channel_key(&self, channel: &ChannelName, suffix: &str) -> String {
        format!("{}:{{{}}}:{suffix}", self.prefix, channel.as_str())
    }

    /// The stream position: epoch and top offset.
    pub fn meta(&self, channel: &ChannelName) -> String {
        self.channel_key(channel, "meta")
    }

    pub fn history(&self, channel: &ChannelName) -> String {
        self.channel_key(channel, "history")
    }

    pub fn idempotency(&self, channel: &ChannelName, key: &str) -> String {
        self.channel_key(channel, &format!("idempotency:{key}"))
    }

    /// The presence hash and its expiry sorted set.
    pub fn presence(&self, channel: &ChannelName) -> (String, String) {
        (self.channel_key(channel, "presence"), self.channel_key(channel, "presence:expiry"))
    }

    /// How many presence entries each user has in a channel.
    pub fn presence_users(&self, channel: &ChannelName) -> String {
        self.channel_key(channel, "presence:users")
    }

    /// The nodes serving a channel (hash: node -> subscribers) and their
    /// expiry sorted set.
    pub fn occupancy(&self, channel: &ChannelName) -> (String, String) {
        (self.channel_key(channel, "occupancy"), self.channel_key(channel, "occupancy:expiry"))
    }

    /// The index of occupied channels: a sorted set of channel names
    /// scored by expiry.
    pub fn occupied(&self) -> String {
        format!("{}:{{occupied}}:index", self.prefix)
    }

    /// The pub/sub channel of a channel.
    pub fn pubsub(&self, channel: &ChannelName) -> String {
        self.channel_key(channel, "pub")
    }

    /// The channel a pub/sub channel name stands for.
    pub fn channel_of(&self, pubsub: &[u8]) -> Option<ChannelName> {
        let name = std::str::from_utf8(pubsub).ok()?;
        let inner = name.strip_prefix(&self.prefix)?.strip_prefix(":{")?.strip_suffix("}:pub")?;
        ChannelName::new(inner).ok()
    }

    /// The node registry hash and its expiry sorted set.
    pub fn nodes(&self) -> (String, String) {
        (format!("{}:{{nodes}}:info", self.prefix), format!("{}:{{nodes}}:expiry", self.prefix))
    }

    /// The pub/sub channel of control commands.
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_names_map_back_to_their_channel() {
        let keys = Keys::new("herald");
        for name in ["news", "chat:lobby", "odd}:pub{name", "dialog#1,2"] {
            let channel = ChannelName::new(name).unwrap();
            assert_eq!(keys.channel_of(keys.pubsub(&channel).as_bytes()), Some(channel));
        }
        assert_eq!(keys.channel_of(b"other:{news}:pub"), None);
        assert_eq!(keys.channel_of(b"herald:control"), None);
    }
}
