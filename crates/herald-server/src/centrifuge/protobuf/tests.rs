use std::collections::BTreeMap;

use bytes::Bytes;
use herald_engine::{ClientId, Offset, UserId};
use proptest::prelude::*;

use super::*;

fn decode_reply(mut frame: Bytes) -> wire::Reply {
    let reply = wire::Reply::decode_length_delimited(&mut frame).expect("a length-delimited reply");
    assert!(frame.is_empty(), "one reply, nothing after it");
    reply
}

fn delimited_command(command: &wire::Command) -> Vec<u8> {
    command.encode_length_delimited_to_vec()
}

#[test]
fn a_publication_is_a_push_reply_with_its_data_info_offset_and_tags() {
    let mut published = Publication::from_data(Bytes::from_static(br#"{"goal":1}"#));
    published.offset = Offset::new(7);
    published.tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    published.info = Some(ClientInfo {
        user: UserId::new("42").unwrap(),
        client: ClientId::new("c1"),
        conn_info: None,
        chan_info: None,
    });
    let frame = ProtobufEncoder.encode_publication(&ChannelName::new("scores").unwrap(), &published);
    let reply = decode_reply(Bytes::copy_from_slice(frame.as_bytes()));
    let push = reply.push.expect("a push");
    assert_eq!(reply.id, 0);
    assert_eq!(push.channel, "scores");
    let publication = push.r#pub.expect("a publication");
    assert_eq!(publication.data, Bytes::from_static(br#"{"goal":1}"#));
    assert_eq!(publication.offset, 7);
    assert_eq!(publication.tags["k"], "v");
    assert_eq!(publication.info.unwrap().user, "42");
}

#[test]
fn the_sessions_json_replies_become_replies_with_json_payloads_as_bytes() {
    let connect = br#"{"id":1,"connect":{"client":"c","version":"1","ping":25,"pong":true,"node":"n","data":{"a":[1]},"subs":{"news":{"recoverable":true,"epoch":"e","offset":3,"publications":[{"data":"x","offset":3}]}}}}"#;
    let reply = decode_reply(transcode(connect).unwrap());
    assert_eq!(reply.id, 1);
    let result = reply.connect.expect("a connect result");
    assert_eq!((result.client.as_str(), result.ping, result.pong), ("c", 25, true));
    assert_eq!(result.data, Bytes::from_static(br#"{"a":[1]}"#));
    let news = &result.subs["news"];
    assert_eq!((news.recoverable, news.epoch.as_str(), news.offset), (true, "e", 3));
    assert_eq!(news.publications[0].data, Bytes::from_static(br#""x""#));

    let error = decode_reply(transcode(br#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#).unwrap());
    assert_eq!(error.error.unwrap().code, 103);
    let unsubscribe =
        decode_reply(transcode(br#"{"push":{"channel":"a","unsubscribe":{"code":2500,"reason":"r"}}}"#).unwrap());
    assert_eq!(unsubscribe.push.unwrap().unsubscribe.unwrap().code, 2500);
    assert_eq!(transcode(b"{}").unwrap(), Bytes::from_static(PING), "a ping is an empty reply");
    let presence = br#"{"id":2,"presence":{"presence":{"c1":{"user":"u","client":"c1","conn_info":{"n":1}}}}}"#;
    let presence = decode_reply(transcode(presence).unwrap()).presence.unwrap();
    assert_eq!(presence.presence["c1"].conn_info, Bytes::from_static(br#"{"n":1}"#));
}

#[test]
fn a_frame_of_several_commands_decodes_in_order() {
    let subscribe = wire::Command {
        id: 1,
        subscribe: Some(wire::SubscribeRequest {
            channel: "news".into(),
            recover: true,
            offset: 5,
            ..Default::default()
        }),
        ..Default::default()
    };
    let publish = wire::Command {
        id: 2,
        publish: Some(wire::PublishRequest { channel: "news".into(), data: Bytes::from_static(b"{\"t\":1}") }),
        ..Default::default()
    };
    let pong = wire::Command::default();
    let mut frame =
        Bytes::from([delimited_command(&subscribe), delimited_command(&publish), delimited_command(&pong)].concat());
    let Some(Ok(Command { id: 1, method: Some(Method::Subscribe(request)) })) = next_command(&mut frame) else {
        panic!("a subscribe first")
    };
    assert_eq!((request.channel.as_str(), request.position.recover, request.position.offset), ("news", true, 5));
    let Some(Ok(Command { id: 2, method: Some(Method::Publish(request)) })) = next_command(&mut frame) else {
        panic!("then a publish")
    };
    assert_eq!(request.data.get(), "{\"t\":1}");
    assert!(matches!(next_command(&mut frame), Some(Ok(Command { id: 0, method: None }))), "then a pong");
    assert!(next_command(&mut frame).is_none());
}

#[test]
fn truncated_varints_garbage_and_data_that_is_not_json_are_refused() {
    let refused = |bytes: &[u8]| matches!(next_command(&mut Bytes::copy_from_slice(bytes)), Some(Err(_)));
    assert!(refused(&[0x80]), "a varint cut short");
    assert!(refused(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), "a varint too long");
    assert!(refused(&[0x05, 0x08]), "a length past the end");
    assert!(refused(b"\x03{}x"), "JSON is not Protobuf");
    let binary = wire::Command {
        id: 3,
        publish: Some(wire::PublishRequest { channel: "a".into(), data: Bytes::from_static(&[0, 159, 146, 150]) }),
        ..Default::default()
    };
    let mut frame = Bytes::from(delimited_command(&binary));
    assert!(matches!(next_command(&mut frame), Some(Err(Malformed::NotJson(_)))));
}

proptest! {
    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut rest = Bytes::from(bytes);
        let mut seen = 0;
        while let Some(result) = next_command(&mut rest) {
            seen += 1;
            if result.is_err() || seen > 512 {
                break;
            }
        }
    }
}
