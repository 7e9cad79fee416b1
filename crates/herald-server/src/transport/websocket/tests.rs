//! The WebSocket against a raw client socket: what arrives in pieces is
//! read whole, a cancelled receive loses nothing, the closing handshake and
//! the client's mistakes are answered with their codes, and nothing is kept
//! once a message is read or written. (`tests/autobahn.rs` holds it to the
//! whole of RFC 6455.)

use std::time::Duration;

use futures_util::FutureExt;
use herald_core::Sent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A server WebSocket and the raw client socket at its other end.
async fn pair(max_message_size: usize) -> (WebSocket, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (WebSocket::over(Io::Tcp(server), Vec::new(), max_message_size), client)
}

/// A frame as a client sends it: masked.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame::client_frame(fin, opcode, payload, [0x37, 0xFA, 0x21, 0x3D])
}

/// The next frame the server sent: its first byte and its payload.
async fn server_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7F {
        126 => client.read_u16().await.unwrap() as usize,
        127 => client.read_u64().await.unwrap() as usize,
        short => short as usize,
    };
    let mut payload = vec![0; len];
    client.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

/// A close frame's code.
fn code_of(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn fragments_trickled_a_byte_at_a_time_arrive_as_one_message_and_a_ping_between_them_is_answered() {
    let (mut socket, mut client) = pair(1024).await;
    let mut bytes = client_frame(false, 0x1, b"hello, ");
    bytes.extend(client_frame(true, 0x9, b"are you there"));
    bytes.extend(client_frame(false, 0x0, "wörld".as_bytes()));
    bytes.extend(client_frame(true, 0x0, b"!"));
    let trickle = tokio::spawn(async move {
        for byte in bytes {
            client.write_all(&[byte]).await.unwrap();
        }
        client
    });

    let message = socket.recv().await.unwrap();

    assert_eq!(message, Some(Inbound::Text(Bytes::from("hello, wörld!"))));
    let mut client = trickle.await.unwrap();
    assert_eq!(server_frame(&mut client).await, (0x8A, b"are you there".to_vec()), "a pong with the ping's payload");
}

#[tokio::test(start_paused = true)]
async fn a_message_not_whole_within_its_deadline_closes_with_1008_though_pings_come_between_its_fragments() {
    let (mut socket, mut client) = pair(1024).await;
    client.write_all(&client_frame(false, 0x1, b"the start of a message that never ends")).await.unwrap();
    let pinging = tokio::spawn(async move {
        // Pings keep a bidirectional session's pong deadline met, not the message's.
        for _ in 0..4 {
            client.write_all(&client_frame(true, 0x9, b"still here")).await.unwrap();
            tokio::time::sleep(MESSAGE_DEADLINE / 3).await;
        }
        client
    });

    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(MESSAGE_DEADLINE * 2, socket.recv()).await.expect("ended by its deadline");
    assert!(matches!(ended, Err(TransportError::Broken(_))), "{ended:?}");
    assert!(started.elapsed() >= MESSAGE_DEADLINE, "not before its deadline: {:?}", started.elapsed());
    let mut client = pinging.await.unwrap();
    let mut close = server_frame(&mut client).await;
    while close.0 == 0x8A {
        close = server_frame(&mut client).await;
    }
    assert_eq!((close.0, code_of(&close.1)), (0x88, 1008), "{close:?}");
    assert_eq!(socket.input.capacity(), 0);
}

#[tokio::test]
async fn a_message_trickled_within_its_deadline_arrives_and_the_next_has_a_deadline_of_its_own() {
    tokio::time::pause();
    let (mut socket, mut client) = pair(1024).await;
    for text in ["first", "second"] {
        let frame = client_frame(true, 0x1, text.as_bytes());
        let (head, rest) = frame.split_at(3);
        client.write_all(head).await.unwrap();
        let reading = socket.recv();
        tokio::pin!(reading);
        assert!((&mut reading).now_or_never().is_none(), "half a frame is no message");
        tokio::time::advance(MESSAGE_DEADLINE - Duration::from_secs(1)).await;
        client.write_all(rest).await.unwrap();
        assert_eq!(reading.await.unwrap(), Some(Inbound::Text(Bytes::from(text))), "{text}");
    }
}

#[tokio::test]
async fn a_message_that_arrived_whole_while_the_session_was_busy_past_the_deadline_is_read() {
    tokio::time::pause();
    let (mut socket, mut client) = pair(1024).await;
    let frame = client_frame(true, 0x1, b"all of it came in time");
    let (head, rest) = frame.split_at(4);
    client.write_all(head).await.unwrap();
    {
        let reading = socket.recv();
        tokio::pin!(reading);
        assert!((&mut reading).now_or_never().is_none(), "half a frame is no message");
    }
    client.write_all(rest).await.unwrap();
    // The session is busy elsewhere past the deadline; the bytes wait in the socket.
    tokio::time::advance(MESSAGE_DEADLINE * 2).await;
    let message = socket.recv().await.unwrap();
    assert_eq!(message, Some(Inbound::Text(Bytes::from("all of it came in time"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_receive_dropped_halfway_through_a_frame_loses_none_of_it() {
    let (mut socket, mut client) = pair(1024).await;
    let frame = client_frame(true, 0x2, b"binary payload");
    client.write_all(&frame[..6]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while socket.input.is_empty() {
        assert!(socket.recv().now_or_never().is_none(), "half a frame is no message");
        assert!(tokio::time::Instant::now() < deadline, "the first half never arrived");
        tokio::task::yield_now().await;
    }

    client.write_all(&frame[6..]).await.unwrap();

    assert_eq!(socket.recv().await.unwrap(), Some(Inbound::Binary(Bytes::from_static(b"binary payload"))));
    assert_eq!(socket.input.capacity(), 0, "nothing kept once the message is read");
}

#[tokio::test]
async fn the_clients_close_is_answered_with_its_own_code() {
    let (mut socket, mut client) = pair(1024).await;
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    client.write_all(&client_frame(true, 0x8, &close)).await.unwrap();

    assert_eq!(socket.recv().await.unwrap(), None, "the client left");
    let (first, payload) = server_frame(&mut client).await;
    assert_eq!((first, code_of(&payload)), (0x88, 4000));
}

#[tokio::test]
async fn a_close_from_the_server_is_sent_once_and_waits_for_the_clients_reply() {
    let (mut socket, mut client) = pair(1024).await;
    let client_side = tokio::spawn(async move {
        let (first, payload) = server_frame(&mut client).await;
        client.write_all(&client_frame(true, 0x8, &payload[..2])).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        (first, code_of(&payload), String::from_utf8(payload[2..].to_vec()).unwrap(), rest)
    });

    socket.close(3001, "going away for a bit".into()).await;
    socket.close(3002, "again".into()).await;
    drop(socket);

    let (first, code, reason, rest) = client_side.await.unwrap();
    assert_eq!((first, code, reason.as_str()), (0x88, 3001, "going away for a bit"));
    assert!(rest.is_empty(), "nothing after the close frame: {rest:?}");
}

#[tokio::test]
async fn an_unmasked_frame_is_a_protocol_error_told_with_1002() {
    let (mut socket, mut client) = pair(1024).await;
    let mut unmasked = client_frame(true, 0x1, b"hi");
    unmasked[1] &= 0x7F;
    client.write_all(&unmasked).await.unwrap();

    assert!(matches!(socket.recv().await, Err(TransportError::Broken(_))));
    let (first, payload) = server_frame(&mut client).await;
    assert_eq!((first, code_of(&payload)), (0x88, 1002));
}

#[tokio::test]
async fn text_that_is_not_utf8_is_told_with_1007() {
    let (mut socket, mut client) = pair(1024).await;
    client.write_all(&client_frame(true, 0x1, &[b'o', b'k', 0xC3, 0x28])).await.unwrap();

    assert!(matches!(socket.recv().await, Err(TransportError::Broken(_))));
    let (_, payload) = server_frame(&mut client).await;
    assert_eq!(code_of(&payload), 1007);
}

#[tokio::test]
async fn a_frame_above_the_limit_is_refused_from_its_header_before_any_payload() {
    let (mut socket, mut client) = pair(100).await;
    let frame = client_frame(true, 0x1, &[b'x'; 101]);
    client.write_all(&frame[..8]).await.unwrap();

    assert_eq!(socket.recv().await, Err(TransportError::TooLarge));
}

#[tokio::test]
async fn fragments_that_add_up_past_the_limit_are_refused() {
    let (mut socket, mut client) = pair(100).await;
    client.write_all(&client_frame(false, 0x2, &[1; 60])).await.unwrap();
    client.write_all(&client_frame(true, 0x0, &[2; 60])).await.unwrap();

    assert_eq!(socket.recv().await, Err(TransportError::TooLarge));
}

#[tokio::test]
async fn messages_sent_together_arrive_in_order_and_nothing_is_kept_after_the_write() {
    let (mut socket, mut client) = pair(1024).await;
    let long = "y".repeat(300);
    let texts = [Text::from("one"), Text::from(long.clone()), Text::from("three")];

    socket.send_texts(texts).await.unwrap();

    assert_eq!(server_frame(&mut client).await, (0x81, b"one".to_vec()));
    assert_eq!(server_frame(&mut client).await, (0x81, long.into_bytes()));
    assert_eq!(server_frame(&mut client).await, (0x81, b"three".to_vec()));
    assert_eq!((socket.output.capacity(), socket.input.capacity()), (0, 0));
}

#[tokio::test]
async fn a_lone_frame_arrives_whole_whatever_its_header_length() {
    let (mut socket, mut client) = pair(1024).await;
    // Either side of each header length and of each stack buffer's size.
    for len in [3usize, 125, 126, 252, 253, 300, 508, 509, 70_000] {
        let text = "z".repeat(len);
        socket.send_text(Text::from(text.clone())).await.unwrap();
        assert_eq!(socket.output.capacity(), 0, "{len} bytes written: nothing kept");
        assert_eq!(server_frame(&mut client).await, (0x81, text.into_bytes()));
    }
    socket.send_binary(Bytes::from_static(&[0, 1, 2])).await.unwrap();
    assert_eq!(server_frame(&mut client).await, (0x82, vec![0, 1, 2]));
}

#[tokio::test]
async fn a_frame_the_socket_cannot_take_at_once_is_owed_and_goes_out_whole_before_the_next() {
    let (mut socket, mut client) = pair(1024).await;
    // More than the socket buffers hold while the client reads nothing.
    let big: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let send = socket.send_binary(Bytes::from(big.clone()));
    assert!(send.now_or_never().is_none(), "the write waits for the client to read");
    assert!(!socket.output.is_empty(), "what the socket did not take is owed");

    let reader = tokio::spawn(async move {
        let first = server_frame(&mut client).await;
        let second = server_frame(&mut client).await;
        (first, second)
    });
    socket.send_text(Text::from("after")).await.unwrap();
    let (first, second) = reader.await.unwrap();
    assert_eq!(first, (0x82, big), "the owed frame, whole");
    assert_eq!(second, (0x81, b"after".to_vec()), "then the next");
    assert_eq!(socket.output.capacity(), 0);
}

#[tokio::test]
async fn a_lone_frame_the_socket_cannot_take_now_is_owed_whole_and_follows_what_it_holds() {
    let (mut socket, mut client) = pair(1024).await;
    // The socket's buffers filled, with nothing owed by the WebSocket.
    let mut filled = 0usize;
    let Io::Shared(tcp) = &socket.io else { unreachable!() };
    while let Ok(n) = tcp.stream.try_write(&[b'f'; 4096]) {
        filled += n;
    }
    let send = socket.send_text(Text::from("late"));
    assert!(send.now_or_never().is_none(), "the socket takes nothing now");
    assert_eq!(socket.output, b"\x81\x04late", "the whole frame is owed");

    let reader = tokio::spawn(async move {
        let mut held = vec![0u8; filled];
        client.read_exact(&mut held).await.unwrap();
        assert!(held.iter().all(|&b| b == b'f'));
        server_frame(&mut client).await
    });
    socket.send_text(Text::from("next")).await.unwrap();
    assert_eq!(reader.await.unwrap(), (0x81, b"late".to_vec()), "after what the socket held");
    assert_eq!(socket.output.capacity(), 0);
}

#[tokio::test]
async fn bytes_read_with_the_handshake_are_the_first_message() {
    let (server, _client) = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        (listener.accept().await.unwrap().0, client)
    };
    let ahead = client_frame(true, 0x1, b"{\"connect\":{}}");
    let mut socket = WebSocket::over(Io::Tcp(server), ahead, 1024);

    assert_eq!(socket.recv().await.unwrap(), Some(Inbound::Text(Bytes::from_static(b"{\"connect\":{}}"))));
}

#[tokio::test]
async fn nothing_is_sent_after_a_close() {
    let (mut socket, mut client) = pair(1024).await;
    let reply = tokio::spawn(async move {
        let (_, payload) = server_frame(&mut client).await;
        client.write_all(&client_frame(true, 0x8, &payload[..2])).await.unwrap();
        client
    });
    socket.close(1000, String::new()).await;
    let _client = reply.await.unwrap();

    assert!(socket.send_text(Text::from("late")).await.is_err());
    assert!(socket.send_binary(Bytes::from("late")).await.is_err());
}

#[tokio::test]
async fn a_client_that_pings_without_reading_the_pongs_is_not_read_past_a_bound() {
    let (mut socket, mut client) = pair(1024).await;
    let pings: Vec<u8> = (0..2_000).flat_map(|_| client_frame(true, 0x9, &[b'p'; 125])).collect();
    let flood = tokio::spawn(async move {
        // Never reads: the pongs fill the kernel's buffers, then the server's.
        loop {
            if client.write_all(&pings).await.is_err() {
                break;
            }
        }
    });

    // Reading stops once the unwritten pongs pass the bound, so this
    // receive waits; it is given a second to go past it.
    assert!(tokio::time::timeout(Duration::from_secs(1), socket.recv()).await.is_err());

    let owed = socket.output.len() - socket.written;
    assert!(owed > 0, "the kernel's buffers filled: pongs are owed");
    assert!(owed <= MAX_OWED + 127, "{owed} bytes of pongs owed");
    flood.abort();
}

/// The socket the fanout writes to while the WebSocket lends it.
fn lent(socket: &mut WebSocket, binary: bool) -> Arc<dyn Direct> {
    let direct = socket.direct().expect("a WebSocket over TCP lends its socket");
    socket.lend(binary);
    direct
}

fn text_frame(text: &'static str) -> herald_core::Frame {
    herald_core::Frame::Text(Text::from(text))
}

#[tokio::test]
async fn a_lent_socket_takes_a_frame_from_the_fanout_as_one_message() {
    let (mut socket, mut client) = pair(1024).await;
    let direct = lent(&mut socket, false);

    assert_eq!(direct.try_send(&text_frame("published")), Sent::Whole);
    assert_eq!(direct.try_send(&herald_core::Frame::Binary(Bytes::from_static(b"\x01\x02"))), Sent::Not);

    assert_eq!(server_frame(&mut client).await, (0x81, b"published".to_vec()));
    let direct = lent(&mut socket, true);
    assert_eq!(direct.try_send(&text_frame("text")), Sent::Not, "a binary protocol's socket takes no text");
    assert_eq!(direct.try_send(&herald_core::Frame::Binary(Bytes::from_static(b"\x01\x02"))), Sent::Whole);
    assert_eq!(server_frame(&mut client).await, (0x82, vec![1, 2]));
}

#[tokio::test]
async fn a_socket_the_session_writes_to_is_taken_back_from_the_fanout() {
    let (mut socket, mut client) = pair(1024).await;
    let direct = lent(&mut socket, false);

    socket.send_text(Text::from("the session's")).await.unwrap();
    assert_eq!(direct.try_send(&text_frame("the fanout's")), Sent::Not);
    assert_eq!(server_frame(&mut client).await, (0x81, b"the session's".to_vec()));

    lent(&mut socket, false);
    direct.reclaim();
    assert_eq!(direct.try_send(&text_frame("the fanout's")), Sent::Not, "taken back by a drain");
}

/// A text frame of this many bytes of `b`, more than the socket takes.
const BIG: usize = 4 << 20;

/// Fills the socket's buffers, makes room for part of a frame, and has the
/// fanout begin a frame of [`BIG`] bytes on the lent socket: returns the
/// socket as lent, and how many bytes of filler the client has yet to read
/// before the frame.
async fn a_frame_begun_by_the_fanout(socket: &mut WebSocket, client: &mut TcpStream) -> (Arc<dyn Direct>, usize) {
    let mut filled = 0usize;
    let Io::Shared(tcp) = &socket.io else { unreachable!() };
    while let Ok(n) = tcp.stream.try_write(&[b'f'; 4096]) {
        filled += n;
    }
    let mut half = vec![0u8; filled / 2];
    client.read_exact(&mut half).await.unwrap();
    tcp.stream.writable().await.unwrap();
    let direct = lent(socket, false);
    let big: &'static str = "b".repeat(BIG).leak();
    assert_eq!(direct.try_send(&text_frame(big)), Sent::Begun, "the socket took some, not all");
    (direct, filled - half.len())
}

#[tokio::test]
async fn a_frame_the_socket_took_in_part_is_finished_before_anything_of_the_sessions() {
    let (mut socket, mut client) = pair(1024).await;
    let (direct, filled) = a_frame_begun_by_the_fanout(&mut socket, &mut client).await;

    assert_eq!(direct.try_send(&text_frame("after")), Sent::Not, "nothing goes between a frame's parts");

    let reader = tokio::spawn(async move {
        let mut held = vec![0u8; filled];
        client.read_exact(&mut held).await.unwrap();
        assert!(held.iter().all(|&b| b == b'f'));
        (server_frame(&mut client).await, server_frame(&mut client).await)
    });
    socket.send_text(Text::from("the session's")).await.unwrap();
    let (first, second) = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("both frames").unwrap();
    assert_eq!((first.0, first.1.len()), (0x81, BIG), "the fanout's frame, whole");
    assert!(first.1.iter().all(|&b| b == b'b'));
    assert_eq!(second, (0x81, b"the session's".to_vec()), "then the session's");
    assert_eq!(socket.output.capacity(), 0);
}

#[tokio::test]
async fn a_pong_waits_for_the_rest_of_a_frame_the_fanout_began() {
    let (mut socket, mut client) = pair(1024).await;
    let (_, filled) = a_frame_begun_by_the_fanout(&mut socket, &mut client).await;

    client.write_all(&client_frame(true, 0x9, b"ping")).await.unwrap();
    client.write_all(&client_frame(true, 0x1, b"hello")).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut held = vec![0u8; filled];
        client.read_exact(&mut held).await.unwrap();
        (server_frame(&mut client).await, server_frame(&mut client).await)
    });
    assert_eq!(socket.recv().await.unwrap(), Some(Inbound::Text(Bytes::from_static(b"hello"))));
    socket.send_owed().await.unwrap();
    let (first, second) = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("both frames").unwrap();
    assert_eq!((first.0, first.1.len()), (0x81, BIG), "the fanout's frame, whole");
    assert_eq!(second, (0x8A, b"ping".to_vec()), "then the pong");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn after_a_batched_send_whose_fate_is_not_known_nothing_more_is_written_not_even_a_close() {
    let (mut socket, mut client) = pair(1024).await;
    let direct = lent(&mut socket, false);
    let mut wire = Vec::new();
    assert!(direct.begin_batched(&text_frame("perhaps written in part"), &mut wire).is_some());
    // The kernel took the start of the frame, and the ring failed before
    // it said how much.
    let Io::Shared(tcp) = &socket.io else { unreachable!() };
    let written = tcp.stream.try_write(&wire[..5]).unwrap();

    direct.end_batched_lost();

    assert_eq!(direct.try_send(&text_frame("after")), Sent::Not, "the fanout writes nothing more");
    assert!(socket.send_text(Text::from("the session's")).await.is_err(), "nor does the session");
    socket.close(3004, "internal server error".into()).await;
    lent(&mut socket, false);
    assert_eq!(direct.try_send(&text_frame("after")), Sent::Not, "nor is the socket lent again");
    drop((socket, direct));
    let mut read = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut read)).await.expect("the end").unwrap();
    assert_eq!(read, wire[..written], "the client reads what was written of the frame, then the connection's end");
}
