//! The `pod-template-hash`: names a Deployment's ReplicaSet after its pod
//! template. Kubernetes hashes the Go struct with FNV-32a and renders the
//! decimal number in its vowel-free alphabet; Go's struct printing cannot be
//! reproduced, so we hash canonical JSON (keys sorted) instead, keeping the
//! FNV-32a, the collision-count suffix and the rendering. Names therefore look
//! like Kubernetes' but differ in value, which nothing depends on.

use serde_json::Value;

/// Label (and ReplicaSet name suffix) that tells a Deployment's ReplicaSets apart.
pub const LABEL: &str = "pod-template-hash";

/// Characters Kubernetes' `rand.SafeEncodeString` maps bytes to.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv32a(h: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u32::from(*b)).wrapping_mul(16_777_619))
}

/// JSON with object keys in sorted order, so equal templates hash equally
/// whatever order their fields were written in.
fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("a string serializes"));
                out.push(b':');
                canonical(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).expect("a scalar serializes")),
    }
}

/// Render a number as Kubernetes does: its decimal digits through the safe alphabet.
pub fn safe_encode(n: u32) -> String {
    n.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// The hash of a pod template, varied by the Deployment's `status.collisionCount`.
pub fn compute(template: &Value, collision_count: Option<i64>) -> String {
    let mut buf = Vec::new();
    canonical(template, &mut buf);
    let mut h = fnv32a(2_166_136_261, &buf);
    if let Some(c) = collision_count {
        // Eight bytes with the count little-endian in the low four, as Kubernetes writes it.
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(c as u32).to_le_bytes());
        h = fnv32a(h, &b);
    }
    safe_encode(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv32a(2_166_136_261, b""), 0x811c_9dc5);
        assert_eq!(fnv32a(2_166_136_261, b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(2_166_136_261, b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encoding_maps_digits() {
        // '0' is byte 48, and 48 % 27 = 21 -> '4'; '9' is 57 % 27 = 3 -> 'f'.
        assert_eq!(safe_encode(0), "4");
        assert_eq!(safe_encode(9), "f");
        assert_eq!(safe_encode(1234567890), "56789bcdf4");
    }

    #[test]
    fn hash_ignores_key_order_and_follows_content_and_collisions() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}});
        let b = json!({"spec": {"containers": [{"image": "nginx:1", "name": "c"}]}, "metadata": {"labels": {"app": "web"}}});
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:2"}]}});
        assert_eq!(compute(&a, None), compute(&b, None));
        assert_ne!(compute(&a, None), compute(&c, None));
        assert_ne!(compute(&a, None), compute(&a, Some(1)));
        assert_ne!(compute(&a, Some(1)), compute(&a, Some(2)));
        assert!(compute(&a, None)
            .bytes()
            .all(|ch| SAFE_ALPHABET.contains(&ch)));
    }
}
