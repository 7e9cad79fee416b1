//! The `NodeRegistry` part on a JetStream stream of records (`records`):
//! each node's last registration is the one message of its own subject
//! (`<prefix>.node.<id>`), and the stream's `max_age` is the
//! registration's time to live, so a node that stops renewing drops out.
//! (A plain stream rather than the key-value API, which does not work
//! against nats-server 2.9.)
//!
//! The stream's age is set by the registrations (every node gives the
//! same ttl, `presence_update_interval` × 3); a different one updates it.

use std::time::Duration;

use async_trait::async_trait;

use herald_engine::{EngineError, NodeInfo, NodeRegistry};

use crate::history::StreamSettings;
use crate::records::{stream_name, within, Records};
use crate::subjects::token;

/// The cluster's live nodes, in a stream.
#[derive(Debug)]
pub struct NatsNodeRegistry {
    records: Records,
    /// `<prefix>.node`.
    subject: String,
}

impl NatsNodeRegistry {
    /// A registry on `client`, under the subject prefix `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str, streams: StreamSettings, timeout: Duration) -> Self {
        let subject = format!("{prefix}.node");
        let records = Records::new(client, stream_name(prefix, "nodes"), format!("{subject}.*"), streams, timeout);
        Self { records, subject }
    }
}

#[async_trait]
impl NodeRegistry for NatsNodeRegistry {
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        within(self.records.timeout, async {
            self.records.made(ttl).await?;
            self.records.put(&format!("{}.{}", self.subject, token(info.id.as_str())), info).await
        })
        .await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        within(self.records.timeout, async {
            let Some(stream) = self.records.stream(None).await? else { return Ok(Vec::new()) };
            let read = self.records.read_all::<NodeInfo>(&stream, &format!("{}.*", self.subject)).await?;
            let mut nodes: Vec<NodeInfo> = read.into_iter().map(|r| r.value).collect();
            nodes.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            Ok(nodes)
        })
        .await
    }
}
