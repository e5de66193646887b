//! Parallel gzip: ONE standard gzip stream made on every core (see the parent module):
//! chunks deflated on a pool of workers, each primed with the 32 KiB before it and
//! ending on a byte boundary, one header, one final block, a trailer whose CRC-32 is
//! combined across chunks; per 128 KiB segment a sampled choice of LZ77 (zlib-rs) or
//! Huffman-only / stored (`huffman.rs`).

use super::huffman::huffman_or_stored;
use super::{CompressStats, Compressor, Emit};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
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

pub(super) const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
/// An empty final block with fixed codes: BFINAL=1, BTYPE=01, end-of-block.
pub(super) const FINAL_EMPTY_BLOCK: [u8; 2] = [0x03, 0x00];

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

pub(super) struct ParallelGzip {
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
    pub(super) fn new(level: u32, threads: usize) -> ParallelGzip {
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

#[cfg(test)]
mod tests {
    use super::super::testdata::*;
    use super::*;

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
}
