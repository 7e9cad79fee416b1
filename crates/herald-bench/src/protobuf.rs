//! The Centrifuge protocol's Protobuf encoding, as far as the bench needs
//! it: the commands it sends (connect, subscribe, publish, the pong) are
//! written from the JSON the client builds, and the replies it reads are
//! turned into the JSON (or the publications) the client handles. The
//! field numbers are the protocol's (`client.proto`). A bench publication's
//! data is the bench's JSON, so it is read as in the JSON protocol.

use serde_json::{json, Map, Value};

/// Field numbers of `Command` and its requests.
mod command {
    pub(super) const ID: u32 = 1;
    pub(super) const CONNECT: u32 = 4;
    pub(super) const SUBSCRIBE: u32 = 5;
    pub(super) const PUBLISH: u32 = 7;
}

const VARINT: u32 = 0;
const LEN: u32 = 2;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value > 0 {
        put_key(out, field, VARINT);
        put_varint(out, value);
    }
}

fn put_str(out: &mut Vec<u8>, field: u32, value: Option<&str>) {
    if let Some(text) = value.filter(|t| !t.is_empty()) {
        put_bytes(out, field, text.as_bytes());
    }
}

/// One JSON command as a length-delimited Protobuf `Command`.
fn command(out: &mut Vec<u8>, json: &Value) {
    let mut body = Vec::new();
    put_uint(&mut body, command::ID, json["id"].as_u64().unwrap_or(0));
    if let Some(connect) = json.get("connect") {
        let mut request = Vec::new();
        put_str(&mut request, 1, connect["token"].as_str());
        put_str(&mut request, 4, connect["name"].as_str());
        put_bytes(&mut body, command::CONNECT, &request);
    } else if let Some(subscribe) = json.get("subscribe") {
        let mut request = Vec::new();
        put_str(&mut request, 1, subscribe["channel"].as_str());
        put_uint(&mut request, 3, u64::from(subscribe["recover"] == true));
        put_str(&mut request, 6, subscribe["epoch"].as_str());
        put_uint(&mut request, 7, subscribe["offset"].as_u64().unwrap_or(0));
        put_uint(&mut request, 10, u64::from(subscribe["recoverable"] == true));
        put_bytes(&mut body, command::SUBSCRIBE, &request);
    } else if let Some(publish) = json.get("publish") {
        let mut request = Vec::new();
        put_str(&mut request, 1, publish["channel"].as_str());
        put_bytes(&mut request, 2, publish["data"].to_string().as_bytes());
        put_bytes(&mut body, command::PUBLISH, &request);
    }
    put_varint(out, body.len() as u64);
    out.extend_from_slice(&body);
}

/// Newline-separated JSON commands as one Protobuf frame.
pub(crate) fn commands(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        let json: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        command(&mut out, &json);
    }
    out
}

/// The pong: an empty command.
pub(crate) const PONG: &[u8] = &[0];

/// A field as read: its number and value.
enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// The fields of one message.
fn fields(mut bytes: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = u32::try_from(key >> 3).ok()?;
        match (key & 7) as u32 {
            VARINT => fields.push(Field::Varint(number, varint(&mut bytes)?)),
            LEN => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let (value, rest) = (bytes.get(..len)?, bytes.get(len..)?);
                bytes = rest;
                fields.push(Field::Bytes(number, value));
            }
            _ => return None,
        }
    }
    Some(fields)
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

/// A publication as JSON: `data` (the bench's JSON) and `offset`.
fn publication(bytes: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for field in fields(bytes)? {
        match field {
            Field::Bytes(4, data) => {
                out.insert("data".into(), serde_json::from_slice(data).unwrap_or(Value::Null));
            }
            Field::Varint(6, offset) => {
                out.insert("offset".into(), json!(offset));
            }
            _ => {}
        }
    }
    Some(Value::Object(out))
}

/// A `SubscribeResult` as JSON, as far as the bench reads it.
fn subscribe_result(bytes: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    let mut publications = Vec::new();
    for field in fields(bytes)? {
        match field {
            Field::Bytes(6, epoch) => drop(out.insert("epoch".into(), text(epoch))),
            Field::Bytes(7, one) => publications.push(publication(one)?),
            Field::Varint(8, recovered) => drop(out.insert("recovered".into(), json!(recovered == 1))),
            Field::Varint(9, offset) => drop(out.insert("offset".into(), json!(offset))),
            Field::Varint(12, was) => drop(out.insert("was_recovering".into(), json!(was == 1))),
            _ => {}
        }
    }
    out.insert("publications".into(), Value::Array(publications));
    Some(Value::Object(out))
}

/// One `Reply` as the JSON the client reads: `{}` for a ping, `{"push":…}`
/// for a publication, `{"id":…,"<method>":…}` or `{"id":…,"error":…}`.
pub(crate) fn reply(bytes: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for field in fields(bytes)? {
        match field {
            Field::Varint(1, id) => drop(out.insert("id".into(), json!(id))),
            Field::Bytes(2, error) => {
                let code = fields(error)?.iter().find_map(|f| match f {
                    Field::Varint(1, code) => Some(*code),
                    _ => None,
                });
                out.insert("error".into(), json!({"code": code}));
            }
            Field::Bytes(4, push) => {
                let mut message = Map::new();
                for field in fields(push)? {
                    match field {
                        Field::Bytes(2, channel) => drop(message.insert("channel".into(), text(channel))),
                        Field::Bytes(4, one) => drop(message.insert("pub".into(), publication(one)?)),
                        Field::Bytes(7, _) => drop(message.insert("unsubscribe".into(), json!({}))),
                        Field::Bytes(11, _) => drop(message.insert("disconnect".into(), json!({}))),
                        _ => {}
                    }
                }
                out.insert("push".into(), Value::Object(message));
            }
            Field::Bytes(5, _) => drop(out.insert("connect".into(), json!({}))),
            Field::Bytes(6, result) => drop(out.insert("subscribe".into(), subscribe_result(result)?)),
            Field::Bytes(8, _) => drop(out.insert("publish".into(), json!({}))),
            Field::Bytes(number, _) if number > 4 => drop(out.insert(format!("result{number}"), json!({}))),
            _ => {}
        }
    }
    Some(Value::Object(out))
}

/// A publication push's channel, data and offset, read in place.
pub(crate) fn publication_parts(reply: &[u8]) -> Option<(&[u8], &[u8], Option<u64>)> {
    let push = fields(reply)?.into_iter().find_map(|field| match field {
        Field::Bytes(4, push) => Some(push),
        _ => None,
    })?;
    let (mut channel, mut publication) = (None, None);
    for field in fields(push)? {
        match field {
            Field::Bytes(2, name) => channel = Some(name),
            Field::Bytes(4, one) => publication = Some(one),
            _ => {}
        }
    }
    let (mut data, mut offset) = (None, None);
    for field in fields(publication?)? {
        match field {
            Field::Bytes(4, bytes) => data = Some(bytes),
            Field::Varint(6, at) => offset = Some(at),
            _ => {}
        }
    }
    Some((channel?, data?, offset))
}

/// The length-delimited replies of one frame.
pub(crate) fn replies(mut frame: &[u8]) -> Option<Vec<&[u8]>> {
    let mut replies = Vec::new();
    while !frame.is_empty() {
        let len = usize::try_from(varint(&mut frame)?).ok()?;
        replies.push(frame.get(..len)?);
        frame = frame.get(len..)?;
    }
    Some(replies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_delimited_and_replies_read_as_the_json_client_expects() {
        let frame =
            commands("{\"id\":1,\"subscribe\":{\"channel\":\"b0\",\"recover\":true,\"offset\":5,\"epoch\":\"e\"}}\n{}");
        let parts = replies(&frame).unwrap();
        assert_eq!(parts.len(), 2, "two delimited commands");
        assert!(parts[1].is_empty(), "the pong is empty");
        // Reply { push: Push { channel: "b0", pub: Publication { data: "{}", offset: 7 } } }
        let push = [0x22, 0x0c, 0x12, 0x02, b'b', b'0', 0x22, 0x06, 0x22, 0x02, b'{', b'}', 0x30, 0x07];
        let reply = reply(&push).unwrap();
        assert_eq!(reply["push"]["channel"], "b0");
        assert_eq!(reply["push"]["pub"]["offset"], 7);
        assert_eq!(super::reply(&[]).unwrap(), json!({}), "a ping");
    }
}
