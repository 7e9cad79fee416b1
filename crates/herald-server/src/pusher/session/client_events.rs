//! Sign-in and client events of a Pusher connection.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;

use herald_engine::{DisconnectReason, Publication, UserId};

use super::super::conventions::ChannelKind;
use super::super::webhooks::Event as Hook;
use super::super::{error_frame, object_frame, sign, EVENT_TAG, MAX_EVENT_NAME};
use super::{close, data_as, Session};

/// End-to-end encrypted channels (`private-encrypted-…`): the server never
/// sees their key, and takes no client events on them.
const ENCRYPTED_PREFIX: &str = "private-encrypted-";

#[derive(Debug, Deserialize)]
pub(super) struct SigninData {
    auth: String,
    user_data: String,
}

/// The text of a client event's `data`: a string as it is, anything else
/// as the JSON the client wrote (`null` when it sent none); `None` for a
/// string that is not text (a lone surrogate escape).
pub(super) fn data_text(data: Option<&RawValue>) -> Option<String> {
    let Some(raw) = data.map(RawValue::get) else { return Some("null".to_owned()) };
    match raw.starts_with('"') {
        true => serde_json::from_str::<String>(raw).ok(),
        false => Some(raw.to_owned()),
    }
}

/// A sign-in's `user_data`: `user_info` as the backend wrote it.
#[derive(Deserialize)]
struct UserData {
    #[serde(default)]
    id: Value,
    #[serde(default, deserialize_with = "super::subscribe::present")]
    user_info: Option<Box<RawValue>>,
}

impl Session {
    pub(super) fn on_signin(&mut self, data: Option<&RawValue>) -> Result<(), DisconnectReason> {
        let refuse = |session: &Self, why: &str| {
            tracing::info!(socket_id = %session.socket_id(), why, "pusher sign-in refused");
            session.send(error_frame(Some(close::UNAUTHORIZED), &format!("Connection not authorized: {why}"), None));
            Err(DisconnectReason::InvalidToken)
        };
        let Some(request) = data_as::<SigninData>(data) else {
            return refuse(self, "pusher:signin needs auth and user_data");
        };
        let message = sign::signin_message(self.socket_id(), &request.user_data);
        if !sign::verify_auth(&self.app.config.key, self.app.config.secret.expose(), &message, &request.auth) {
            return refuse(self, "invalid signature");
        }
        let user_data = serde_json::from_str::<UserData>(&request.user_data).ok();
        let id = user_data.as_ref().and_then(|user| user.id.as_str()).filter(|id| !id.is_empty());
        let Some(user) = id.and_then(|id| UserId::new(id).ok()) else {
            return refuse(self, "user_data needs a non-empty string id");
        };
        if self.signed_in.is_some() && self.conn.user() != user {
            return refuse(self, "the connection is signed in as another user");
        }
        let user_info = user_data.and_then(|user| user.user_info).map(|info| crate::json::compact(info.get()));
        self.frontend.hub().set_user(&self.conn, user);
        self.signed_in = Some(Box::new(super::SignedIn { user_info }));
        self.send(object_frame("pusher:signin_success", None, &serde_json::json!({ "user_data": request.user_data })));
        Ok(())
    }

    pub(super) async fn on_client_event(&mut self, event: &str, name: Option<&str>, data: Option<&RawValue>) {
        let name = name.unwrap_or("");
        if let Err(why) = self.client_event(event, name, data).await {
            tracing::debug!(socket_id = %self.socket_id(), channel = name, event, why = %why, "client event rejected");
            self.send(error_frame(Some(close::CLIENT_EVENT_REJECTED), &why, Some(name)));
        }
    }

    async fn client_event(&mut self, event: &str, name: &str, data: Option<&RawValue>) -> Result<(), String> {
        let config = &self.app.config;
        if !config.client_events {
            return Err("Client events are not enabled for this app".into());
        }
        if !super::super::is_private(name) {
            return Err("Client events are only allowed on private and presence channels".into());
        }
        if name.starts_with(ENCRYPTED_PREFIX) {
            // As Pusher: its subscribers could not decrypt one, and pusher-js
            // answers a failed decryption by asking the app's auth endpoint
            // again (one client's events, every subscriber's requests).
            return Err("Client events are not supported on encrypted channels".into());
        }
        let channel = self.app.channel(name).filter(|c| self.conn.is_subscribed(c));
        let Some(channel) = channel else { return Err(format!("Not subscribed to channel {name}")) };
        if event.len() > MAX_EVENT_NAME {
            return Err(format!("Event name is longer than {MAX_EVENT_NAME} characters"));
        }
        let text = data_text(data).ok_or("Event data is a string that is not text")?;
        if text.len() > config.max_event_size {
            return Err(format!("Event data is larger than {} bytes", config.max_event_size));
        }
        let now = Instant::now();
        if now.duration_since(self.rate_window.0) >= Duration::from_secs(1) {
            self.rate_window = (now, 0);
        }
        if self.rate_window.1 >= config.client_event_rate {
            return Err("Client event rejected due to rate limit".into());
        }
        self.rate_window.1 = self.rate_window.1.saturating_add(1);
        let info = self.conn.info_in(&channel);
        let mut publication = Publication::from_data(super::super::publication_data(&text));
        publication.tags.insert(EVENT_TAG.to_owned(), event.to_owned());
        publication.exclude = Some(self.conn.client().clone());
        let user_id = ChannelKind::of(name).is_presence().then(|| info.user.as_str().to_owned());
        publication.info = Some(info);
        // Client events are not cached: they skip history.
        self.frontend.hub().publish(&channel, publication, None, true).await.map_err(|e| e.to_string())?;
        self.frontend.driver.metrics.published("client", 1);
        let hook = Hook::ClientEvent {
            channel: name.to_owned(),
            event: event.to_owned(),
            data: text,
            socket_id: self.socket_id().to_owned(),
            user_id,
        };
        self.frontend.webhooks().send(&self.app, hook);
        Ok(())
    }
}
