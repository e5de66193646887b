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
//!
//! Files: `gzip.rs` (the parallel framing and the per-segment choice), `huffman.rs`
//! (the hand-written Huffman-only deflate encoder: the riskiest code of the data path,
//! on its own, with its tests against two independent inflaters), `zstd.rs`.

mod gzip;
mod huffman;
mod zstd;

use anyhow::bail;
use bytes::Bytes;
use std::io::{self, Read};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip { level: u32 },
    Zstd { level: i32 },
}

impl Compression {
    pub fn parse(s: &str) -> Result<Compression, String> {
        let (algo, level) = match s.split_once(':') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        match algo.to_ascii_lowercase().as_str() {
            "gzip" | "gz" => {
                let level = match level {
                    None => 6,
                    Some(l) => match l.parse::<u32>() {
                        Ok(n) if (1..=9).contains(&n) => n,
                        _ => return Err(format!("gzip level must be 1..9, got {l:?}")),
                    },
                };
                Ok(Compression::Gzip { level })
            }
            "zstd" | "zst" => {
                let level = match level {
                    None => 3,
                    Some(l) => match l.parse::<i32>() {
                        Ok(n) if (1..=19).contains(&n) => n,
                        _ => return Err(format!("zstd level must be 1..19, got {l:?}")),
                    },
                };
                Ok(Compression::Zstd { level })
            }
            other => Err(format!(
                "unknown compression {other:?} (expected gzip[:1..9] or zstd[:1..19])"
            )),
        }
    }

    /// File-name extension of the stored object, after `.dump`.
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "gz",
            Compression::Zstd { .. } => "zst",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    pub fn level(&self) -> i32 {
        match self {
            Compression::Gzip { level } => *level as i32,
            Compression::Zstd { level } => *level,
        }
    }
}

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
        Compression::Gzip { level } => Box::new(gzip::ParallelGzip::new(level, threads)),
        Compression::Zstd { level } => Box::new(zstd::Zstd::new(level, threads)?),
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
        "zstd" | "zst" => Box::new(::zstd::stream::read::Decoder::new(input)?),
        other => bail!("unknown compression algorithm {other:?} (expected gzip or zstd)"),
    })
}

/// Inputs and helpers the tests of every file share.
#[cfg(test)]
pub(crate) mod testdata {
    use super::*;
    use std::io::Read;

    /// Random hex digits with a little structure around them, like COPY rows of
    /// ciphertext.
    pub(crate) fn hex_like(n: usize, seed: u64) -> Vec<u8> {
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

    pub(crate) fn text_like(n: usize) -> Vec<u8> {
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

    pub(crate) fn compress_all(
        c: Compression,
        threads: usize,
        input: &[u8],
        chunks: &[usize],
    ) -> Vec<u8> {
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

    pub(crate) fn gunzip_flate2(data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut back)
            .expect("a valid gzip stream");
        back
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;
    use std::io::Read;

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
