//! Compression of the dump stream, and the matching decoders for the read side.
//!
//! **gzip** (the default): ONE standard gzip stream (RFC 1952) made on every core, the
//! way pigz makes it. Input chunks are compressed independently on a pool of worker
//! threads; each chunk becomes raw deflate blocks ending on a byte boundary (a sync
//! flush, or a stored block), so the chunks' outputs simply concatenate. LZ77 matching
//! in a chunk is primed with the last 32 KiB of the input before it (the deflate
//! window), so nothing is lost at chunk edges. One header, one final empty block, and
//! a trailer whose CRC-32 is combined across chunks and whose ISIZE is the total.
//! Plain `gunzip`, zlib and flate2 read it.
//!
//! A dump is mostly hex-encoded ciphertext (BYTEA as COPY text): 16 symbols, about 4
//! bits of entropy per byte, and no repeats worth finding. Each 128 KiB segment is
//! judged from a cheap sample first (how much of it a quick greedy match scan covers
//! with matches of 6 bytes or more):
//! - where matching pays (JSON, text, metadata), zlib-rs deflates it at the configured
//!   level, window primed from the preceding input;
//! - elsewhere it is entropy-coded only, by this module's own Huffman-only encoder (a
//!   dynamic-Huffman block of literals: still halves hex, at memory speed);
//! - and if even that would not be smaller than the input, it goes as stored blocks.
//!
//! Memory: at most `2 x threads` chunks (input and output) are in flight.
//!
//! **zstd**: one zstd frame (with its content checksum), compressed by libzstd's own
//! worker threads (`zstdmt`) in jobs of 1 MiB, which keeps its buffers to about a dozen
//! MiB. At levels up to 9 matches shorter than 7 bytes are not searched for (see
//! `Zstd::new`).
//!
//! A [`Compressor`] is fed chunks in order and hands compressed bytes, in stream order,
//! to an `emit` callback as soon as they are ready; `pipeline.rs` drives it from one
//! blocking thread. [`decoder`] is the read side (restore, verify, drills).

use crate::config::Compression;
use anyhow::bail;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The deflate window: how much preceding input an LZ77 segment may refer to.
const WINDOW: usize = 32 * 1024;
/// Unit of the LZ / Huffman-only / stored decision.
const SEGMENT: usize = 128 * 1024;
/// Bytes of each segment the decision looks at (twice: at its start and middle).
const SAMPLE: usize = 4 * 1024;
/// A segment is LZ-compressed when matches of >= 6 bytes cover this share of a sample.
const LZ_COVERAGE: f64 = 0.10;

/// What the compressor did, for the run's debug log.
#[derive(Debug, Clone, Default)]
pub struct CompressStats {
    /// Input bytes deflated with LZ77 matching.
    pub lz_bytes: u64,
    /// Input bytes entropy-coded only.
    pub huffman_bytes: u64,
    /// Input bytes stored uncompressed.
    pub stored_bytes: u64,
    /// CPU time the compressing threads spent (gzip workers; zero for zstd, whose
    /// threads belong to libzstd).
    pub worker_cpu: Duration,
}

/// Output callback: receives compressed bytes in stream order. An error stops the
/// compressor and is returned by `write` / `finish`.
pub type Emit<'a> = dyn FnMut(Bytes) -> io::Result<()> + 'a;

pub trait Compressor: Send {
    /// Take the next chunk of input. May call `emit` with any output that is ready,
    /// and waits (backpressure) while too much work is in flight.
    fn write(&mut self, chunk: Bytes, emit: &mut Emit) -> io::Result<()>;
    /// End the stream: emit everything that remains, trailer included.
    fn finish(self: Box<Self>, emit: &mut Emit) -> io::Result<CompressStats>;
}

/// Worker threads by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A compressor for `c` on `threads` threads (at least 1).
pub fn new(c: Compression, threads: usize) -> io::Result<Box<dyn Compressor>> {
    let threads = threads.max(1);
    Ok(match c {
        Compression::Gzip { level } => Box::new(ParallelGzip::new(level, threads)),
        Compression::Zstd { level } => Box::new(Zstd::new(level, threads)?),
    })
}

/// A reader of the decompressed stream of an object stored with `algorithm` (the
/// manifest's `compression.algorithm`: "gzip" or "zstd").
pub fn decoder<'a>(
    algorithm: &str,
    input: Box<dyn Read + Send + 'a>,
) -> anyhow::Result<Box<dyn Read + Send + 'a>> {
    Ok(match algorithm.to_ascii_lowercase().as_str() {
        "gzip" | "gz" => Box::new(flate2::read::MultiGzDecoder::new(input)),
        "zstd" | "zst" => Box::new(zstd::stream::read::Decoder::new(input)?),
        other => bail!("unknown compression algorithm {other:?} (expected gzip or zstd)"),
    })
}

// ---------------------------------------------------------------------------
// Parallel gzip
// ---------------------------------------------------------------------------

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
/// An empty final block with fixed codes: BFINAL=1, BTYPE=01, end-of-block.
const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

struct Job {
    data: Bytes,
    /// Up to 32 KiB of input right before `data`.
    dict: Bytes,
    reply: SyncSender<io::Result<Block>>,
}

struct Block {
    out: Vec<u8>,
    crc: crc32fast::Hasher,
    stats: CompressStats,
}

struct ParallelGzip {
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Receiver<io::Result<Block>>>,
    max_pending: usize,
    /// The last <= 32 KiB of input so far: the next chunk's dictionary.
    tail: Bytes,
    crc: crc32fast::Hasher,
    total: u64,
    header_sent: bool,
    stats: CompressStats,
}

impl ParallelGzip {
    fn new(level: u32, threads: usize) -> ParallelGzip {
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("gzip-{i}"))
                    .spawn(move || worker(level, rx))
                    .expect("spawn a compression thread")
            })
            .collect();
        ParallelGzip {
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_pending: 2 * threads,
            tail: Bytes::new(),
            crc: crc32fast::Hasher::new(),
            total: 0,
            header_sent: false,
            stats: CompressStats::default(),
        }
    }

    /// Emit the oldest block, waiting for it.
    fn emit_next(&mut self, emit: &mut Emit) -> io::Result<()> {
        let rx = self.pending.pop_front().expect("a pending block");
        let block = rx
            .recv()
            .map_err(|_| io::Error::other("a compression thread died"))??;
        self.crc.combine(&block.crc);
        let s = &mut self.stats;
        s.lz_bytes += block.stats.lz_bytes;
        s.huffman_bytes += block.stats.huffman_bytes;
        s.stored_bytes += block.stats.stored_bytes;
        s.worker_cpu += block.stats.worker_cpu;
        if block.out.is_empty() {
            return Ok(());
        }
        emit(Bytes::from(block.out))
    }

    fn next_tail(&self, chunk: &Bytes) -> Bytes {
        if chunk.len() >= WINDOW {
            chunk.slice(chunk.len() - WINDOW..)
        } else {
            let keep = (WINDOW - chunk.len()).min(self.tail.len());
            let mut t = Vec::with_capacity(keep + chunk.len());
            t.extend_from_slice(&self.tail[self.tail.len() - keep..]);
            t.extend_from_slice(chunk);
            Bytes::from(t)
        }
    }
}

impl Compressor for ParallelGzip {
    fn write(&mut self, chunk: Bytes, emit: &mut Emit) -> io::Result<()> {
        if !self.header_sent {
            self.header_sent = true;
            emit(Bytes::from_static(&GZIP_HEADER))?;
        }
        if chunk.is_empty() {
            return Ok(());
        }
        // Wait while too much is in flight, handing out finished blocks in order.
        while self.pending.len() >= self.max_pending {
            self.emit_next(emit)?;
        }
        self.total += chunk.len() as u64;
        let tail = self.next_tail(&chunk);
        let dict = std::mem::replace(&mut self.tail, tail);
        let (reply, rx) = mpsc::sync_channel(1);
        let job = Job {
            data: chunk,
            dict,
            reply,
        };
        self.jobs
            .as_ref()
            .expect("jobs open until finish")
            .send(job)
            .map_err(|_| io::Error::other("the compression threads stopped"))?;
        self.pending.push_back(rx);
        Ok(())
    }

    fn finish(mut self: Box<Self>, emit: &mut Emit) -> io::Result<CompressStats> {
        if !self.header_sent {
            self.header_sent = true;
            emit(Bytes::from_static(&GZIP_HEADER))?;
        }
        while !self.pending.is_empty() {
            self.emit_next(emit)?;
        }
        let mut trailer = Vec::with_capacity(10);
        trailer.extend_from_slice(&FINAL_EMPTY_BLOCK);
        trailer.extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        trailer.extend_from_slice(&(self.total as u32).to_le_bytes());
        emit(Bytes::from(trailer))?;
        Ok(self.stats.clone())
    }
}

impl Drop for ParallelGzip {
    fn drop(&mut self) {
        self.pending.clear();
        self.jobs = None; // workers see the channel close and exit
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn worker(level: u32, jobs: Arc<Mutex<Receiver<Job>>>) {
    let mut enc = BlockEncoder::new(level);
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let cpu = thread_cpu();
        let mut result = enc.encode(&job.dict, &job.data);
        if let Ok(b) = &mut result {
            b.stats.worker_cpu = thread_cpu().saturating_sub(cpu);
        }
        // The receiver is gone only when the compressor was dropped.
        let _ = job.reply.send(result);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Lz,
    Huffman,
}

/// Encodes one chunk into raw deflate blocks that end on a byte boundary.
struct BlockEncoder {
    lz: zlib_rs::Deflate,
    scratch: Vec<u8>,
}

impl BlockEncoder {
    fn new(level: u32) -> BlockEncoder {
        BlockEncoder {
            lz: zlib_rs::Deflate::new(level as i32, false, 15),
            scratch: Vec::with_capacity(WINDOW),
        }
    }

    fn encode(&mut self, dict: &[u8], data: &[u8]) -> io::Result<Block> {
        let mut out = Vec::with_capacity(data.len() / 2 + 1024);
        let mut stats = CompressStats::default();
        let mut lz_open = false;
        let mut pos = 0;
        while pos < data.len() {
            let end = (pos + SEGMENT).min(data.len());
            let seg = &data[pos..end];
            match choose(seg) {
                Mode::Lz => {
                    if !lz_open {
                        self.start_lz(dict, &data[..pos])?;
                        lz_open = true;
                    }
                    self.deflate(seg, zlib_rs::DeflateFlush::NoFlush, &mut out)?;
                    stats.lz_bytes += seg.len() as u64;
                }
                Mode::Huffman => {
                    if lz_open {
                        self.deflate(&[], zlib_rs::DeflateFlush::SyncFlush, &mut out)?;
                        lz_open = false;
                    }
                    if huffman_or_stored(seg, &mut out) {
                        stats.huffman_bytes += seg.len() as u64;
                    } else {
                        stats.stored_bytes += seg.len() as u64;
                    }
                }
            }
            pos = end;
        }
        if lz_open {
            self.deflate(&[], zlib_rs::DeflateFlush::SyncFlush, &mut out)?;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(data);
        Ok(Block { out, crc, stats })
    }

    /// Start a fresh raw deflate stream whose window holds the 32 KiB before the
    /// segment: the end of `dict` followed by `before`.
    fn start_lz(&mut self, dict: &[u8], before: &[u8]) -> io::Result<()> {
        self.lz.reset();
        let window: &[u8] = if before.len() >= WINDOW {
            &before[before.len() - WINDOW..]
        } else {
            let keep = (WINDOW - before.len()).min(dict.len());
            self.scratch.clear();
            self.scratch.extend_from_slice(&dict[dict.len() - keep..]);
            self.scratch.extend_from_slice(before);
            &self.scratch
        };
        if !window.is_empty() {
            self.lz
                .set_dictionary(window)
                .map_err(|e| io::Error::other(format!("deflate dictionary: {e:?}")))?;
        }
        Ok(())
    }

    fn deflate(
        &mut self,
        mut input: &[u8],
        flush: zlib_rs::DeflateFlush,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        loop {
            out.reserve(input.len() / 2 + 4096);
            let room = out.capacity() - out.len();
            let (in0, out0) = (self.lz.total_in(), self.lz.total_out());
            self.lz
                .compress_uninit(input, out.spare_capacity_mut(), flush)
                .map_err(|e| io::Error::other(format!("deflate: {e:?}")))?;
            let used = (self.lz.total_in() - in0) as usize;
            let produced = (self.lz.total_out() - out0) as usize;
            // SAFETY: deflate initialised `produced` bytes of the spare capacity.
            unsafe { out.set_len(out.len() + produced) };
            input = &input[used..];
            // Done when all input is taken and deflate did not fill the space it had
            // (so nothing of the flush is left pending).
            if input.is_empty() && produced < room {
                return Ok(());
            }
        }
    }
}

/// Decide from a sample whether LZ77 matching will pay on `seg`.
fn choose(seg: &[u8]) -> Mode {
    let first = &seg[..seg.len().min(SAMPLE)];
    let mid = seg.len() / 2;
    let second = &seg[mid..(mid + SAMPLE).min(seg.len())];
    if lz_pays(first) || lz_pays(second) {
        Mode::Lz
    } else {
        Mode::Huffman
    }
}

/// Whether a greedy scan covers at least `LZ_COVERAGE` of `s` with matches of 6 bytes
/// or more (4-byte hash, one candidate per bucket): a cheap stand-in for what LZ77
/// would find. Stops as soon as the answer is known.
fn lz_pays(s: &[u8]) -> bool {
    if s.len() < 64 {
        return true; // too small to judge; deflate handles it either way
    }
    let want = (s.len() as f64 * LZ_COVERAGE) as usize;
    let mut table = [u16::MAX; 4096];
    let mut covered = 0usize;
    let mut i = 0usize;
    while i + 4 <= s.len() {
        let k = u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        let h = (k.wrapping_mul(2_654_435_761) >> 20) as usize;
        let cand = table[h];
        table[h] = i as u16;
        if cand != u16::MAX {
            let c = cand as usize;
            let max = (s.len() - i).min(258);
            let mut l = 0;
            while l < max && s[c + l] == s[i + l] {
                l += 1;
            }
            if l >= 6 {
                covered += l;
                if covered >= want {
                    return true;
                }
                i += l;
                continue;
            }
        }
        i += 1;
    }
    false
}

// ---------------------------------------------------------------------------
// Huffman-only deflate: one dynamic block of literals, then a sync marker
// ---------------------------------------------------------------------------

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
fn huffman_or_stored(data: &[u8], out: &mut Vec<u8>) -> bool {
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

// ---------------------------------------------------------------------------
// zstd
// ---------------------------------------------------------------------------

/// Emit output once this much has gathered.
const ZSTD_EMIT: usize = 1 << 20;
/// Input per libzstd job when compressing on several threads.
const ZSTD_JOB: u32 = 1 << 20;

struct Zstd {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl Zstd {
    fn new(level: i32, threads: usize) -> io::Result<Zstd> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::with_capacity(2 * ZSTD_EMIT), level)?;
        enc.include_checksum(true)?;
        if level <= 9 {
            // At these levels zstd looks for 5- and 6-byte matches; in a dump those
            // are mostly accidental repeats inside hex ciphertext. Requiring 7 bytes
            // was measured faster and smaller on LeafLock dumps.
            enc.set_parameter(zstd::stream::raw::CParameter::MinMatch(7))?;
        }
        if threads > 1 {
            enc.multithread(threads as u32)?;
            // Smaller jobs than libzstd's default (4 x window): memory stays near
            // threads x a few MiB instead of growing with the level's window.
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
        }
        Ok(Zstd { enc })
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::replace(
            self.enc.get_mut(),
            Vec::with_capacity(2 * ZSTD_EMIT),
        ))
    }
}

impl Compressor for Zstd {
    fn write(&mut self, chunk: Bytes, emit: &mut Emit) -> io::Result<()> {
        self.enc.write_all(&chunk)?;
        if self.enc.get_ref().len() >= ZSTD_EMIT {
            emit(self.take())?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, emit: &mut Emit) -> io::Result<CompressStats> {
        self.enc.do_finish()?;
        let rest = self.take();
        if !rest.is_empty() {
            emit(rest)?;
        }
        Ok(CompressStats::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random hex digits with a little structure around them, like COPY rows of
    /// ciphertext.
    fn hex_like(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push(b"0123456789abcdef"[(x & 15) as usize]);
            if x % 4000 == 0 {
                out.extend_from_slice(b"\t2024-05-01 12:00:00+00\n\\\\x");
            }
        }
        out.truncate(n);
        out
    }

    fn text_like(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(
                format!(
                    "{{\"event\":\"note.updated\",\"user\":{},\"ip\":\"10.0.{}.{}\",\"agent\":\"Mozilla/5.0\"}}\n",
                    i % 977,
                    i % 13,
                    i % 251
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn compress_all(c: Compression, threads: usize, input: &[u8], chunks: &[usize]) -> Vec<u8> {
        let mut comp = new(c, threads).unwrap();
        let mut out = Vec::new();
        let mut emit = |b: Bytes| -> io::Result<()> {
            out.extend_from_slice(&b);
            Ok(())
        };
        let mut pos = 0;
        let mut k = 0;
        while pos < input.len() {
            let n = chunks[k % chunks.len()].min(input.len() - pos);
            comp.write(Bytes::copy_from_slice(&input[pos..pos + n]), &mut emit)
                .unwrap();
            pos += n;
            k += 1;
        }
        comp.finish(&mut emit).unwrap();
        out
    }

    fn gunzip_flate2(data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut back)
            .expect("a valid gzip stream");
        back
    }

    #[test]
    fn parallel_gzip_is_one_standard_stream() {
        let mut input = hex_like(1_500_000, 7);
        input.extend(text_like(900_000));
        input.extend(hex_like(300_000, 9));
        let out = compress_all(Compression::Gzip { level: 6 }, 4, &input, &[1 << 20]);
        assert_eq!(&out[..3], &[0x1f, 0x8b, 8]);
        // ONE member: the single-member decoder reads all of it.
        assert_eq!(gunzip_flate2(&out), input);
        assert!(out.len() < input.len() * 6 / 10, "{} bytes", out.len());
        let n = out.len();
        let crc = u32::from_le_bytes(out[n - 8..n - 4].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&input));
        assert_eq!(
            u32::from_le_bytes(out[n - 4..].try_into().unwrap()),
            input.len() as u32
        );
    }

    #[test]
    fn many_threads_and_odd_chunk_boundaries_round_trip() {
        let mut input = text_like(400_000);
        input.extend(hex_like(700_000, 3));
        input.extend(text_like(200_001));
        // Chunks smaller than the window, larger than a segment, and one byte.
        let chunks = [1, 4097, 100_003, 31_000, 262_147, 17];
        for threads in [1, 3, 16] {
            let out = compress_all(Compression::Gzip { level: 6 }, threads, &input, &chunks);
            assert_eq!(gunzip_flate2(&out), input, "{threads} threads");
        }
        // Matches across chunk edges are found: the window is primed.
        let small = compress_all(Compression::Gzip { level: 6 }, 4, &input, &chunks);
        let whole = compress_all(Compression::Gzip { level: 6 }, 1, &input, &[input.len()]);
        assert!(
            small.len() < whole.len() + whole.len() / 50,
            "{} vs {}",
            small.len(),
            whole.len()
        );
    }

    #[test]
    fn empty_input_is_a_valid_empty_stream() {
        let out = compress_all(Compression::Gzip { level: 6 }, 2, &[], &[1]);
        assert!(gunzip_flate2(&out).is_empty());
        let z = compress_all(Compression::Zstd { level: 3 }, 2, &[], &[1]);
        let mut back = Vec::new();
        decoder("zstd", Box::new(&z[..]))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn huffman_only_on_hex_and_lz_on_text() {
        let hex = hex_like(SEGMENT, 11);
        let text = text_like(SEGMENT);
        assert_eq!(choose(&hex), Mode::Huffman);
        assert_eq!(choose(&text), Mode::Lz);

        let mut enc = BlockEncoder::new(6);
        let b = enc.encode(&[], &hex).unwrap();
        assert_eq!(b.stats.huffman_bytes, hex.len() as u64);
        // Entropy coding halves hex (4 bits of 8), give or take the tree.
        assert!(b.out.len() < hex.len() * 52 / 100, "{}", b.out.len());
        let t = enc.encode(&[], &text).unwrap();
        assert_eq!(t.stats.lz_bytes, text.len() as u64);
        assert!(t.out.len() < text.len() / 5, "{}", t.out.len());

        // Random bytes: neither pays, stored blocks.
        let random: Vec<u8> = {
            let mut x = 0x9e3779b97f4a7c15u64;
            (0..SEGMENT)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect()
        };
        let r = enc.encode(&[], &random).unwrap();
        assert_eq!(r.stats.stored_bytes, random.len() as u64);
        assert!(r.out.len() <= random.len() + 20);

        for (raw, block) in [(&hex, &b), (&text, &t), (&random, &r)] {
            let mut stream = GZIP_HEADER.to_vec();
            stream.extend_from_slice(&block.out);
            stream.extend_from_slice(&FINAL_EMPTY_BLOCK);
            stream.extend_from_slice(&block.crc.clone().finalize().to_le_bytes());
            stream.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            assert_eq!(&gunzip_flate2(&stream), raw);
        }
    }

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

    #[test]
    fn zstd_round_trips_through_the_decoder() {
        let mut input = text_like(600_000);
        input.extend(hex_like(2_000_000, 5));
        let out = compress_all(Compression::Zstd { level: 3 }, 2, &input, &[1 << 20, 77]);
        assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(out.len() < input.len() * 6 / 10);
        let mut back = Vec::new();
        decoder("zstd", Box::new(&out[..]))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
        assert!(decoder("lz4", Box::new(&out[..])).is_err());
    }

    #[test]
    fn gzip_decoder_reads_concatenated_members() {
        let a = compress_all(Compression::Gzip { level: 1 }, 2, b"hello ", &[3]);
        let b = compress_all(Compression::Gzip { level: 9 }, 2, b"world", &[5]);
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let mut back = String::new();
        decoder("gzip", Box::new(&both[..]))
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello world");
        assert!(decoder("brotli", Box::new(&both[..])).is_err());
    }
}
