//! The kernel hash functions IPVS schedulers use, bit for bit.
//!
//! * [`hash_32`]: `include/linux/hash.h` `hash_32_generic` — multiply by `GOLDEN_RATIO_32`
//!   (0x61C88647) and keep the top `bits` bits. x86-64 has no `CONFIG_HAVE_ARCH_HASH`, so the
//!   generic version is the one that runs. Used by `sh` and `dh`.
//! * [`hsiphash_u32`]: `lib/siphash.c` `hsiphash_1u32` on a 64-bit kernel, which is *SipHash-1-3*
//!   (not HalfSipHash: "on 64-bit, we make HalfSipHash1-3 actually be SipHash1-3") with the two
//!   `unsigned long` key words, truncated to 32 bits. Used by `mh`.
//! * [`addr_fold`]: the IPv6 folding every hashing scheduler applies (`ip6[0]^ip6[1]^ip6[2]^ip6[3]`,
//!   then `ntohl`), done according to the *service's* family as the kernel does.
//!
//! Invariant: every function here is pure and total (wrapping arithmetic, no panics).

use std::net::IpAddr;

/// `GOLDEN_RATIO_32` from `include/linux/hash.h`.
pub const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// The SipHash initialisation constants ("somepseudorandomlygeneratedbytes").
const SIP_CONST: [u64; 4] =
    [0x736f_6d65_7073_6575, 0x646f_7261_6e64_6f6d, 0x6c79_6765_6e65_7261, 0x7465_6462_7974_6573];

/// `hash_32(val, bits)`: the top `bits` bits of `val * GOLDEN_RATIO_32` (`bits` in 1..=32).
pub fn hash_32(val: u32, bits: u32) -> u32 {
    let bits = bits.clamp(1, 32);
    val.wrapping_mul(GOLDEN_RATIO_32) >> (32 - bits)
}

/// The 32-bit value the hashing schedulers start from: an IPv4 address as a host-order `u32`, an
/// IPv6 address folded by XOR of its four 32-bit words (when the service is IPv6) or its first word
/// (an IPv6 destination behind an IPv4 service, read through `addr->ip`).
pub fn addr_fold(service_is_v6: bool, ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            if service_is_v6 { w(0) ^ w(4) ^ w(8) ^ w(12) } else { w(0) }
        }
    }
}

fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-`c`-`d` of `msg` under the key `(k0, k1)` (the kernel's `key[0]`, `key[1]`).
pub fn siphash(c_rounds: u32, d_rounds: u32, k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = [SIP_CONST[0] ^ k0, SIP_CONST[1] ^ k1, SIP_CONST[2] ^ k0, SIP_CONST[3] ^ k1];
    let mut chunks = msg.chunks_exact(8);
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        for _ in 0..c_rounds {
            sipround(&mut v);
        }
        v[0] ^= m;
    }
    let mut b = (msg.len() as u64) << 56;
    for (i, byte) in chunks.remainder().iter().enumerate() {
        b |= u64::from(*byte) << (8 * i);
    }
    v[3] ^= b;
    for _ in 0..c_rounds {
        sipround(&mut v);
    }
    v[0] ^= b;
    v[2] ^= 0xff;
    for _ in 0..d_rounds {
        sipround(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The kernel's `hsiphash(&v, 4, key)` on a 64-bit machine: SipHash-1-3 of the four
/// little-endian bytes of `v`, truncated to 32 bits.
pub fn hsiphash_u32(v: u32, key: (u64, u64)) -> u32 {
    siphash(1, 3, key.0, key.1, &v.to_le_bytes()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hasher;

    const REF_K0: u64 = 0x0706_0504_0302_0100;
    const REF_K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    /// The SipHash paper's reference vectors (key 00..0f, message 00..len-1).
    #[test]
    fn siphash24_matches_reference_vectors() {
        let msg: Vec<u8> = (0u8..16).collect();
        assert_eq!(siphash(2, 4, REF_K0, REF_K1, &msg[..0]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash(2, 4, REF_K0, REF_K1, &msg[..1]), 0x74f8_39c5_93dc_67fd);
        assert_eq!(siphash(2, 4, REF_K0, REF_K1, &msg[..15]), 0xa129_ca61_49be_45e5);
    }

    /// Rust's `DefaultHasher::new()` is SipHash-1-3 with keys (0, 0) on this toolchain; its raw
    /// `write` feeds bytes unframed, so it cross-checks the 1-3 round schedule.
    #[test]
    #[allow(deprecated)]
    fn siphash13_matches_std_default_hasher() {
        for len in [0usize, 4, 7, 8, 9, 16] {
            let msg: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(&msg);
            assert_eq!(siphash(1, 3, 0, 0, &msg), h.finish(), "len {len}");
        }
    }

    #[test]
    fn hash_32_keeps_top_bits() {
        assert_eq!(hash_32(0, 8), 0);
        assert_eq!(hash_32(1, 8), 0x61);
        assert_eq!(hash_32(1, 32), GOLDEN_RATIO_32);
    }

    #[test]
    fn addr_fold_xors_ipv6_words() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(addr_fold(true, v6), 0x2001_0db8 ^ 1);
        assert_eq!(addr_fold(false, v6), 0x2001_0db8);
        let v4: IpAddr = IpAddr::from([10, 1, 0, 2]);
        assert_eq!(addr_fold(true, v4), 0x0a01_0002);
    }
}
