//! A stable 64-bit hash (FNV-1a) used for routing: files to workers, rows to workers by key.
//!
//! It must give the same answer in every process and every release, so it is written out here rather
//! than taken from `std` (whose `DefaultHasher` is allowed to change).

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a of `bytes`, then a final avalanche so that `hash % workers` uses all bits.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    // splitmix64 finaliser: FNV's low bits are weak for short keys.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The worker (of `workers`) that owns `key`.
pub fn worker_for(key: &[u8], workers: usize) -> usize {
    (stable_hash(key) % workers.max(1) as u64) as usize
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// Equal, compared without an early exit (a comparison's time does not tell how much of a secret matched).
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(same_bytes(b"abc", b"abc") && !same_bytes(b"abc", b"abd") && !same_bytes(b"ab", b"abc"));
    }

    #[test]
    fn stable_across_calls_and_spreads_keys() {
        assert_eq!(stable_hash(b"alice"), stable_hash(b"alice"));
        assert_ne!(stable_hash(b"alice"), stable_hash(b"bob"));
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            counts[worker_for(format!("user{i}").as_bytes(), 4)] += 1;
        }
        for c in counts {
            assert!(c > 150, "uneven spread: {counts:?}");
        }
    }
}
