//! Channel namespaces and the permission rules they carry.
//!
//! A channel `chat:lobby` belongs to namespace `chat`; a channel without `:`
//! belongs to the default namespace. Each namespace has one
//! [`NamespaceOptions`]; a channel whose namespace is not configured is
//! unknown (error 102 in the Centrifuge protocol). In a user-limited
//! namespace, `dialog#42,43` is open only to users 42 and 43.
//!
//! With Pusher's channel conventions on (when Pusher apps are served), the
//! name after the namespace also says what kind of channel it is, whichever
//! protocol its subscribers speak: `presence-…` channels keep presence and
//! push joins and leaves to every subscriber, and `cache-…` channels (also
//! `private-cache-…`, `private-encrypted-cache-…`, `presence-cache-…`) keep
//! their last publication.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use herald_engine::{ChannelName, HistoryOptions, UserId};

use crate::error::HubError;

/// Separates the namespace from the rest of a channel name.
pub const NAMESPACE_SEPARATOR: char = ':';
/// Starts the list of users allowed in a user-limited channel.
pub const USER_LIMIT_SEPARATOR: char = '#';
/// Separates users in that list.
pub const USER_LIST_SEPARATOR: char = ',';

/// Who may subscribe to a channel without a subscription token. A valid
/// subscription token for the channel always grants the subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscribePolicy {
    /// Only with a subscription token (private channels).
    Token,
    /// Any connection authenticated with a connection token.
    #[default]
    Authenticated,
    /// Any connection, anonymous ones included.
    Anyone,
}

/// Who may publish into a channel from a client connection. The server API
/// may always publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishPolicy {
    /// Nobody: only the server API publishes.
    #[default]
    Api,
    /// Connections subscribed to the channel.
    Subscribers,
    /// Any connection, subscribed or not.
    Clients,
}

/// The options of one namespace. Every field has a default, so an empty
/// table is a valid namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOptions {
    /// Who may subscribe without a subscription token: `token` (private
    /// channels), `authenticated` (any connection with a connection token) or
    /// `anyone` (anonymous connections too).
    pub subscribe: SubscribePolicy,
    /// Who may publish from a client: `api` (nobody; server API only),
    /// `subscribers` (connections subscribed to the channel) or `clients`
    /// (any connection).
    pub publish: PublishPolicy,
    /// When true, a channel such as `dialog#42,43` admits only the users
    /// listed after `#` (unless a subscription token grants it).
    pub user_limited: bool,
    /// How many channels of this namespace one connection may hold; 0 means
    /// only the connection-wide limit applies.
    pub max_channels_per_connection: usize,
    /// The largest publication payload accepted, from clients and the API,
    /// in bytes.
    pub max_message_size: usize,
    /// How long a publication may wait in a subscriber's outbox so that the
    /// ones after it leave in the same write; 0 writes each at once. At high
    /// rates a few milliseconds save most writes, at that cost in latency.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
    /// Publications kept per channel for recovery and the history command;
    /// 0 turns history (and positions) off.
    pub history_size: usize,
    /// How long publications are kept after a channel's last publication.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// How long a channel's stream position (offset and epoch) is kept
    /// after its last publication; after that its epoch changes.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Send stream positions to every subscriber, even if not asked.
    pub force_positioning: bool,
    /// Make every subscription recoverable, even if the client did not ask.
    pub force_recovery: bool,
    /// The most publications one recovery replays; a client that missed
    /// more is told `recovered: false`.
    pub recovery_max_publications: usize,
    /// Keep presence (who is subscribed) for channels of this namespace.
    pub presence: bool,
    /// Send join and leave events to subscribers that ask for them.
    pub join_leave: bool,
    /// Send join and leave events to every subscriber.
    pub force_push_join_leave: bool,
    /// Subscribers may call the `history` command.
    pub allow_history_for_subscriber: bool,
    /// Subscribers may call the `presence` and `presence_stats` commands.
    pub allow_presence_for_subscriber: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        Self {
            subscribe: SubscribePolicy::default(),
            publish: PublishPolicy::default(),
            user_limited: true,
            max_channels_per_connection: 0,
            max_message_size: 64 * 1024,
            write_delay: Duration::ZERO,
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            history_meta_ttl: Duration::from_secs(24 * 3600),
            force_positioning: false,
            force_recovery: false,
            recovery_max_publications: 300,
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            allow_history_for_subscriber: false,
            allow_presence_for_subscriber: false,
        }
    }
}

impl NamespaceOptions {
    /// How the engine keeps this namespace's history, if it keeps any.
    pub fn history(&self) -> Option<HistoryOptions> {
        (self.history_size > 0).then_some(HistoryOptions {
            size: self.history_size,
            ttl: self.history_ttl,
            meta_ttl: self.history_meta_ttl,
        })
    }
}

/// How long a cache channel keeps its last publication when its namespace
/// keeps no history of its own (Pusher keeps it for 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// What a channel's name says about it under Pusher's conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Plain = 0,
    Presence = 1,
    Cache = 2,
    PresenceCache = 3,
}

impl ChannelKind {
    /// The kind of a channel from its name without the namespace.
    pub fn of(local_name: &str) -> Self {
        let presence = local_name.starts_with("presence-");
        let cache = ["cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-"]
            .iter()
            .any(|prefix| local_name.starts_with(prefix));
        match (presence, cache) {
            (false, false) => Self::Plain,
            (true, false) => Self::Presence,
            (false, true) => Self::Cache,
            (true, true) => Self::PresenceCache,
        }
    }

    pub fn is_presence(self) -> bool {
        matches!(self, Self::Presence | Self::PresenceCache)
    }

    pub fn is_cache(self) -> bool {
        matches!(self, Self::Cache | Self::PresenceCache)
    }
}

/// One namespace's options for each kind of channel.
#[derive(Clone, Debug, Default)]
struct Variants([NamespaceOptions; 4]);

impl Variants {
    fn uniform(options: NamespaceOptions) -> Self {
        Self([options.clone(), options.clone(), options.clone(), options])
    }

    fn with_conventions(options: NamespaceOptions) -> Self {
        let presence =
            NamespaceOptions { presence: true, join_leave: true, force_push_join_leave: true, ..options.clone() };
        let cached = |o: &NamespaceOptions| match o.history_size {
            0 => NamespaceOptions { history_size: 1, history_ttl: CACHE_TTL, ..o.clone() },
            _ => o.clone(),
        };
        Self([options.clone(), presence.clone(), cached(&options), cached(&presence)])
    }
}

/// Every namespace's options, resolved by channel name.
#[derive(Clone, Debug, Default)]
pub struct ChannelRules {
    default: Variants,
    namespaces: BTreeMap<String, Variants>,
    conventions: bool,
}

impl ChannelRules {
    pub fn new(default: NamespaceOptions, namespaces: BTreeMap<String, NamespaceOptions>) -> Self {
        Self {
            default: Variants::uniform(default),
            namespaces: namespaces.into_iter().map(|(name, o)| (name, Variants::uniform(o))).collect(),
            conventions: false,
        }
    }

    /// The same rules with Pusher's channel-name conventions applied.
    pub fn with_pusher_conventions(self) -> Self {
        let convert = |v: Variants| Variants::with_conventions(v.0[0].clone());
        Self {
            default: convert(self.default),
            namespaces: self.namespaces.into_iter().map(|(name, v)| (name, convert(v))).collect(),
            conventions: true,
        }
    }

    /// The kind of `channel` (always plain without the conventions).
    pub fn kind_of(&self, channel: &ChannelName) -> ChannelKind {
        match self.conventions {
            true => ChannelKind::of(Self::local_name(channel)),
            false => ChannelKind::Plain,
        }
    }

    /// A channel's name without its namespace.
    pub fn local_name(channel: &ChannelName) -> &str {
        channel.as_str().split_once(NAMESPACE_SEPARATOR).map_or(channel.as_str(), |(_, local)| local)
    }

    /// The namespace part of a channel name, if it has one.
    pub fn namespace_of(channel: &ChannelName) -> Option<&str> {
        channel.as_str().split_once(NAMESPACE_SEPARATOR).map(|(ns, _)| ns)
    }

    /// The options that govern `channel`, or `UnknownChannel`.
    pub fn resolve(&self, channel: &ChannelName) -> Result<&NamespaceOptions, HubError> {
        let variants = match Self::namespace_of(channel) {
            None => &self.default,
            Some(ns) => self.namespaces.get(ns).ok_or(HubError::UnknownChannel)?,
        };
        Ok(&variants.0[self.kind_of(channel) as usize])
    }

    /// Whether `user` is admitted by the user list of a user-limited channel.
    /// Channels without a user list admit everyone.
    pub fn user_admitted(channel: &ChannelName, user: &UserId) -> bool {
        match channel.as_str().rsplit_once(USER_LIMIT_SEPARATOR) {
            None => true,
            Some((_, users)) => {
                !user.is_anonymous() && users.split(USER_LIST_SEPARATOR).any(|allowed| allowed == user.as_str())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    #[test]
    fn channels_resolve_to_their_namespace() {
        let mut namespaces = BTreeMap::new();
        let chat = NamespaceOptions { publish: PublishPolicy::Clients, ..Default::default() };
        namespaces.insert("chat".to_string(), chat.clone());
        let rules = ChannelRules::new(NamespaceOptions::default(), namespaces);

        assert_eq!(rules.resolve(&ch("news")), Ok(&NamespaceOptions::default()));
        assert_eq!(rules.resolve(&ch("chat:lobby")), Ok(&chat));
        assert_eq!(rules.resolve(&ch("chat:a:b")), Ok(&chat));
        assert_eq!(rules.resolve(&ch("games:1")), Err(HubError::UnknownChannel));
    }

    #[test]
    fn pusher_conventions_give_presence_and_cache_channels_their_options() {
        let mut namespaces = BTreeMap::new();
        namespaces.insert("shop".to_string(), NamespaceOptions { history_size: 10, ..Default::default() });
        let plain = ChannelRules::new(NamespaceOptions::default(), namespaces.clone());
        assert!(!plain.resolve(&ch("presence-room")).unwrap().presence, "no conventions without Pusher");

        let rules = plain.with_pusher_conventions();
        let news = rules.resolve(&ch("news")).unwrap();
        assert_eq!(news, &NamespaceOptions::default());
        let room = rules.resolve(&ch("presence-room")).unwrap();
        assert!(room.presence && room.join_leave && room.force_push_join_leave);
        assert_eq!(room.history_size, 0);
        for cached in ["cache-quote", "private-cache-q", "private-encrypted-cache-q", "presence-cache-q"] {
            let options = rules.resolve(&ch(cached)).unwrap();
            assert_eq!((options.history_size, options.history_ttl), (1, CACHE_TTL), "{cached}");
        }
        assert!(rules.resolve(&ch("presence-cache-q")).unwrap().presence);
        assert_eq!(rules.resolve(&ch("shop:cache-q")).unwrap().history_size, 10, "a namespace's own history stays");
        assert!(rules.resolve(&ch("shop:presence-x")).unwrap().presence, "the kind is read after the namespace");
        assert_eq!(rules.resolve(&ch("nope:presence-x")), Err(HubError::UnknownChannel));
    }

    #[test]
    fn user_limited_channels_admit_only_listed_users() {
        let cases = [
            ("dialog#42,43", "42", true),
            ("dialog#42,43", "43", true),
            ("dialog#42,43", "4", false),
            ("dialog#42,43", "", false),
            ("dialog#", "", false),
            ("news", "7", true),
            ("news", "", true),
        ];
        for (channel, who, admitted) in cases {
            assert_eq!(ChannelRules::user_admitted(&ch(channel), &user(who)), admitted, "{who:?} in {channel:?}");
        }
    }
}
