//! Presence's cases: counting, expiry, and users' arrivals and departures.

use std::time::Duration;

use super::{channel, info, Clock, Recorder};
use crate::engine::Engine;
use crate::ids::ClientId;
use crate::message::PresenceStats;
use crate::presence::{Arrival, Departure};

/// A user with two connections counts once; only refreshed entries
/// outlive their ttl; each expired entry is handed out once.
pub async fn presence_counts_users_once_and_expires(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let presence = engine.presence();
    let ch = channel("conformance:presence");
    let ttl = Duration::from_secs(2);
    for (user, client, arrives) in [("ann", "c1", true), ("ann", "c2", false), ("bob", "c3", true)] {
        let arrival = presence.add_presence(&ch, &info(user, client), ttl).await.expect("add presence");
        assert_eq!(arrival == Arrival::UserArrived, arrives, "{client} is {user}'s first entry: {arrives}");
    }
    let mut present: Vec<String> =
        presence.presence(&ch).await.expect("presence").into_iter().map(|i| i.client.to_string()).collect();
    present.sort();
    assert_eq!(present, ["c1", "c2", "c3"]);
    let stats = presence.presence_stats(&ch).await.expect("stats");
    assert_eq!(stats, PresenceStats { num_clients: 3, num_users: 2 }, "a user with two connections counts once");

    let departure = presence.remove_presence(&ch, &info("ann", "c2")).await.expect("remove presence");
    assert_eq!(departure, Departure::UserRemains, "ann is still there with c1");
    assert_eq!(presence.presence_stats(&ch).await.expect("stats"), PresenceStats { num_clients: 2, num_users: 2 });

    clock.advance(ttl / 2).await;
    let arrival = presence.add_presence(&ch, &info("bob", "c3"), ttl).await.expect("refresh presence");
    assert_eq!(arrival, Arrival::UserWasPresent, "a refresh is no arrival");
    clock.advance(ttl / 2 + Duration::from_millis(500)).await;
    let present = presence.presence(&ch).await.expect("presence");
    assert_eq!(present.len(), 1, "only the refreshed entry outlives its ttl: {present:?}");
    assert_eq!(present[0].client, ClientId::new("c3"));
    assert_eq!(presence.presence_stats(&ch).await.expect("stats"), PresenceStats { num_clients: 1, num_users: 1 });

    let expired: Vec<(String, Departure)> = presence
        .expire_presence(&ch)
        .await
        .expect("expire")
        .into_iter()
        .map(|entry| (entry.info.client.to_string(), entry.departure))
        .collect();
    assert_eq!(
        expired,
        [("c1".to_owned(), Departure::UserDeparted)],
        "the entry that expired is handed out for its leave, ann's last"
    );
    assert!(presence.expire_presence(&ch).await.expect("expire").is_empty(), "and only once");
}

/// Of two concurrent tabs of one user, exactly one is the arrival and
/// exactly one the departure.
pub async fn a_users_arrival_and_departure_are_reported_once(engine: Engine, _: Clock) {
    let _events = Recorder::start(&engine).await;
    let presence = engine.presence();
    let ch = channel("conformance:users");
    let ttl = Duration::from_secs(60);
    let (tab1, tab2) = (info("ann", "t1"), info("ann", "t2"));
    let (first1, first2) = tokio::join!(presence.add_presence(&ch, &tab1, ttl), presence.add_presence(&ch, &tab2, ttl));
    let arrivals = [first1.expect("add"), first2.expect("add")];
    let arrived = arrivals.iter().filter(|a| **a == Arrival::UserArrived).count();
    assert_eq!(arrived, 1, "one of two concurrent tabs is the arrival: {arrivals:?}");
    let (last1, last2) = tokio::join!(presence.remove_presence(&ch, &tab1), presence.remove_presence(&ch, &tab2));
    let departures = [last1.expect("remove"), last2.expect("remove")];
    let departed = departures.iter().filter(|d| **d == Departure::UserDeparted).count();
    assert_eq!(departed, 1, "one of two tabs is the departure: {departures:?}");
    let again = presence.remove_presence(&ch, &tab2).await.expect("remove");
    assert_eq!(again, Departure::UserRemains, "removing a missing entry is no departure");
    let back = presence.add_presence(&ch, &tab2, ttl).await.expect("add");
    assert_eq!(back, Arrival::UserArrived, "after leaving, ann arrives again");
}

/// The anonymous user's connections are strangers to each other: each
/// arrives and departs on its own (an engine keeping them in one record
/// would rewrite all of a busy channel's visitors on every join), and
/// the anonymous user counts once in `num_users`.
pub async fn anonymous_connections_arrive_and_depart_each_on_their_own(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let presence = engine.presence();
    let ch = channel("conformance:visitors");
    let ttl = Duration::from_secs(2);
    let visitors = [info("", "v1"), info("", "v2"), info("", "v3")];
    for visitor in &visitors {
        let arrival = presence.add_presence(&ch, visitor, ttl).await.expect("add presence");
        assert_eq!(arrival, Arrival::UserArrived, "{} arrives on its own", visitor.client);
    }
    let again = presence.add_presence(&ch, &visitors[0], ttl).await.expect("refresh presence");
    assert_eq!(again, Arrival::UserWasPresent, "a refresh is no arrival, anonymous or not");
    presence.add_presence(&ch, &info("ann", "a1"), ttl).await.expect("add presence");
    let stats = presence.presence_stats(&ch).await.expect("stats");
    assert_eq!(stats, PresenceStats { num_clients: 4, num_users: 2 }, "the anonymous user counts once");

    let departure = presence.remove_presence(&ch, &visitors[0]).await.expect("remove presence");
    assert_eq!(departure, Departure::UserDeparted, "v1 departs though v2 and v3 are still there");
    assert_eq!(presence.presence_stats(&ch).await.expect("stats"), PresenceStats { num_clients: 3, num_users: 2 });

    // The heartbeat's batches, which refresh and sweep anonymous entries
    // as the single calls do.
    clock.advance(ttl / 2).await;
    let kept = [(ch.clone(), visitors[2].clone()), (ch.clone(), info("ann", "a1"))];
    assert!(presence.refresh_presence(&kept, ttl).await.is_empty(), "v3 and ann refreshed");
    clock.advance(ttl / 2 + Duration::from_millis(500)).await;
    let swept = presence.expire_presence_of(std::slice::from_ref(&ch)).await;
    assert!(swept.failed.is_empty(), "{:?}", swept.failed);
    let expired: Vec<(String, Departure)> =
        swept.expired.into_iter().map(|(_, entry)| (entry.info.client.to_string(), entry.departure)).collect();
    assert_eq!(expired, [("v2".to_owned(), Departure::UserDeparted)], "v2 expired, its own departure, v3 kept");
    let present: Vec<String> =
        presence.presence(&ch).await.expect("presence").into_iter().map(|i| i.client.to_string()).collect();
    assert_eq!(present.len(), 2, "{present:?}");
    assert!(present.contains(&"v3".to_owned()) && present.contains(&"a1".to_owned()), "{present:?}");
}

/// The heartbeat's batches: entries of many channels refreshed in one call
/// outlive their ttl as if added one by one, and one sweep of many
/// channels hands out each expired entry once, with its channel. More
/// channels and entries than an engine's batch holds (Redis: 32 channels,
/// 32 entries), so the batches' seams are crossed.
pub async fn many_channels_are_refreshed_and_swept_together(engine: Engine, clock: Clock) {
    let _events = Recorder::start(&engine).await;
    let presence = engine.presence();
    // Longer than the other cases': hundreds of entries are refreshed and
    // swept between the clock's steps, on engines with a real clock.
    let ttl = Duration::from_secs(6);
    let channels: Vec<_> = (0..210).map(|n| channel(&format!("conformance:room-{n}"))).collect();
    let everyone = [info("ann", "a1"), info("ann", "a2"), info("bob", "b1")];
    let entries: Vec<_> =
        channels.iter().flat_map(|ch| everyone.iter().map(move |who| (ch.clone(), who.clone()))).collect();
    assert!(presence.refresh_presence(&entries, ttl).await.is_empty(), "refreshed");
    let sample = [&channels[0], &channels[105], &channels[209]];
    for ch in sample {
        let stats = presence.presence_stats(ch).await.expect("stats");
        assert_eq!(
            stats,
            PresenceStats { num_clients: 3, num_users: 2 },
            "refreshed entries count as added ones in {ch}"
        );
    }

    clock.advance(ttl / 2).await;
    let without_bob: Vec<_> = entries.iter().filter(|(_, who)| who.user.as_str() != "bob").cloned().collect();
    assert!(presence.refresh_presence(&without_bob, ttl).await.is_empty(), "refreshed again");
    clock.advance(ttl / 2 + Duration::from_millis(500)).await;

    let swept = presence.expire_presence_of(&channels).await;
    assert!(swept.failed.is_empty(), "{:?}", swept.failed);
    let mut expired: Vec<_> = swept
        .expired
        .iter()
        .map(|(ch, entry)| (ch.clone(), entry.info.client.to_string(), entry.departure == Departure::UserDeparted))
        .collect();
    expired.sort();
    let mut expected: Vec<_> = channels.iter().map(|ch| (ch.clone(), "b1".to_owned(), true)).collect();
    expected.sort();
    assert_eq!(
        expired, expected,
        "bob's entry, not refreshed, expired in every channel, handed out with its channel as his departure"
    );
    assert!(presence.expire_presence_of(&channels).await.expired.is_empty(), "and only once");
    for ch in sample {
        let stats = presence.presence_stats(ch).await.expect("stats");
        assert_eq!(stats, PresenceStats { num_clients: 2, num_users: 1 }, "ann's refreshed entries remain in {ch}");
    }
}
