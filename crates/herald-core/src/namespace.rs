//! Channel namespaces and the permission rules they carry.
//!
//! A channel `chat:lobby` belongs to namespace `chat`; a channel without `:`
//! belongs to the default namespace. Each namespace has one
//! [`NamespaceOptions`]; a channel whose namespace is not configured is
//! unknown (error 102 in the Centrifuge protocol). In a user-limited
//! namespace, `dialog#42,43` is open only to users 42 and 43.
//!
//! A protocol may read more into a channel's name than its namespace: with
//! [`ChannelConventions`] installed, the name after the namespace can make a
//! channel a kind of its own, with options of its own, whichever protocol
//! its subscribers speak. The hub knows no such convention itself; the
//! front-end that brings one installs it.

use std::collections::BTreeMap;
use std::sync::Arc;
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
/// Starts the name of a private channel (`$news`, `$chat:room`), as in
/// Centrifugo: a client subscribes to one only with a subscription token
/// (or the server subscribes it), whatever its namespace's `subscribe`.
pub const PRIVATE_PREFIX: char = '$';

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
    /// Commands per second one connection may send about this namespace's
    /// channels (subscribe, publish, history, presence), beside
    /// `client.command_rate`; 0 for no limit of its own.
    pub command_rate: u32,
    /// Such commands one connection may send at once after a pause.
    pub command_burst: u32,
    /// The proxy (the server's `[proxies.<name>]`) that decides, instead of
    /// `subscribe`, on subscriptions made without a token.
    pub subscribe_proxy: Option<String>,
    /// The proxy that decides, instead of `publish`, on client publications,
    /// and may replace their data.
    pub publish_proxy: Option<String>,
    /// The proxy asked to extend subscriptions the subscribe proxy made
    /// expiring.
    pub sub_refresh_proxy: Option<String>,
    /// The delta compressions a subscriber may ask for (`["fossil"]`): it
    /// then gets, after the first publication, the difference from the
    /// previous one it received.
    pub allowed_delta_types: Vec<DeltaType>,
}

/// A delta compression of publications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaType {
    /// Fossil deltas (see `crate::fossil`).
    Fossil,
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
            command_rate: 0,
            command_burst: 0,
            subscribe_proxy: None,
            publish_proxy: None,
            sub_refresh_proxy: None,
            allowed_delta_types: Vec::new(),
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

/// A protocol's reading of channel names: some names make a channel a
/// special kind, whose options differ from its namespace's.
pub trait ChannelConventions: Send + Sync + std::fmt::Debug + 'static {
    /// The options of each special kind of channel, in a namespace whose
    /// own options are `options`. A channel of no special kind keeps those.
    fn kinds(&self, options: &NamespaceOptions) -> Vec<NamespaceOptions>;

    /// Which special kind (an index into [`ChannelConventions::kinds`]) the
    /// channel is, given its name without the namespace; `None` for none.
    fn kind_of(&self, local_name: &str) -> Option<usize>;
}

/// One namespace's options, and those of each special kind of channel.
#[derive(Clone, Debug, Default)]
struct Namespace {
    options: NamespaceOptions,
    kinds: Vec<NamespaceOptions>,
}

impl Namespace {
    fn new(options: NamespaceOptions, conventions: Option<&dyn ChannelConventions>) -> Self {
        let kinds = conventions.map(|c| c.kinds(&options)).unwrap_or_default();
        Self { options, kinds }
    }
}

/// Every namespace's options, resolved by channel name.
#[derive(Clone, Debug, Default)]
pub struct ChannelRules {
    default: Namespace,
    namespaces: BTreeMap<String, Namespace>,
    conventions: Option<Arc<dyn ChannelConventions>>,
}

impl ChannelRules {
    /// Rules from the options of channels without a namespace and of each
    /// namespace.
    pub fn new(default: NamespaceOptions, namespaces: BTreeMap<String, NamespaceOptions>) -> Self {
        Self {
            default: Namespace::new(default, None),
            namespaces: namespaces.into_iter().map(|(name, o)| (name, Namespace::new(o, None))).collect(),
            conventions: None,
        }
    }

    /// The same rules with a protocol's channel-name conventions applied.
    pub fn with_conventions(self, conventions: Arc<dyn ChannelConventions>) -> Self {
        let apply = |ns: Namespace| Namespace::new(ns.options, Some(&*conventions));
        Self {
            default: apply(self.default),
            namespaces: self.namespaces.into_iter().map(|(name, ns)| (name, apply(ns))).collect(),
            conventions: Some(conventions),
        }
    }

    /// A channel's name without its namespace.
    pub fn local_name(channel: &ChannelName) -> &str {
        channel.as_str().split_once(NAMESPACE_SEPARATOR).map_or(channel.as_str(), |(_, local)| local)
    }

    /// The namespace part of a channel name, if it has one (after the
    /// private prefix: `$chat:room` is in `chat`).
    pub fn namespace_of(channel: &ChannelName) -> Option<&str> {
        let name = channel.as_str();
        name.strip_prefix(PRIVATE_PREFIX).unwrap_or(name).split_once(NAMESPACE_SEPARATOR).map(|(ns, _)| ns)
    }

    /// Whether `channel` is private: subscribed to only with a token.
    pub fn is_private(channel: &ChannelName) -> bool {
        channel.as_str().starts_with(PRIVATE_PREFIX)
    }

    /// The options that govern `channel`, or `UnknownChannel`.
    pub fn resolve(&self, channel: &ChannelName) -> Result<&NamespaceOptions, HubError> {
        let namespace = match Self::namespace_of(channel) {
            None => &self.default,
            Some(ns) => self.namespaces.get(ns).ok_or(HubError::UnknownChannel)?,
        };
        let kind = self.conventions.as_ref().and_then(|c| c.kind_of(Self::local_name(channel)));
        Ok(kind.and_then(|k| namespace.kinds.get(k)).unwrap_or(&namespace.options))
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
        assert_eq!(rules.resolve(&ch("$chat:lobby")), Ok(&chat), "a private channel is in its namespace");
        assert_eq!(rules.resolve(&ch("$news")), Ok(&NamespaceOptions::default()));
        assert!(ChannelRules::is_private(&ch("$chat:lobby")) && !ChannelRules::is_private(&ch("chat:$lobby")));
    }

    /// Channels named `loud-…` push joins and leaves to everyone.
    #[derive(Debug)]
    struct Loud;

    impl ChannelConventions for Loud {
        fn kinds(&self, options: &NamespaceOptions) -> Vec<NamespaceOptions> {
            vec![NamespaceOptions { presence: true, force_push_join_leave: true, ..options.clone() }]
        }
        fn kind_of(&self, local_name: &str) -> Option<usize> {
            local_name.starts_with("loud-").then_some(0)
        }
    }

    #[test]
    fn conventions_give_special_channels_their_options_after_the_namespace() {
        let namespaces =
            BTreeMap::from([("shop".to_string(), NamespaceOptions { history_size: 10, ..Default::default() })]);
        let plain = ChannelRules::new(NamespaceOptions::default(), namespaces);
        assert!(!plain.resolve(&ch("loud-room")).unwrap().presence, "no conventions, no special kinds");

        let rules = plain.with_conventions(Arc::new(Loud));
        assert_eq!(rules.resolve(&ch("news")).unwrap(), &NamespaceOptions::default());
        let room = rules.resolve(&ch("loud-room")).unwrap();
        assert!(room.presence && room.force_push_join_leave);
        let shop_room = rules.resolve(&ch("shop:loud-x")).unwrap();
        assert!(shop_room.presence && shop_room.history_size == 10, "the kind builds on its namespace's options");
        assert_eq!(rules.resolve(&ch("nope:loud-x")), Err(HubError::UnknownChannel));
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
