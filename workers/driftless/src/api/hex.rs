//! Lowercase hex, as the API's page cursors and the login cookie carry bytes.

/// `bytes` as two lowercase hex digits each.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `text`; `None` unless it is pairs of hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0u8, 7, 0xab, 0xff];
        assert_eq!(super::decode(&super::encode(&bytes)), Some(bytes.to_vec()));
        for bad in ["abc", "zz", "0g"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
