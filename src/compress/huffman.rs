//! Huffman-only deflate (RFC 1951): one dynamic-Huffman block of literals, then an
//! empty stored block, so the output ends on a byte boundary and concatenates with
//! other deflate blocks; or stored blocks where entropy coding would not be smaller.
//! Hand-written because no crate offers "literals only, at memory speed" for hex
//! ciphertext: code lengths limited to 15 bits, canonical codes, run-length coded
//! code lengths, and a hot loop that writes three codes per 64-bit store.
//!
//! Every output is checked against two independent inflaters (zlib-rs through flate2,
//! and miniz_oxide) by the tests below, including a property test over random and
//! adversarial inputs.

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    bits: u64,
    n: u32,
}

impl BitWriter<'_> {
    #[inline(always)]
    fn put(&mut self, value: u32, len: u32) {
        self.bits |= (value as u64) << self.n;
        self.n += len;
        if self.n >= 32 {
            self.out
                .extend_from_slice(&(self.bits as u32).to_le_bytes());
            self.bits >>= 32;
            self.n -= 32;
        }
    }

    /// Write `data` with the codes of `table` (code | length << 16, lengths <= 15);
    /// `body_bits` is what they add up to.
    fn literals(&mut self, data: &[u8], table: &[u32; 257], body_bits: u64) {
        // Three codes (<= 45 bits) fit beside the <= 7 bits left after each store of
        // 8 bytes, of which only the complete bytes are kept.
        let start = self.out.len();
        self.out.resize(start + (body_bits / 8) as usize + 16, 0);
        let mut pos = start;
        let (mut bits, mut n) = (self.bits, self.n);
        // Bring the pending bits below one byte first.
        while n >= 8 {
            self.out[pos] = bits as u8;
            pos += 1;
            bits >>= 8;
            n -= 8;
        }
        let mut triples = data.chunks_exact(3);
        for t in &mut triples {
            let a = table[t[0] as usize];
            let b = table[t[1] as usize];
            let c = table[t[2] as usize];
            bits |= ((a & 0xffff) as u64) << n;
            n += a >> 16;
            bits |= ((b & 0xffff) as u64) << n;
            n += b >> 16;
            bits |= ((c & 0xffff) as u64) << n;
            n += c >> 16;
            self.out[pos..pos + 8].copy_from_slice(&bits.to_le_bytes());
            let bytes = n / 8;
            pos += bytes as usize;
            bits >>= bytes * 8;
            n -= bytes * 8;
        }
        self.out.truncate(pos);
        self.bits = bits;
        self.n = n;
        for &byte in triples.remainder() {
            let t = table[byte as usize];
            self.put(t & 0xffff, t >> 16);
        }
    }

    /// Pad to a byte boundary and write out what is left.
    fn align(&mut self) {
        let bytes = self.n.div_ceil(8) as usize;
        self.out
            .extend_from_slice(&self.bits.to_le_bytes()[..bytes]);
        self.bits = 0;
        self.n = 0;
    }
}

/// Code lengths (at most `limit` bits) of a Huffman code for `freqs`; zero for unused
/// symbols. At least two symbols get a code, so the code is always complete.
fn code_lengths(freqs: &[u32], limit: u8) -> Vec<u8> {
    let mut f: Vec<u32> = freqs.to_vec();
    while f.iter().filter(|&&x| x > 0).count() < 2 {
        let i = f.iter().position(|&x| x == 0).expect("an unused symbol");
        f[i] = 1;
    }
    loop {
        let lens = huffman_depths(&f);
        if lens.iter().all(|&l| l <= limit) {
            return lens;
        }
        // Too deep: flatten the distribution and build again.
        for x in f.iter_mut().filter(|x| **x > 0) {
            *x = (*x).div_ceil(2);
        }
    }
}

/// Depth of every symbol in a Huffman tree built from `f` (0 where `f` is 0).
fn huffman_depths(f: &[u32]) -> Vec<u8> {
    let mut leaves: Vec<(u64, usize)> = f
        .iter()
        .enumerate()
        .filter(|(_, &x)| x > 0)
        .map(|(i, &x)| (x as u64, i))
        .collect();
    leaves.sort_unstable();
    let n = leaves.len();
    // Nodes 0..n are the leaves in order; n.. are internal, created in increasing
    // weight order (two-queue construction).
    let mut weight: Vec<u64> = leaves.iter().map(|l| l.0).collect();
    let mut parent = vec![usize::MAX; 2 * n - 1];
    let (mut li, mut qi) = (0usize, n);
    let take = |weight: &Vec<u64>, li: &mut usize, qi: &mut usize| -> usize {
        let len = weight.len();
        if *li < n && (*qi >= len || weight[*li] <= weight[*qi]) {
            *li += 1;
            *li - 1
        } else {
            *qi += 1;
            *qi - 1
        }
    };
    for _ in 0..n - 1 {
        let a = take(&weight, &mut li, &mut qi);
        let b = take(&weight, &mut li, &mut qi);
        let node = weight.len();
        weight.push(weight[a] + weight[b]);
        parent[a] = node;
        parent[b] = node;
    }
    let mut depth = vec![0u8; 2 * n - 1];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[parent[node]].saturating_add(1);
    }
    let mut lens = vec![0u8; f.len()];
    for (k, &(_, sym)) in leaves.iter().enumerate() {
        lens[sym] = depth[k];
    }
    lens
}

/// Canonical codes for `lens`, bit-reversed for deflate's LSB-first bit order.
fn canonical_codes(lens: &[u8]) -> Vec<u16> {
    let mut count = [0u16; 16];
    for &l in lens {
        count[l as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; 16];
    let mut code = 0u16;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    lens.iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let c = next[l as usize];
            next[l as usize] += 1;
            c.reverse_bits() >> (16 - l)
        })
        .collect()
}

/// Run-length code a sequence of code lengths (RFC 1951 3.2.7): (symbol, extra bits).
fn rle_lengths(lens: &[u8], syms: &mut Vec<(u8, u8)>) {
    let mut i = 0;
    while i < lens.len() {
        let l = lens[i];
        let mut run = 1;
        while i + run < lens.len() && lens[i + run] == l {
            run += 1;
        }
        i += run;
        if l == 0 {
            let mut r = run;
            while r >= 11 {
                let k = r.min(138);
                syms.push((18, (k - 11) as u8));
                r -= k;
            }
            if r >= 3 {
                syms.push((17, (r - 3) as u8));
                r = 0;
            }
            syms.extend(std::iter::repeat_n((0, 0), r));
        } else {
            syms.push((l, 0));
            let mut r = run - 1;
            while r >= 3 {
                let k = r.min(6);
                syms.push((16, (k - 3) as u8));
                r -= k;
            }
            syms.extend(std::iter::repeat_n((l, 0), r));
        }
    }
}

const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Append `data` as one dynamic-Huffman block of literals followed by an empty stored
/// block (so the output ends on a byte boundary), or as stored blocks if that is not
/// larger. Returns whether Huffman coding was used.
pub(super) fn huffman_or_stored(data: &[u8], out: &mut Vec<u8>) -> bool {
    let mut hist = [0u32; 286];
    count_bytes(data, &mut hist);
    hist[256] = 1; // end of block
    let lit_lens = code_lengths(&hist[..257], 15);
    // No distances are used; like zlib, send two one-bit distance codes.
    let dist_lens = [1u8, 1u8];

    let mut syms = Vec::with_capacity(64);
    rle_lengths(&lit_lens, &mut syms);
    rle_lengths(&dist_lens, &mut syms);
    let mut cl_freq = [0u32; 19];
    for &(s, _) in &syms {
        cl_freq[s as usize] += 1;
    }
    let cl_lens = code_lengths(&cl_freq, 7);
    let cl_codes = canonical_codes(&cl_lens);
    let hclen = (4..=19)
        .rev()
        .find(|&n| cl_lens[CL_ORDER[n - 1]] != 0)
        .unwrap_or(4);

    let extra_bits = |s: u8| match s {
        16 => 2,
        17 => 3,
        18 => 7,
        _ => 0,
    };
    let header_bits: u64 = 3
        + 5
        + 5
        + 4
        + 3 * hclen as u64
        + syms
            .iter()
            .map(|&(s, _)| cl_lens[s as usize] as u64 + extra_bits(s) as u64)
            .sum::<u64>();
    let body_bits: u64 = (0..257)
        .map(|s| hist[s] as u64 * lit_lens[s] as u64)
        .sum::<u64>();
    // Block, then the 3-bit header of the empty stored block, padding, LEN/NLEN.
    let huffman_bytes = (header_bits + body_bits + 3).div_ceil(8) + 4;
    let stored_bytes = data.len() as u64 + 5 * data.len().div_ceil(65535) as u64;
    if stored_bytes <= huffman_bytes {
        for piece in data.chunks(65535) {
            out.push(0); // BFINAL=0, BTYPE=00, padding
            out.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            out.extend_from_slice(&(!(piece.len() as u16)).to_le_bytes());
            out.extend_from_slice(piece);
        }
        return false;
    }

    let lit_codes = canonical_codes(&lit_lens);
    // code | length << 16, for the hot loop.
    let mut table = [0u32; 257];
    for s in 0..257 {
        table[s] = lit_codes[s] as u32 | (lit_lens[s] as u32) << 16;
    }
    out.reserve(huffman_bytes as usize + 8);
    let mut w = BitWriter { out, bits: 0, n: 0 };
    w.put(0, 1); // BFINAL = 0
    w.put(2, 2); // BTYPE = 10, dynamic codes
    w.put(0, 5); // HLIT - 257: literals and end of block only
    w.put(2 - 1, 5); // HDIST
    w.put(hclen as u32 - 4, 4);
    for &sym in &CL_ORDER[..hclen] {
        w.put(cl_lens[sym] as u32, 3);
    }
    for &(s, extra) in &syms {
        w.put(cl_codes[s as usize] as u32, cl_lens[s as usize] as u32);
        let eb = extra_bits(s);
        if eb > 0 {
            w.put(extra as u32, eb);
        }
    }
    w.literals(data, &table, body_bits);
    let eob = table[256];
    w.put(eob & 0xffff, eob >> 16);
    // Empty stored block: the byte-aligned end a sync flush makes.
    w.put(0, 3);
    w.align();
    out.extend_from_slice(&[0, 0, 0xff, 0xff]);
    true
}

fn count_bytes(data: &[u8], hist: &mut [u32; 286]) {
    // Four tables, so that runs of one byte value do not stall on one counter.
    let mut h = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        h[0][q[0] as usize] += 1;
        h[1][q[1] as usize] += 1;
        h[2][q[2] as usize] += 1;
        h[3][q[3] as usize] += 1;
    }
    for &b in quads.remainder() {
        h[0][b as usize] += 1;
    }
    for (i, slot) in hist.iter_mut().take(256).enumerate() {
        *slot = h[0][i] + h[1][i] + h[2][i] + h[3][i];
    }
}

#[cfg(test)]
mod tests {
    use super::super::gzip::{FINAL_EMPTY_BLOCK, GZIP_HEADER};
    use super::super::testdata::*;
    use super::*;
    use std::io::Read;

    #[test]
    fn skewed_distributions_stay_within_fifteen_bits() {
        // Fibonacci-like frequencies would make a 30-level tree.
        let mut data = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for sym in 0..25u8 {
            data.extend(std::iter::repeat_n(b'A' + sym, a));
            (a, b) = (b, a + b);
            if data.len() > 200_000 {
                break;
            }
        }
        let mut hist = [0u32; 286];
        count_bytes(&data, &mut hist);
        hist[256] = 1;
        assert!(code_lengths(&hist[..257], 15).iter().all(|&l| l <= 15));
        let mut out = GZIP_HEADER.to_vec();
        assert!(huffman_or_stored(&data, &mut out));
        out.extend_from_slice(&FINAL_EMPTY_BLOCK);
        out.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        assert_eq!(gunzip_flate2(&out), data);
        // One distinct byte value.
        let same = vec![b'x'; 1000];
        let mut out = GZIP_HEADER.to_vec();
        huffman_or_stored(&same, &mut out);
        out.extend_from_slice(&FINAL_EMPTY_BLOCK);
        out.extend_from_slice(&crc32fast::hash(&same).to_le_bytes());
        out.extend_from_slice(&(same.len() as u32).to_le_bytes());
        assert_eq!(gunzip_flate2(&out), same);
    }

    /// Inflate a raw deflate stream with both independent inflaters; they must agree.
    fn inflate_both(raw: &[u8]) -> Vec<u8> {
        let a = miniz_oxide::inflate::decompress_to_vec(raw).expect("miniz_oxide inflates it");
        let mut b = Vec::new();
        flate2::read::DeflateDecoder::new(raw)
            .read_to_end(&mut b)
            .expect("zlib-rs inflates it");
        assert_eq!(a, b, "the two inflaters disagree");
        a
    }

    fn encode(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        huffman_or_stored(data, &mut out);
        out.extend_from_slice(&FINAL_EMPTY_BLOCK);
        out
    }

    #[test]
    fn every_stored_block_boundary_round_trips() {
        for n in [
            0, 1, 2, 3, 4, 5, 7, 8, 9, 65534, 65535, 65536, 65537, 131069, 131070, 131071, 131072,
            196605, 196606,
        ] {
            for data in [
                hex_like(n, n as u64 + 1),
                (0..n).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>(),
                vec![0u8; n],
            ] {
                assert_eq!(inflate_both(&encode(&data)), data, "{n} bytes");
            }
        }
    }

    /// Random and adversarial inputs (uniform bytes, few symbols with skewed or
    /// Fibonacci-like frequencies, long runs, hex, lengths around every block edge),
    /// each inflated by both inflaters. The number of cases is checked and printed.
    #[test]
    fn random_and_adversarial_inputs_inflate_to_themselves() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        use std::sync::atomic::{AtomicUsize, Ordering};
        const CASES: u32 = 400;
        let lens = prop_oneof![
            0usize..300,
            65_500usize..65_600,
            131_030usize..131_110,
            1usize..200_000
        ];
        let input = (lens, 0u8..6, any::<u64>(), 1u8..=255).prop_map(|(n, kind, seed, k)| {
            let mut x = seed | 1;
            let mut next = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            match kind {
                0 => (0..n).map(|_| next() as u8).collect::<Vec<u8>>(),
                // k symbols, each twice as likely as the next: deep trees.
                1 => (0..n)
                    .map(|_| (next().trailing_zeros() as u8 % k.min(40)).wrapping_mul(3))
                    .collect(),
                // Long runs of a few values.
                2 => {
                    let mut v = Vec::with_capacity(n);
                    while v.len() < n {
                        let b = next() as u8 % 4;
                        let run = (next() % 5000) as usize + 1;
                        v.extend(std::iter::repeat_n(b, run.min(n - v.len())));
                    }
                    v
                }
                3 => hex_like(n, seed),
                // Fibonacci-like counts of consecutive symbols.
                4 => {
                    let (mut a, mut b) = (1usize, 1usize);
                    let mut v = Vec::with_capacity(n);
                    let mut sym = 0u8;
                    while v.len() < n {
                        v.extend(std::iter::repeat_n(sym, a.min(n - v.len())));
                        (a, b) = (b, a + b);
                        sym = sym.wrapping_add(k);
                    }
                    v
                }
                _ => vec![k; n],
            }
        });
        let ran = AtomicUsize::new(0);
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&input, |data| {
                ran.fetch_add(1, Ordering::Relaxed);
                prop_assert_eq!(inflate_both(&encode(&data)), data);
                Ok(())
            })
            .unwrap();
        let ran = ran.into_inner();
        eprintln!("huffman encoder: {ran} random and adversarial cases inflated by zlib-rs and miniz_oxide");
        assert!(ran >= CASES as usize, "{ran} cases ran");
    }
}
