//! A client that follows a channel's stream across failures, checking as
//! it goes that it never sees a gap, a duplicate or a reordering without
//! being told `recovered: false`.

use serde_json::json;

use super::{Client, TestServer};

/// What a following client saw, checked as it goes: publications continue
/// the stream one by one, a recovery replays exactly what was missed, and
/// the only way to skip ahead is an explicit `recovered: false`.
pub(crate) struct Follower {
    client: Client,
    channel: &'static str,
    epoch: String,
    last: u64,
    pub(crate) told_unrecoverable: usize,
    id: u32,
}

impl Follower {
    pub(crate) async fn subscribe(node: &TestServer, user: &str, channel: &'static str) -> Follower {
        let mut client = node.connected(user).await;
        let reply = client.subscribe(channel).await;
        let sub = &reply["subscribe"];
        let epoch = sub["epoch"].as_str().unwrap().to_owned();
        let last = sub["offset"].as_u64().unwrap_or(0);
        Follower { client, channel, epoch, last, told_unrecoverable: 0, id: 1000 }
    }

    /// Resubscribes from the last position, retrying temporary errors as
    /// clients do.
    pub(crate) async fn resubscribe(&mut self) {
        loop {
            self.id += 1;
            let request = json!({"channel": self.channel, "recover": true, "offset": self.last, "epoch": self.epoch});
            let reply = self.client.command(json!({"id": self.id, "subscribe": request})).await;
            if reply["error"]["temporary"] == true {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            let sub = &reply["subscribe"];
            assert_eq!(sub["was_recovering"], true, "{reply}");
            if sub["recovered"] == true {
                for publication in sub["publications"].as_array().into_iter().flatten() {
                    self.take(publication["offset"].as_u64().unwrap());
                }
            } else {
                self.told_unrecoverable += 1;
                self.epoch = sub["epoch"].as_str().unwrap().to_owned();
                self.last = sub["offset"].as_u64().unwrap_or(0);
            }
            return;
        }
    }

    fn take(&mut self, offset: u64) {
        assert_eq!(offset, self.last + 1, "no gap, duplicate or reordering without recovered: false");
        self.last = offset;
    }

    /// Follows the channel until the publication with data `"end"`.
    pub(crate) async fn follow_to_the_end(mut self) -> Self {
        loop {
            let push = self.client.next_push().await;
            if push.get("unsubscribe").is_some() {
                assert_eq!(push["unsubscribe"]["code"], 2500, "{push}");
                self.resubscribe().await;
                continue;
            }
            self.take(push["pub"]["offset"].as_u64().expect("a publication"));
            if push["pub"]["data"] == "end" {
                return self;
            }
        }
    }
}
