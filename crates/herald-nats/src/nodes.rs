//! The `NodeRegistry` part on a JetStream stream: each node's last
//! registration is the one message of its own subject
//! (`<prefix>.node.<id>`, `max_messages_per_subject = 1`), and the stream's
//! `max_age` is the registration's time to live, so a node that stops
//! renewing drops out. (A plain stream rather than the key-value API,
//! which does not work against nats-server 2.9.)
//!
//! The stream's age is set by the registrations (every node gives the
//! same ttl, `presence_update_interval` × 3); a different one updates it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::sync::Mutex;

use herald_engine::{EngineError, NodeInfo, NodeRegistry};

fn unavailable(error: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("nats: {error}"))
}

/// The cluster's live nodes, in a stream.
pub struct NatsNodeRegistry {
    jetstream: jetstream::Context,
    stream: String,
    /// `<prefix>.node`.
    subject: String,
    /// The stream and the ttl it was made with, once a node registered.
    made: Mutex<Option<(stream::Stream, Duration)>>,
    timeout: Duration,
}

impl std::fmt::Debug for NatsNodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsNodeRegistry").field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// A token from a node id: kept when it is letters, digits and `-_`,
/// else hex.
fn token_of(id: &str) -> String {
    let kept = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
    match kept {
        true => id.to_owned(),
        false => id.bytes().map(|b| format!("{b:02x}")).collect(),
    }
}

impl NatsNodeRegistry {
    /// A registry on `client`, under the subject prefix `prefix`.
    pub fn new(client: async_nats::Client, prefix: &str, timeout: Duration) -> Arc<Self> {
        let safe: String =
            prefix.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        Arc::new(Self {
            jetstream: jetstream::new(client),
            stream: format!("{safe}_nodes"),
            subject: format!("{prefix}.node"),
            made: Mutex::new(None),
            timeout,
        })
    }

    /// The stream, made (or its age updated) for `ttl`; `None` when asked
    /// to read only and no node made it yet.
    async fn stream(&self, ttl: Option<Duration>) -> Result<Option<stream::Stream>, EngineError> {
        let mut made = self.made.lock().await;
        match (&*made, ttl) {
            (Some((stream, made_for)), Some(ttl)) if *made_for == ttl => return Ok(Some(stream.clone())),
            (Some((stream, _)), None) => return Ok(Some(stream.clone())),
            _ => {}
        }
        let Some(ttl) = ttl else {
            return Ok(self.jetstream.get_stream(&self.stream).await.ok());
        };
        let config = stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.*", self.subject)],
            max_messages_per_subject: 1,
            max_age: ttl,
            allow_direct: true,
            ..stream::Config::default()
        };
        let stream = match self.jetstream.get_stream(&self.stream).await {
            Ok(found) if found.cached_info().config.max_age == ttl => found,
            Ok(_) => {
                self.jetstream.update_stream(config).await.map_err(unavailable)?;
                self.jetstream.get_stream(&self.stream).await.map_err(unavailable)?
            }
            Err(_) => self.jetstream.get_or_create_stream(config).await.map_err(unavailable)?,
        };
        *made = Some((stream.clone(), ttl));
        Ok(Some(stream))
    }
}

#[async_trait]
impl NodeRegistry for NatsNodeRegistry {
    async fn register_node(&self, info: &NodeInfo, ttl: Duration) -> Result<(), EngineError> {
        let put = async {
            self.stream(Some(ttl)).await?;
            let value = serde_json::to_vec(info).map_err(unavailable)?;
            let subject = format!("{}.{}", self.subject, token_of(info.id.as_str()));
            let ack = self.jetstream.publish(subject, Bytes::from(value)).await.map_err(unavailable)?;
            ack.await.map_err(unavailable)?;
            Ok(())
        };
        tokio::time::timeout(self.timeout, put)
            .await
            .map_err(|_| unavailable("no answer within the command timeout"))?
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, EngineError> {
        let read = async {
            let Some(stream) = self.stream(None).await? else { return Ok(Vec::new()) };
            let subjects: Vec<(String, usize)> = stream
                .info_with_subjects(format!("{}.*", self.subject))
                .await
                .map_err(unavailable)?
                .try_collect()
                .await
                .map_err(unavailable)?;
            let mut nodes = Vec::with_capacity(subjects.len());
            for (subject, _) in subjects {
                // A registration that expired between the listing and the read is gone.
                let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await else { continue };
                match serde_json::from_slice::<NodeInfo>(&message.payload) {
                    Ok(node) => nodes.push(node),
                    Err(error) => tracing::warn!(%error, "an unreadable node registration in nats; skipped"),
                }
            }
            nodes.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            Ok(nodes)
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| unavailable("no answer within the command timeout"))?
    }
}
