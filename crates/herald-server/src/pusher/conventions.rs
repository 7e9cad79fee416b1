//! Pusher's channel conventions: what a channel's name says about it,
//! whichever protocol its subscribers speak. `presence-…` channels keep
//! presence and push joins and leaves to every subscriber; `cache-…`
//! channels (also `private-cache-…`, `private-encrypted-cache-…` and
//! `presence-cache-…`) keep their last publication. Installed into the
//! hub's channel rules when Pusher apps are served.

use std::time::Duration;

use herald_core::{ChannelConventions, NamespaceOptions};

/// How long a cache channel keeps its last publication when its namespace
/// keeps no history of its own (Pusher keeps it for 30 minutes).
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// What a channel's name says about it under Pusher's conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    Plain,
    Presence,
    Cache,
    PresenceCache,
}

impl ChannelKind {
    /// The kind of a channel from its name without the namespace.
    pub(crate) fn of(local_name: &str) -> Self {
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

    pub(crate) fn is_presence(self) -> bool {
        matches!(self, Self::Presence | Self::PresenceCache)
    }

    pub(crate) fn is_cache(self) -> bool {
        matches!(self, Self::Cache | Self::PresenceCache)
    }
}

/// Pusher's conventions, for the hub's channel rules.
#[derive(Debug, Default)]
pub(crate) struct PusherConventions;

impl ChannelConventions for PusherConventions {
    /// Presence, cache, and presence-cache channels, in this order.
    fn kinds(&self, options: &NamespaceOptions) -> Vec<NamespaceOptions> {
        let presence =
            NamespaceOptions { presence: true, join_leave: true, force_push_join_leave: true, ..options.clone() };
        let cached = |o: &NamespaceOptions| match o.history_size {
            0 => NamespaceOptions { history_size: 1, history_ttl: CACHE_TTL, ..o.clone() },
            _ => o.clone(),
        };
        vec![presence.clone(), cached(options), cached(&presence)]
    }

    fn kind_of(&self, local_name: &str) -> Option<usize> {
        match ChannelKind::of(local_name) {
            ChannelKind::Plain => None,
            ChannelKind::Presence => Some(0),
            ChannelKind::Cache => Some(1),
            ChannelKind::PresenceCache => Some(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use herald_core::{ChannelRules, HubError};
    use herald_engine::ChannelName;

    use super::*;

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn pusher_conventions_give_presence_and_cache_channels_their_options() {
        let mut namespaces = BTreeMap::new();
        namespaces.insert("shop".to_string(), NamespaceOptions { history_size: 10, ..Default::default() });
        let plain = ChannelRules::new(NamespaceOptions::default(), namespaces.clone());
        assert!(!plain.resolve(&ch("presence-room")).unwrap().presence, "no conventions without Pusher");

        let rules = plain.with_conventions(Arc::new(PusherConventions));
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
}
