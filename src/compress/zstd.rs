//! zstd: one frame with its content checksum, compressed by libzstd's own worker
//! threads in jobs of 1 MiB (see the parent module).

use super::{CompressStats, Compressor, Emit};
use bytes::Bytes;
use std::io::{self, Write};

/// Emit output once this much has gathered.
const ZSTD_EMIT: usize = 1 << 20;
/// Input per libzstd job when compressing on several threads.
const ZSTD_JOB: u32 = 1 << 20;

pub(super) struct Zstd {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl Zstd {
    pub(super) fn new(level: i32, threads: usize) -> io::Result<Zstd> {
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
