//! Cluster-wide questions answered by every node: the asking node sends a
//! control command that reaches every node (itself included), each answers
//! with another control command addressed to the asker, and the asker
//! merges the answers of every live node, or of those that answered within
//! [`SURVEY_TIMEOUT`].
//!
//! The channel list is asked this way: no node keeps the others' channels,
//! and nothing is written to the engine for each subscription.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_engine::{ChannelName, Control, NodeId};
use tokio::sync::mpsc;

use super::Hub;
use crate::error::HubError;

/// How long the asker waits for the nodes' answers.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(3);
/// The most surveys a node runs at once.
const MOST_SURVEYS: usize = 64;
/// The most channels one node answers with.
const MOST_CHANNELS: usize = 100_000;

type Answer = (NodeId, Vec<(ChannelName, usize)>);

/// The surveys this node runs, waiting for answers.
#[derive(Debug, Default)]
pub(super) struct Surveys {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
}

impl Surveys {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Hub {
    /// Every channel with a subscriber anywhere in the cluster (those
    /// matching `pattern`), with its subscribers on all nodes.
    pub async fn cluster_channels(&self, pattern: Option<&str>) -> Result<Vec<(ChannelName, usize)>, HubError> {
        let live: Vec<NodeId> = self.nodes().await?.into_iter().map(|node| node.id).collect();
        let survey = self.surveys.next.fetch_add(1, Ordering::Relaxed);
        let (answers, mut answered) = mpsc::unbounded_channel();
        {
            let mut waiting = self.surveys.waiting();
            if waiting.len() >= MOST_SURVEYS {
                return Err(HubError::NotAvailable("too many channel lists asked at once; retry".into()));
            }
            waiting.insert(survey, answers);
        }
        let asked =
            Control::ChannelsAsked { survey, from: self.config.node.clone(), pattern: pattern.map(str::to_owned) };
        let sent = self.send_control(asked).await;
        let mut merged: BTreeMap<ChannelName, usize> = BTreeMap::new();
        let mut heard = Vec::new();
        if sent.is_ok() {
            let waiting = tokio::time::sleep(SURVEY_TIMEOUT);
            tokio::pin!(waiting);
            while !live.iter().all(|node| heard.contains(node)) {
                let answer = tokio::select! {
                    answer = answered.recv() => Ok(answer),
                    () = &mut waiting => Err(()),
                };
                match answer {
                    Ok(Some((node, channels))) => {
                        for (channel, count) in channels {
                            let total = merged.entry(channel).or_default();
                            *total = total.saturating_add(count);
                        }
                        heard.push(node);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        self.surveys.waiting().remove(&survey);
        sent?;
        let silent: Vec<&NodeId> = live.iter().filter(|node| !heard.contains(node)).collect();
        if !silent.is_empty() {
            tracing::warn!(?silent, "channel list: these nodes did not answer in time; their channels are missing");
        }
        Ok(merged.into_iter().collect())
    }

    /// Another node (or this one) asks for this node's channels.
    pub(super) fn answer_channels(self: Arc<Self>, survey: u64, to: NodeId, pattern: Option<String>) {
        let mut channels = self.channels(pattern.as_deref());
        channels.truncate(MOST_CHANNELS);
        let answer = Control::ChannelsAnswered { survey, to, node: self.config.node.clone(), channels };
        tokio::spawn(async move {
            if let Err(error) = self.send_control(answer).await {
                tracing::warn!(%error, "could not answer a channel list survey");
            }
        });
    }

    /// A node's answer to one of this node's surveys.
    pub(super) fn channels_answered(&self, survey: u64, node: NodeId, channels: Vec<(ChannelName, usize)>) {
        if let Some(waiting) = self.surveys.waiting().get(&survey) {
            let _ = waiting.send((node, channels));
        }
    }
}
