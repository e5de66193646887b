//! Compression of the dump stream: a standard gzip stream (flate2), level
//! configurable. A compressor is fed chunks in order and appends what it produced to
//! an output buffer; `pipeline.rs` runs it on a blocking thread.

use crate::config::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

pub trait Compressor: Send {
    /// Compress `input`, appending any produced bytes to `out`.
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()>;
    /// End the stream, appending the remaining bytes and trailer to `out`.
    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> std::io::Result<()>;
}

pub fn new(c: Compression) -> Box<dyn Compressor> {
    match c {
        Compression::Gzip { level } => Box::new(Gzip {
            enc: GzEncoder::new(Vec::with_capacity(1 << 20), flate2::Compression::new(level)),
        }),
    }
}

struct Gzip {
    enc: GzEncoder<Vec<u8>>,
}

impl Compressor for Gzip {
    fn write(&mut self, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.enc.write_all(input)?;
        out.append(self.enc.get_mut());
        Ok(())
    }

    fn finish(self: Box<Self>, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut rest = self.enc.finish()?;
        out.append(&mut rest);
        Ok(())
    }
}

/// The read side: a decompressing reader for an object stored with `algorithm` (the
/// manifest's `compression.algorithm`).
pub fn decoder<'a>(
    algorithm: &str,
    input: Box<dyn std::io::Read + Send + 'a>,
) -> anyhow::Result<Box<dyn std::io::Read + Send + 'a>> {
    match algorithm {
        "gzip" => Ok(Box::new(flate2::read::MultiGzDecoder::new(input))),
        other => anyhow::bail!("unknown compression {other:?} in the manifest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_round_trips_in_chunks() {
        let input: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let mut c = new(Compression::Gzip { level: 6 });
        let mut out = Vec::new();
        for chunk in input.chunks(100_000) {
            c.write(chunk, &mut out).unwrap();
        }
        c.finish(&mut out).unwrap();
        assert!(out.len() < input.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
        let mut via_decoder = Vec::new();
        decoder("gzip", Box::new(&out[..]))
            .unwrap()
            .read_to_end(&mut via_decoder)
            .unwrap();
        assert_eq!(via_decoder, input);
        assert!(decoder("lz4", Box::new(&out[..])).is_err());
    }
}
