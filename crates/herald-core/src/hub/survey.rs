//! Cluster-wide questions answered by every node: the asking node sends a
//! control command that reaches every node (itself included), each answers
//! with another control command addressed to the asker, and the asker
//! merges the answers of every live node, or of those that answered within
//! [`SURVEY_TIMEOUT`].
//!
//! The channel list is asked this way: no node keeps the others' channels,
//! and nothing is written to the engine for each subscription. Answers go
//! on the control channel, which every node reads: each is cut at
//! [`MOST_ANSWER_BYTES`] of names, and the list then says it is incomplete.

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
/// The most bytes of channel names one node answers with: answers travel
/// on the control channel that every node reads.
const MOST_ANSWER_BYTES: usize = 1024 * 1024;

type Answer = (NodeId, Vec<(ChannelName, usize)>, bool);

/// The cluster's channels (merged, sorted), and whether a node's list was
/// cut short or a node did not answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterChannels {
    /// Channel names with their subscribers on all nodes that answered.
    pub channels: Vec<(ChannelName, usize)>,
    /// Some channels are missing: a node had more than it may send, or did
    /// not answer within [`SURVEY_TIMEOUT`].
    pub incomplete: bool,
}

/// Takes a survey's place back when its asker stops waiting, however it stops.
struct Pending<'a>(&'a Surveys, u64);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.waiting().remove(&self.1);
    }
}

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
    pub async fn cluster_channels(&self, pattern: Option<&str>) -> Result<ClusterChannels, HubError> {
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
        let _pending = Pending(&self.surveys, survey);
        let asked =
            Control::ChannelsAsked { survey, from: self.config.node.clone(), pattern: pattern.map(str::to_owned) };
        let sent = self.send_control(asked).await;
        let mut merged: BTreeMap<ChannelName, usize> = BTreeMap::new();
        let mut heard = Vec::new();
        let mut incomplete = false;
        if sent.is_ok() {
            let waiting = tokio::time::sleep(SURVEY_TIMEOUT);
            tokio::pin!(waiting);
            while !live.iter().all(|node| heard.contains(node)) {
                let answer = tokio::select! {
                    answer = answered.recv() => Ok(answer),
                    () = &mut waiting => Err(()),
                };
                match answer {
                    Ok(Some((node, channels, truncated))) => {
                        incomplete |= truncated;
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
        sent?;
        let silent: Vec<&NodeId> = live.iter().filter(|node| !heard.contains(node)).collect();
        if !silent.is_empty() {
            tracing::warn!(?silent, "channel list: these nodes did not answer in time; their channels are missing");
        }
        Ok(ClusterChannels { channels: merged.into_iter().collect(), incomplete: incomplete || !silent.is_empty() })
    }

    /// Another node (or this one) asks for this node's channels.
    /// The list is made on a task of its own, off the engine's event path.
    pub(super) fn answer_channels(self: Arc<Self>, survey: u64, to: NodeId, pattern: Option<String>) {
        tokio::spawn(async move {
            let mut channels = self.channels(pattern.as_deref());
            let mut bytes = 0usize;
            let fits = channels
                .iter()
                .take_while(|(name, _)| {
                    bytes = bytes.saturating_add(name.as_str().len()).saturating_add(16);
                    bytes <= MOST_ANSWER_BYTES
                })
                .count();
            let truncated = fits < channels.len();
            channels.truncate(fits);
            let node = self.config.node.clone();
            let answer = Control::ChannelsAnswered { survey, to, node, channels, truncated };
            if let Err(error) = self.send_control(answer).await {
                tracing::warn!(%error, "could not answer a channel list survey");
            }
        });
    }

    /// A node's answer to one of this node's surveys.
    pub(super) fn channels_answered(
        &self,
        survey: u64,
        node: NodeId,
        channels: Vec<(ChannelName, usize)>,
        truncated: bool,
    ) {
        if let Some(waiting) = self.surveys.waiting().get(&survey) {
            let _ = waiting.send((node, channels, truncated));
        }
    }
}
