//! Pusher's signatures: channel authorizations and user sign-ins from the
//! app's auth endpoint, signed HTTP API requests, and webhook bodies. All
//! are hex HMAC-SHA256 with the app secret; comparisons are constant-time.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// An HMAC-SHA256 keyed with `secret`.
#[allow(clippy::expect_used)] // HMAC takes a key of any length: new_from_slice cannot fail
fn mac(secret: &str) -> HmacSha256 {
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length")
}

/// Hex HMAC-SHA256 of `message` under `secret`.
pub fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the HMAC of `message`, compared in constant time.
pub fn verify_hex(secret: &str, message: &[u8], signature: &str) -> bool {
    let Ok(raw) = hex::decode(signature) else { return false };
    let mut mac = mac(secret);
    mac.update(message);
    mac.verify_slice(&raw).is_ok()
}

/// Checks an `auth` value `<key>:<hex signature>` over `message`.
pub fn verify_auth(key: &str, secret: &str, message: &str, auth: &str) -> bool {
    match auth.split_once(':') {
        Some((given_key, signature)) => given_key == key && verify_hex(secret, message.as_bytes(), signature),
        None => false,
    }
}

/// What a private or presence channel authorization signs.
pub fn channel_message(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// What a user sign-in signs.
pub fn signin_message(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// Hex MD5 of a request body, as `body_md5` carries it.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string an HTTP API request signs: method, path and the query
/// parameters except `auth_signature`, keys lower-cased and sorted, joined
/// unescaped.
pub fn request_message(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    pairs.sort();
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{method}\n{path}\n{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_channel_authorization_example_verifies() {
        let message = channel_message("1234.1234", "private-foobar", None);
        let signature = hmac_hex("7ad3773142a6692b25b8", message.as_bytes());
        assert_eq!(signature, "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        let auth = format!("278d425bdf160c739803:{signature}");
        assert!(verify_auth("278d425bdf160c739803", "7ad3773142a6692b25b8", &message, &auth));
        assert!(!verify_auth("other-key", "7ad3773142a6692b25b8", &message, &auth), "another app's key");
        assert!(!verify_auth("278d425bdf160c739803", "wrong-secret", &message, &auth));
        let tampered = channel_message("1234.1235", "private-foobar", None);
        assert!(!verify_auth("278d425bdf160c739803", "7ad3773142a6692b25b8", &tampered, &auth));
        assert!(!verify_auth("278d425bdf160c739803", "7ad3773142a6692b25b8", &message, "no colon here"));
    }

    #[test]
    fn the_documented_api_request_example_signs_the_same() {
        let params = [
            ("auth_key", "278d425bdf160c739803"),
            ("auth_timestamp", "1353088179"),
            ("auth_version", "1.0"),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_signature", "ignored"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let message = request_message("POST", "/apps/3/events", &params);
        assert_eq!(
            message,
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(
            hmac_hex("7ad3773142a6692b25b8", message.as_bytes()),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn body_digests_are_hex_md5() {
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
