//! A session lends its WebSocket's socket to the fanout only once its
//! connection is connected: its connect reply goes ahead of publications
//! queued before it, and a fanout writing straight to the socket would
//! have sent them first.

use std::sync::Arc;
use std::time::Duration;

use herald_core::{
    Alarms, ChannelRules, ConnEvent, Connection, ConnectionSpec, Frame, Hub, HubConfig, Outbox, Outgoing, Text,
};
use herald_engine::{ClientId, DisconnectReason, Engine, NodeId, UserId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::{run, DriverSettings, Framing, Parts, Protocol};
use crate::transport::io::Io;
use crate::transport::{Inbound, WebSocket};

/// A protocol that connects at the client's first message, as Centrifuge
/// does, and meanwhile gets a publication (as for a server-side channel)
/// before it queues its reply ahead of it.
struct Connecting {
    settings: DriverSettings,
    outbox: Arc<Outbox>,
    conn: Option<Arc<Connection>>,
}

fn text(text: &'static str) -> Outgoing {
    Outgoing::Frame(Frame::Text(Text::from(text)))
}

impl Protocol for Connecting {
    const NAME: &'static str = "test";

    fn framing(&self) -> Framing {
        Framing::Lines
    }

    fn parts(&self) -> Parts<'_> {
        Parts { settings: &self.settings, outbox: &self.outbox, connection: self.conn.as_ref() }
    }

    fn next_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    async fn on_message(&mut self, _: Inbound) -> Result<Option<Inbound>, DisconnectReason> {
        let spec = ConnectionSpec {
            client: ClientId::new("c1"),
            user: UserId::new("42").unwrap(),
            conn_info: None,
            encoder: Arc::new(crate::centrifuge::CentrifugeEncoder),
            outbox: self.outbox.clone(),
        };
        self.conn = Some(self.settings.hub.connect(spec).unwrap());
        // A fanout's delivery, then the reply that must go first.
        self.outbox.push_unwoken(text("publication")).unwrap();
        self.outbox.flush();
        self.outbox.push_front(text("connect reply"));
        Ok(None)
    }

    async fn on_timer(&mut self) -> Result<(), DisconnectReason> {
        Ok(())
    }

    fn on_event(&mut self, _: ConnEvent) -> Result<Option<Frame>, DisconnectReason> {
        Ok(None)
    }

    fn close_code(&self, reason: &DisconnectReason) -> (u16, String) {
        crate::centrifuge::codes::disconnect_code(reason)
    }
}

/// The next text frame the server sent (short, unmasked).
async fn next_text(client: &mut TcpStream) -> String {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!((head[0], head[1] & 0x80), (0x81, 0), "a whole, unmasked text frame");
    let mut payload = vec![0; usize::from(head[1] & 0x7F)];
    client.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

#[tokio::test]
async fn the_connect_reply_goes_ahead_and_the_fanout_writes_once_connected() {
    let hub = Hub::new(HubConfig::new(NodeId::new("n"), ChannelRules::default()), Engine::memory());
    hub.start().await.unwrap();
    let settings = DriverSettings {
        hub,
        write_timeout: Duration::from_secs(1),
        sessions: Arc::default(),
        metrics: Default::default(),
        events: None,
        alarms: Alarms::default(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let socket = WebSocket::over(Io::Tcp(listener.accept().await.unwrap().0), Vec::new(), 1 << 16);
    let outbox = Arc::new(Outbox::new(1 << 16));
    tokio::spawn(run(socket, Connecting { settings, outbox: outbox.clone(), conn: None }));

    // A masked text frame "{}" (the mask is zero).
    client.write_all(&[0x81, 0x82, 0, 0, 0, 0, b'{', b'}']).await.unwrap();
    // One message: the protocol's framing joins what is queued by lines.
    assert_eq!(next_text(&mut client).await, "connect reply\npublication");

    // Connected, with nothing to write: the session lends its socket (it
    // did before it yielded, on this one thread), and the fanout writes.
    outbox.push_unwoken(text("later")).unwrap();
    outbox.flush();
    assert_eq!(outbox.queued_bytes(), 0, "written by the fanout, not queued for the session");
    assert_eq!(next_text(&mut client).await, "later");
}
