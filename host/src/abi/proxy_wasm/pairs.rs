//! The proxy-wasm header map encoding: `u32 N`, N × (`u32 key_len`, `u32 value_len`),
//! then N × (key, 0, value, 0), all little-endian.

/// Most pairs accepted from a module.
const MAX_PAIRS: usize = 1024;
/// Largest encoded map accepted from a module.
const MAX_BYTES: usize = 1 << 20;

/// Encodes pairs.
pub fn encode<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let n = pairs.len();
    if n == 0 {
        return Vec::new();
    }
    let data: usize = pairs
        .iter()
        .map(|(k, v)| k.as_ref().len() + v.as_ref().len() + 2)
        .sum();
    let mut out = Vec::with_capacity(4 + n * 8 + data);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Encodes a header map.
pub fn encode_headers(headers: &http::HeaderMap) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
        .collect();
    encode(&pairs)
}

/// Decodes pairs; `None` when the bytes are malformed (overruns, missing
/// terminators, trailing bytes, too many pairs). Empty inputs (no bytes, one
/// byte, a zero count) are an empty map.
pub fn decode(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.len() <= 1 {
        return Some(Vec::new());
    }
    if bytes.len() > MAX_BYTES || bytes.len() < 4 {
        return None;
    }
    let n = u32::from_le_bytes(bytes[..4].try_into().ok()?) as usize;
    if n > MAX_PAIRS {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    let mut at = 4;
    for _ in 0..n {
        let k = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let v = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        sizes.push((k, v));
        at += 8;
    }
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?.to_vec();
        at += k;
        if *bytes.get(at)? != 0 {
            return None;
        }
        at += 1;
        let value = bytes.get(at..at.checked_add(v)?)?.to_vec();
        at += v;
        if *bytes.get(at)? != 0 {
            return None;
        }
        at += 1;
        out.push((key, value));
    }
    (at == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_example_encodes_byte_for_byte() {
        let pairs: [(&[u8], &[u8]); 2] = [(b":method", b"GET"), (b"x", b"")];
        let bytes = encode(&pairs);
        let expected: Vec<u8> = [
            &[2, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
            b":method\0GET\0x\0\0",
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(
            decode(&bytes).unwrap(),
            vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b"x".to_vec(), vec![])
            ]
        );
    }

    #[test]
    fn empty_forms_and_malformed_input() {
        assert_eq!(decode(&[]), Some(vec![]));
        assert_eq!(decode(&[0]), Some(vec![]));
        assert_eq!(decode(&[0, 0, 0, 0]), Some(vec![]));
        assert_eq!(
            decode(&[1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 0]),
            None,
            "overrun"
        );
        assert_eq!(
            decode(&[1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 1, 0]),
            None,
            "bad terminator"
        );
        assert_eq!(decode(&[0xff, 0xff, 0, 0]), None, "too many pairs");
    }
}
