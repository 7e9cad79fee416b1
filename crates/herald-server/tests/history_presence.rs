//! History, recovery, presence and join/leave over real WebSockets.

use crate::support;

use crate::support::TestServer;
use serde_json::{json, Value};

fn offsets(publications: &Value) -> Vec<u64> {
    publications.as_array().map(|a| a.iter().map(|p| p["offset"].as_u64().unwrap()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn subscriptions_in_a_history_namespace_carry_positions() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let reply = client.subscribe("feed:a").await;
    let sub = &reply["subscribe"];
    assert_eq!((sub["recoverable"].as_bool(), sub["positioned"].as_bool()), (Some(true), Some(true)), "{reply}");
    let epoch = sub["epoch"].as_str().expect("an epoch").to_owned();

    let (_, published) = server.api("publish", json!({"channel": "feed:a", "data": "one"})).await;
    assert_eq!(published["result"], json!({"offset": 1, "epoch": epoch}));
    let push = client.next_push().await;
    assert_eq!(push["pub"]["offset"], 1, "{push}");

    let plain = client.subscribe("news").await;
    assert_eq!(plain, json!({"id": plain["id"], "subscribe": {}}), "no positions without history");
}

#[tokio::test]
async fn resubscribing_with_the_last_position_recovers_exactly_what_was_missed() {
    let server = TestServer::start().await;
    let mut first = server.connected("42").await;
    let epoch = first.subscribe("feed:a").await["subscribe"]["epoch"].as_str().unwrap().to_owned();
    for n in 1..=2 {
        server.publish("feed:a", json!(n)).await;
    }
    assert_eq!(first.next_push().await["pub"]["offset"], 1);
    assert_eq!(first.next_push().await["pub"]["offset"], 2);
    drop(first);

    for n in 3..=5 {
        server.publish("feed:a", json!(n)).await;
    }
    let mut again = server.connected("42").await;
    let id = again.id();
    let reply = again
        .command(json!({"id": id, "subscribe": {"channel": "feed:a", "recover": true, "offset": 2, "epoch": epoch}}))
        .await;
    let sub = &reply["subscribe"];
    assert_eq!((sub["was_recovering"].as_bool(), sub["recovered"].as_bool()), (Some(true), Some(true)), "{reply}");
    assert_eq!(offsets(&sub["publications"]), [3, 4, 5]);
    assert_eq!(sub["publications"][0]["data"], 3);
    assert_eq!(sub["offset"], 5);

    server.publish("feed:a", json!(6)).await;
    assert_eq!(again.next_push().await["pub"]["offset"], 6, "live delivery continues after the replay");
}

#[tokio::test]
async fn recovery_past_the_limit_or_from_another_epoch_says_recovered_false() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    let epoch = client.subscribe("feed:a").await["subscribe"]["epoch"].as_str().unwrap().to_owned();
    for n in 1..=6 {
        server.publish("feed:b", json!(n)).await;
    }
    let cases = [
        ("feed:b", json!({"recover": true, "offset": 0, "epoch": "unknown-epoch"})),
        ("feed:a", json!({"recover": true, "offset": 3, "epoch": epoch})),
    ];
    for (channel, position) in cases {
        let mut client = server.connected("42").await;
        let id = client.id();
        let mut subscribe = json!({"channel": channel});
        subscribe.as_object_mut().unwrap().extend(position.as_object().unwrap().clone());
        let reply = client.command(json!({"id": id, "subscribe": subscribe})).await;
        let sub = &reply["subscribe"];
        assert_eq!(sub["was_recovering"], true, "{reply}");
        assert!(sub.get("recovered").is_none(), "recovered: false is omitted as the protocol's default: {reply}");
        assert!(sub.get("publications").is_none(), "no partial replay: {reply}");
    }

    let mut behind = server.connected("43").await;
    let epoch_b = behind.subscribe("feed:c").await["subscribe"]["epoch"].as_str().unwrap().to_owned();
    drop(behind);
    for n in 1..=6 {
        server.publish("feed:c", json!(n)).await;
    }
    let mut back = server.connected("43").await;
    let reply = back
        .command(json!({"id": 9, "subscribe": {"channel": "feed:c", "recover": true, "offset": 0, "epoch": epoch_b}}))
        .await;
    assert!(reply["subscribe"].get("recovered").is_none(), "6 missed is over the limit of 5: {reply}");
    assert_eq!(reply["subscribe"]["offset"], 6, "the client continues from the top");
}

/// centrifuge-js with `getState` sets flag 2: told 112, it loads the state
/// again and subscribes afresh, where `recovered: false` would leave a gap.
#[tokio::test]
async fn a_subscriber_that_asks_to_be_refused_when_it_cannot_recover_gets_112_and_can_subscribe_afresh() {
    let server = TestServer::start().await;
    server.publish("feed:d", json!(1)).await;
    let mut client = server.connected("42").await;
    let stale = json!({"channel": "feed:d", "recover": true, "offset": 0, "epoch": "gone", "flag": 3});
    let reply = client.command(json!({"id": 1, "subscribe": stale})).await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");

    let position = json!({"channel": "feed:d", "recover": true, "offset": 0, "epoch": "gone"});
    let reply = client.command(json!({"id": 2, "subscribe": position})).await;
    assert_eq!(reply["subscribe"]["was_recovering"], true, "without the flag, as before: {reply}");
    assert!(reply["subscribe"].get("recovered").is_none(), "{reply}");

    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();
    let mut again = server.connected("42").await;
    let recoverable = json!({"channel": "feed:d", "recover": true, "offset": 1, "epoch": epoch, "flag": 3});
    let reply = again.command(json!({"id": 3, "subscribe": recoverable})).await;
    assert_eq!(reply["subscribe"]["recovered"], true, "the flag refuses only what cannot recover: {reply}");
}

#[tokio::test]
async fn the_history_command_pages_forwards_and_backwards() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    for n in 1..=7 {
        server.publish("feed:h", json!(n)).await;
    }
    let id = client.id();
    let reply = client.command(json!({"id": id, "history": {"channel": "feed:h", "limit": 3}})).await;
    assert_eq!(reply["error"]["code"], 103, "only subscribers read history: {reply}");

    client.subscribe("feed:h").await;
    let history = |limit: i64, since: Option<(u64, &str)>, reverse: bool| {
        let mut req = json!({"channel": "feed:h", "limit": limit, "reverse": reverse});
        if let Some((offset, epoch)) = since {
            req["since"] = json!({"offset": offset, "epoch": epoch});
        }
        req
    };
    let id = client.id();
    let page = client.command(json!({"id": id, "history": history(3, None, false)})).await;
    let epoch = page["history"]["epoch"].as_str().unwrap().to_owned();
    assert_eq!(offsets(&page["history"]["publications"]), [1, 2, 3]);
    assert_eq!(page["history"]["offset"], 7);
    let id = client.id();
    let page = client.command(json!({"id": id, "history": history(3, Some((3, &epoch)), false)})).await;
    assert_eq!(offsets(&page["history"]["publications"]), [4, 5, 6]);
    let id = client.id();
    let page = client.command(json!({"id": id, "history": history(2, None, true)})).await;
    assert_eq!(offsets(&page["history"]["publications"]), [7, 6]);
    let id = client.id();
    let page = client.command(json!({"id": id, "history": history(3, Some((3, "other")), false)})).await;
    assert_eq!(page["error"]["code"], 112, "a position from another epoch: {page}");

    let (_, api) = server.api("history", json!({"channel": "feed:h", "limit": -1})).await;
    assert_eq!(offsets(&api["result"]["publications"]), [1, 2, 3, 4, 5, 6, 7]);
    // The position alone (no limit: SDKs' default) after an offset behind the top.
    let (_, api) = server.api("history", json!({"channel": "feed:h", "since": {"offset": 3, "epoch": epoch}})).await;
    assert_eq!((&api["result"]["offset"], &api["result"]["publications"]), (&json!(7), &json!([])), "{api}");
    server.api("history_remove", json!({"channel": "feed:h"})).await;
    let (_, api) = server.api("history", json!({"channel": "feed:h", "limit": -1})).await;
    assert_eq!(api["result"]["offset"], 0, "{api}");
    assert_ne!(api["result"]["epoch"], epoch, "removing history starts a new epoch");

    let (_, off) = server.api("history", json!({"channel": "news", "limit": 1})).await;
    assert_eq!(off["error"]["code"], 108, "no history in a namespace without it: {off}");
}

#[tokio::test]
async fn presence_lists_every_connection_and_counts_a_user_with_two_tabs_once() {
    let server = TestServer::start().await;
    let mut ann_tab1 = server.connected("ann").await;
    let mut ann_tab2 = server.connected("ann").await;
    let mut bob = server.connected("bob").await;
    for client in [&mut ann_tab1, &mut ann_tab2, &mut bob] {
        client.subscribe("room:lobby").await;
    }
    let reply = bob.command(json!({"id": 50, "presence": {"channel": "room:lobby"}})).await;
    let present = reply["presence"]["presence"].as_object().expect("a presence map").clone();
    let mut users: Vec<&str> = present.values().map(|info| info["user"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["ann", "ann", "bob"]);
    for (client, info) in &present {
        assert_eq!(info["client"], json!(client), "entries are keyed by client id");
    }
    let reply = bob.command(json!({"id": 51, "presence_stats": {"channel": "room:lobby"}})).await;
    assert_eq!(reply["presence_stats"], json!({"num_clients": 3, "num_users": 2}));

    drop(ann_tab2);
    support::eventually_async("the closed tab leaves presence", || async {
        let (_, reply) = server.api("presence_stats", json!({"channel": "room:lobby"})).await;
        reply["result"] == json!({"num_clients": 2, "num_users": 2})
    })
    .await;

    let mut carol = server.connected("carol").await;
    let reply = carol.command(json!({"id": 52, "presence": {"channel": "room:lobby"}})).await;
    assert_eq!(reply["error"]["code"], 103, "presence is read by subscribers: {reply}");
    let reply = bob.command(json!({"id": 53, "presence": {"channel": "news"}})).await;
    assert_eq!(reply["error"]["code"], 108, "a namespace without presence says so first, as Centrifugo: {reply}");
}

#[tokio::test]
async fn join_and_leave_reach_subscribers_that_ask_for_them() {
    let server = TestServer::start().await;
    let mut watcher = server.connected("watcher").await;
    let mut quiet = server.connected("quiet").await;
    watcher.command(json!({"id": 2, "subscribe": {"channel": "room:x", "join_leave": true}})).await;
    assert_eq!(watcher.next_push().await["join"]["info"]["user"], "watcher", "its own join comes first");
    quiet.subscribe("room:x").await;
    assert_eq!(watcher.next_push().await["join"]["info"]["user"], "quiet", "the watcher sees the quiet one join");

    let mut guest = server.connected("guest").await;
    guest.subscribe("room:x").await;
    let join = watcher.next_push().await;
    assert_eq!((join["channel"].as_str(), join["join"]["info"]["user"].as_str()), (Some("room:x"), Some("guest")));
    drop(guest);
    let leave = watcher.next_push().await;
    assert_eq!(leave["leave"]["info"]["user"], "guest", "{leave}");

    server.publish("room:x", json!("marker")).await;
    assert_eq!(quiet.next_push().await["pub"]["data"], "marker", "no join or leave for those who did not ask");
}

#[tokio::test]
async fn a_repeated_idempotency_key_publishes_once() {
    let server = TestServer::start().await;
    let mut client = server.connected("42").await;
    client.subscribe("feed:i").await;
    let publish = json!({"channel": "feed:i", "data": "once", "idempotency_key": "order-17"});
    let (_, first) = server.api("publish", publish.clone()).await;
    let (_, again) = server.api("publish", publish).await;
    assert_eq!(first, again, "the repeat returns the first result");
    server.publish("feed:i", json!("marker")).await;
    assert_eq!(client.next_push().await["pub"]["data"], "once");
    assert_eq!(client.next_push().await["pub"]["data"], "marker", "the repeat was not delivered");
}
