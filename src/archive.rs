//! pg_dump's custom archive format, read as a stream: the header, the table of
//! contents and the data blocks, and per table an order-independent digest of its COPY
//! rows (see [`RowSet`]), each row hashed by the [`DigestAlgorithm`] asked for.
//!
//! The layout (pg_backup_archiver.c `WriteHead`/`WriteToc`, pg_backup_custom.c):
//! `PGDMP`, version major/minor/revision, `intSize`, `offSize`, format (1 = custom);
//! before 1.15 the compression level as an int, from 1.15 the compression algorithm as
//! one byte; the creation time (7 ints), database name, server and pg_dump versions
//! (strings). Then the TOC: a count and per entry dump id, had-dumper, catalog ids,
//! tag, desc, section, definition, drop statement, COPY statement, namespace,
//! tablespace, table access method (1.14+), relkind (1.16+, an int), owner, a
//! with-oids string, the dependency strings ending in a NULL string, and the custom
//! format's data offset (a flag byte and `offSize` bytes). Then the data blocks: a
//! block type (1 = data, 3 = large objects), the dump id, and chunks (an int length,
//! then that many bytes) ending with a zero length. An int is a sign byte and
//! `intSize` bytes, least significant first; a string is an int length (-1: NULL) and
//! its bytes.
//!
//! The input may be hostile (an archive read back from a bucket): every length is
//! checked before it is used, nothing is allocated from a length field beyond a small
//! cap, definitions and row data are skipped or hashed in place, and the only state
//! kept is per table (its name, column list and running digest), never per row.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read};

/// The archive versions this reader understands (1.12 to 1.16: pg_dump 11 to 18).
const MIN_VERSION: (u8, u8) = (1, 12);
const MAX_VERSION: (u8, u8) = (1, 16);
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// Longest tag, desc or namespace kept; a COPY statement may be longer (wide tables).
const MAX_NAME: usize = 1 << 20;
const MAX_COPY_STMT: usize = 1 << 20;
/// More TABLE DATA entries than this is not a database dump but an attack on memory.
const MAX_TABLES: usize = 1_000_000;

/// How each row is hashed before [`RowSet`] adds it up: the content digest
/// algorithms a manifest may name. New backups use [`DigestAlgorithm::CURRENT`]; a
/// manifest says which one its digests use, and the drill and `verify` recompute with
/// that one. A manifest is untrusted input: its name selects one of these or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// `sha256-sum`: the sum of the rows' SHA-256. Backups made before `blake3-sum`.
    Sha256Sum,
    /// `blake3-sum`: the sum of the rows' BLAKE3 (unkeyed, 256-bit output). Faster
    /// than SHA-256, even with SHA-NI, on the long rows (hex-encoded ciphertext) that
    /// hold most of a LeafLock dump's bytes.
    Blake3Sum,
}

impl DigestAlgorithm {
    /// What new backups record.
    pub const CURRENT: DigestAlgorithm = DigestAlgorithm::Blake3Sum;
    pub const ALL: [DigestAlgorithm; 2] = [DigestAlgorithm::Sha256Sum, DigestAlgorithm::Blake3Sum];

    /// The name a manifest records.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256Sum => "sha256-sum",
            DigestAlgorithm::Blake3Sum => "blake3-sum",
        }
    }

    /// The algorithm of that exact name, if this version knows it.
    pub fn from_name(name: &str) -> Option<DigestAlgorithm> {
        DigestAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A cryptographic (collision-resistant) hash of one row to 256 bits, the one thing
/// that differs between the [`DigestAlgorithm`]s: [`RowSplitter`] is generic over it.
pub trait RowHash: Default {
    /// The hash of a whole row.
    fn once(row: &[u8]) -> [u8; 32];
    /// Add a piece of the current row.
    fn update(&mut self, piece: &[u8]);
    /// The hash of the pieces added since the last call; the hasher starts afresh.
    fn finish_row(&mut self) -> [u8; 32];
}

impl RowHash for Sha256 {
    fn once(row: &[u8]) -> [u8; 32] {
        Sha256::digest(row).into()
    }
    fn update(&mut self, piece: &[u8]) {
        Digest::update(self, piece);
    }
    fn finish_row(&mut self) -> [u8; 32] {
        self.finalize_reset().into()
    }
}

impl RowHash for blake3::Hasher {
    fn once(row: &[u8]) -> [u8; 32] {
        blake3::hash(row).into()
    }
    fn update(&mut self, piece: &[u8]) {
        blake3::Hasher::update(self, piece);
    }
    fn finish_row(&mut self) -> [u8; 32] {
        let h = self.finalize().into();
        self.reset();
        h
    }
}

/// The order-independent digest of a multiset of rows: the sum, modulo 2^256, of the
/// hash of every row (a [`RowHash`], as a big-endian integer), with the row and byte
/// counts. Rows in another order give the same sum; two equal rows add up instead of
/// cancelling (as they would with XOR).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowSet {
    /// Little-endian 64-bit limbs of the sum.
    sum: [u64; 4],
    pub rows: u64,
    /// Bytes of the rows' COPY text, each row's newline included.
    pub bytes: u64,
}

impl RowSet {
    /// Add one row (its COPY text without the newline), hashed by the caller.
    fn add_hash(&mut self, h: &[u8; 32], len: u64) {
        let mut carry = 0u64;
        for (i, limb) in self.sum.iter_mut().enumerate() {
            let at = 32 - 8 * (i + 1);
            let x = u64::from_be_bytes(h[at..at + 8].try_into().expect("8 bytes"));
            let (s1, c1) = limb.overflowing_add(x);
            let (s2, c2) = s1.overflowing_add(carry);
            *limb = s2;
            carry = u64::from(c1) + u64::from(c2);
        }
        self.rows += 1;
        self.bytes += len + 1;
    }

    /// Add one whole row, hashed with `H`.
    pub fn add_row<H: RowHash>(&mut self, row: &[u8]) {
        self.add_hash(&H::once(row), row.len() as u64);
    }

    /// The sum as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.sum.iter().rev().map(|l| format!("{l:016x}")).collect()
    }
}

/// Splits a byte stream into COPY rows (lines) and adds each to a [`RowSet`], hashing
/// a row in place as its pieces arrive: no row is ever buffered. A line `\.` ends the
/// data (pg_dump ends every table's block with `\.` and two empty lines; a text COPY
/// row is never `\.`, a backslash being written `\\`): what follows is not rows, and
/// COPY FROM would not load it either.
#[derive(Default)]
pub struct RowSplitter<H: RowHash> {
    set: RowSet,
    hasher: H,
    /// Bytes of the current, unfinished row.
    pending: u64,
    /// The first two bytes of the current row, to recognise `\.`.
    head: [u8; 2],
    ended: bool,
}

impl<H: RowHash> RowSplitter<H> {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !self.ended && !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let row = &data[..i];
                    if self.pending == 0 {
                        if row == b"\\." {
                            self.ended = true;
                        } else {
                            self.set.add_row::<H>(row);
                        }
                    } else {
                        self.part(row);
                        self.end_row();
                    }
                    data = &data[i + 1..];
                }
                None => {
                    self.part(data);
                    data = &[];
                }
            }
        }
    }

    fn part(&mut self, piece: &[u8]) {
        for (k, &b) in piece.iter().take(2).enumerate() {
            if let Some(h) = self.head.get_mut(self.pending as usize + k) {
                *h = b;
            }
        }
        self.hasher.update(piece);
        self.pending += piece.len() as u64;
    }

    fn end_row(&mut self) {
        let h = self.hasher.finish_row();
        let len = std::mem::take(&mut self.pending);
        if len == 2 && &self.head == b"\\." {
            self.ended = true;
        } else {
            self.set.add_hash(&h, len);
        }
    }

    /// The rows seen; an unterminated last row counts as a row.
    pub fn finish(mut self) -> RowSet {
        if self.pending > 0 && !self.ended {
            self.end_row();
        }
        self.set
    }
}

/// A [`RowSplitter`] for an algorithm chosen at run time (the one a manifest names):
/// one dispatch per piece of input, the splitting itself the same generic code.
pub enum Rows {
    Sha256(RowSplitter<Sha256>),
    Blake3(Box<RowSplitter<blake3::Hasher>>),
}

impl Rows {
    pub fn new(algorithm: DigestAlgorithm) -> Rows {
        match algorithm {
            DigestAlgorithm::Sha256Sum => Rows::Sha256(RowSplitter::default()),
            DigestAlgorithm::Blake3Sum => Rows::Blake3(Box::default()),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        match self {
            Rows::Sha256(s) => s.feed(data),
            Rows::Blake3(s) => s.feed(data),
        }
    }

    /// The rows seen (see [`RowSplitter::finish`]).
    pub fn finish(self) -> RowSet {
        match self {
            Rows::Sha256(s) => s.finish(),
            Rows::Blake3(s) => s.finish(),
        }
    }
}

/// One table's data as the archive holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDigest {
    pub schema: String,
    pub name: String,
    /// The columns of the archive's COPY statement, in its order (generated columns
    /// are not dumped).
    pub columns: Vec<String>,
    pub rows: u64,
    /// Bytes of COPY text, newlines included.
    pub bytes: u64,
    /// [`RowSet`] sum: 64 lowercase hex digits, of the content's algorithm.
    pub digest: String,
}

impl TableDigest {
    pub fn label(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// What differs between the recorded digest (`self`) and `other`, or `None`.
    pub fn differences(&self, other: &TableDigest) -> Option<String> {
        let mut d = Vec::new();
        if self.rows != other.rows {
            d.push(format!("rows {} recorded, {} found", self.rows, other.rows));
        }
        if self.bytes != other.bytes {
            d.push(format!(
                "bytes {} recorded, {} found",
                self.bytes, other.bytes
            ));
        }
        if self.digest != other.digest {
            d.push(format!(
                "digest {} recorded, {} found",
                self.digest, other.digest
            ));
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

/// What reading an archive found.
#[derive(Debug, Clone, PartialEq)]
pub struct Archive {
    /// `major.minor.revision` of the archive format.
    pub version: String,
    /// How the rows were hashed.
    pub algorithm: DigestAlgorithm,
    /// The dump's client encoding (its ENCODING entry), e.g. `UTF8`.
    pub encoding: Option<String>,
    /// Every TABLE DATA entry in TOC order, with the digest of its data block.
    pub tables: Vec<TableDigest>,
}

struct Reader<R> {
    r: R,
    int_size: usize,
    pos: u64,
}

impl<R: BufRead> Reader<R> {
    fn fill(&mut self, what: &str) -> Result<&[u8]> {
        let buf = self
            .r
            .fill_buf()
            .with_context(|| format!("reading the archive ({what})"))?;
        if buf.is_empty() {
            bail!("the archive ends at byte {} inside {what}", self.pos);
        }
        Ok(buf)
    }

    fn consume(&mut self, n: usize) {
        self.r.consume(n);
        self.pos += n as u64;
    }

    fn byte(&mut self, what: &str) -> Result<u8> {
        let b = self.fill(what)?[0];
        self.consume(1);
        Ok(b)
    }

    /// A byte, or `None` at a clean end of input.
    fn byte_or_end(&mut self) -> Result<Option<u8>> {
        let buf = self.r.fill_buf().context("reading the archive")?;
        match buf.first() {
            None => Ok(None),
            Some(&b) => {
                self.consume(1);
                Ok(Some(b))
            }
        }
    }

    fn int(&mut self, what: &str) -> Result<i64> {
        let sign = self.byte(what)?;
        let mut v: u64 = 0;
        for i in 0..self.int_size {
            v |= u64::from(self.byte(what)?) << (8 * i);
        }
        let v =
            i64::try_from(v).map_err(|_| anyhow!("{what} at byte {} is out of range", self.pos))?;
        Ok(if sign == 0 { v } else { -v })
    }

    /// A length-prefixed string, kept when at most `max` bytes; `None` for NULL.
    fn string(&mut self, what: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let len = self.int(what)?;
        if len < 0 {
            return Ok(None);
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > max {
            bail!(
                "{what} at byte {} is {len} bytes long, more than the {max} a dump would hold",
                self.pos
            );
        }
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let buf = self.fill(what)?;
            let n = buf.len().min(len - out.len());
            out.extend_from_slice(&buf[..n]);
            self.consume(n);
        }
        Ok(Some(out))
    }

    fn text(&mut self, what: &str, max: usize) -> Result<Option<String>> {
        Ok(self
            .string(what, max)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Skip `n` bytes, handing them to `sink`.
    fn pass(&mut self, mut n: u64, what: &str, mut sink: impl FnMut(&[u8])) -> Result<()> {
        while n > 0 {
            let buf = self.fill(what)?;
            let k = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            sink(&buf[..k]);
            self.consume(k);
            n -= k as u64;
        }
        Ok(())
    }

    fn skip_string(&mut self, what: &str) -> Result<()> {
        let len = self.int(what)?;
        if len > 0 {
            self.pass(len as u64, what, |_| {})?;
        }
        Ok(())
    }
}

/// One entry of the archive's table of contents, as much of it as restores and
/// digests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    /// The dump id (what `pg_restore --use-list` selects by).
    pub id: i64,
    /// What the entry is: `TABLE`, `TABLE DATA`, `INDEX`, `FK CONSTRAINT`, ...
    pub desc: String,
    pub namespace: String,
    /// The object's name (`table constraint` for constraints, triggers, defaults,
    /// policies and rules; `name(args)` for functions).
    pub tag: String,
    /// Dump ids this entry depends on.
    pub deps: Vec<i64>,
    /// The COPY statement of a `TABLE DATA` entry.
    pub copy: Option<String>,
}

impl TocEntry {
    pub fn label(&self) -> String {
        if self.namespace.is_empty() {
            self.tag.clone()
        } else {
            format!("{}.{}", self.namespace, self.tag)
        }
    }
}

/// An archive's header facts and table of contents, in archive order.
#[derive(Debug, Clone, PartialEq)]
pub struct Toc {
    /// `major.minor.revision` of the archive format.
    pub version: String,
    /// The dump's client encoding (its ENCODING entry), e.g. `UTF8`.
    pub encoding: Option<String>,
    pub entries: Vec<TocEntry>,
}

/// Entries that belong to the one table whose name begins their tag (`table` or
/// `table name`) and on which they depend.
const OF_ITS_TABLE: &[&str] = &[
    "CONSTRAINT",
    "CHECK CONSTRAINT",
    "FK CONSTRAINT",
    "TRIGGER",
    "DEFAULT",
    "POLICY",
    "ROW SECURITY",
    "RULE",
];

/// Entries that belong to whatever they depend on: a table's data, indexes,
/// statistics and identity sequence; a comment, grant or label on it; a sequence's
/// ownership and value.
const ATTACHED: &[&str] = &[
    "TABLE DATA",
    "INDEX",
    "INDEX ATTACH",
    "STATISTICS",
    "STATISTICS DATA",
    "SEQUENCE",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "COMMENT",
    "ACL",
    "SECURITY LABEL",
];

/// Relations: what a restore of some tables never creates or drops unless named.
pub const RELATIONS: &[&str] = &["TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"];

impl Toc {
    /// Entries by dump id.
    fn by_id(&self) -> std::collections::HashMap<i64, &TocEntry> {
        self.entries.iter().map(|e| (e.id, e)).collect()
    }

    /// The `TABLE` entry `spec` names: `schema.name`, or a bare `name` found in one
    /// schema only. The error says what the archive has instead.
    pub fn find_table(&self, spec: &str) -> std::result::Result<&TocEntry, String> {
        let tables = || self.entries.iter().filter(|e| e.desc == "TABLE");
        if let Some(t) = tables().find(|t| t.label() == spec) {
            return Ok(t);
        }
        let named: Vec<&TocEntry> = tables().filter(|t| t.tag == spec).collect();
        match named[..] {
            [one] => Ok(one),
            [] => Err(format!(
                "the backup has no table {spec:?} (restore --list shows its tables)"
            )),
            _ => Err(format!(
                "{spec:?} names a table in several schemas ({}): give schema.name",
                named
                    .iter()
                    .map(|t| t.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The tables `ids` with everything that belongs to them: data, indexes,
    /// constraints (their own foreign keys included, never another table's that points
    /// at them), triggers, defaults, policies, rules, identity sequences, comments and
    /// grants, and their partitions (each `TABLE ATTACH`'s table, with its own parts, to
    /// any depth; a partition named alone is attached again, and its copies of the
    /// parent's indexes and keys are left to the attachment). Nothing that belongs to
    /// another relation.
    pub fn with_parts(&self, ids: &[i64]) -> std::collections::BTreeSet<i64> {
        let by_id = self.by_id();
        let mut chosen: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        let is_relation = |id: &i64| {
            by_id
                .get(id)
                .is_some_and(|e| RELATIONS.contains(&e.desc.as_str()))
        };
        loop {
            let before = chosen.len();
            let tables: Vec<&TocEntry> = chosen
                .iter()
                .filter(|id| is_relation(id))
                .filter_map(|id| by_id.get(id).copied())
                .collect();
            for e in &self.entries {
                if chosen.contains(&e.id) {
                    continue;
                }
                if e.desc == "TABLE ATTACH" {
                    // A partition (the table the attachment is named after) comes with a
                    // chosen parent; a chosen partition is attached again, its parent
                    // being what it needs.
                    let leaf = e.deps.iter().copied().find(|d| {
                        by_id.get(d).is_some_and(|t| {
                            t.desc == "TABLE" && t.tag == e.tag && t.namespace == e.namespace
                        })
                    });
                    if e.deps.iter().any(|d| chosen.contains(d)) {
                        chosen.insert(e.id);
                        chosen.extend(leaf);
                    }
                    continue;
                }
                // A partition's copy of its parent's index or key (it depends on the
                // parent's): made by the attachment itself when the parent is not
                // restored with it, so not restored on its own then.
                let copy_of = |d: &i64| {
                    !chosen.contains(d)
                        && by_id
                            .get(d)
                            .is_some_and(|x| x.desc == "INDEX" || x.desc == "CONSTRAINT")
                };
                if matches!(e.desc.as_str(), "INDEX" | "CONSTRAINT") && e.deps.iter().any(copy_of) {
                    continue;
                }
                let belongs = if OF_ITS_TABLE.contains(&e.desc.as_str()) {
                    tables.iter().any(|t| {
                        e.namespace == t.namespace
                            && e.deps.contains(&t.id)
                            && (e.tag == t.tag
                                || e.tag
                                    .strip_prefix(t.tag.as_str())
                                    .is_some_and(|rest| rest.starts_with(' ')))
                    })
                } else {
                    ATTACHED.contains(&e.desc.as_str())
                        && e.deps.iter().any(|d| chosen.contains(d))
                        && !e.deps.iter().any(|d| !chosen.contains(d) && is_relation(d))
                };
                if belongs {
                    chosen.insert(e.id);
                }
            }
            if chosen.len() == before {
                return chosen;
            }
        }
    }

    /// What the entries `chosen` need and do not include, nearest first: the schemas,
    /// extensions, types, functions, sequences and other relations they depend on,
    /// directly or through each other.
    pub fn prerequisites(&self, chosen: &std::collections::BTreeSet<i64>) -> Vec<&TocEntry> {
        let by_id = self.by_id();
        let mut seen = chosen.clone();
        let mut queue: std::collections::VecDeque<i64> = chosen
            .iter()
            .filter_map(|id| by_id.get(id))
            .flat_map(|e| e.deps.iter().copied())
            .collect();
        let mut out = Vec::new();
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(&e) = by_id.get(&id) {
                queue.extend(e.deps.iter().copied());
                out.push(e);
            }
        }
        out
    }

    /// `pg_restore --use-list` text selecting the entries `ids`, in archive order (a
    /// streamed archive cannot be read out of order).
    pub fn use_list(&self, ids: &std::collections::BTreeSet<i64>) -> String {
        let mut out = String::new();
        for e in self.entries.iter().filter(|e| ids.contains(&e.id)) {
            // What follows `;` is a comment to pg_restore; names from the archive lose
            // their control characters so that none can start a line of its own.
            let what = format!("{} {}", e.desc, e.label()).replace(char::is_control, " ");
            out.push_str(&format!("{}; {what}\n", e.id));
        }
        out
    }
}

/// What the names, statements and dependencies kept from one TOC may add up to: far
/// beyond any real schema's, and a bound on what a hostile archive can make us hold.
const MAX_TOC_BYTES: usize = 256 << 20;

/// Read the header and the table of contents of a custom-format archive from `r`,
/// stopping where the data blocks begin (the rest of `r` is not read).
pub fn read_toc<R: BufRead>(r: R) -> Result<Toc> {
    toc_of(&mut Reader {
        r,
        int_size: 4,
        pos: 0,
    })
}

/// The header and the TOC, leaving `rd` where the data blocks begin.
fn toc_of<R: BufRead>(rd: &mut Reader<R>) -> Result<Toc> {
    let mut magic = [0u8; 5];
    for b in magic.iter_mut() {
        *b = rd.byte("the header")?;
    }
    if &magic != b"PGDMP" {
        bail!("not a pg_dump custom-format archive (no PGDMP magic)");
    }
    let (vmaj, vmin, vrev) = (
        rd.byte("the header")?,
        rd.byte("the header")?,
        rd.byte("the header")?,
    );
    if (vmaj, vmin) < MIN_VERSION || (vmaj, vmin) > MAX_VERSION {
        bail!(
            "archive format {vmaj}.{vmin} is not one this reader knows ({}.{} to {}.{})",
            MIN_VERSION.0,
            MIN_VERSION.1,
            MAX_VERSION.0,
            MAX_VERSION.1
        );
    }
    let int_size = rd.byte("the header")? as usize;
    let off_size = rd.byte("the header")? as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        bail!("archive header: integer size {int_size} or offset size {off_size} out of range");
    }
    rd.int_size = int_size;
    if rd.byte("the header")? != 1 {
        bail!("archive header: not the custom format");
    }
    if vmin >= 15 {
        if rd.byte("the header's compression")? != 0 {
            bail!("the archive's data is compressed by pg_dump itself; digests need --compress=0");
        }
    } else if rd.int("the header's compression")? != 0 {
        bail!("the archive's data is compressed by pg_dump itself; digests need --compress=0");
    }
    for _ in 0..7 {
        rd.int("the header's creation time")?;
    }
    for _ in 0..3 {
        rd.skip_string("the header's names")?;
    }

    let count = rd.int("the TOC count")?;
    if count < 0 {
        bail!("the archive's TOC count is negative");
    }
    let mut encoding = None;
    let mut entries = Vec::new();
    let mut kept = 0usize;
    let mut tables = 0usize;
    for _ in 0..count {
        let what = "a TOC entry";
        let id = rd.int(what)?;
        rd.int(what)?; // had dumper
        rd.skip_string(what)?; // table oid
        rd.skip_string(what)?; // oid
        let tag = rd.text(what, MAX_NAME)?.unwrap_or_default();
        let desc = rd.text(what, MAX_NAME)?.unwrap_or_default();
        rd.int(what)?; // section
        if desc == "ENCODING" {
            let defn = rd.text(what, MAX_NAME)?.unwrap_or_default();
            encoding = defn.split('\'').nth(1).map(str::to_string);
        } else {
            rd.skip_string(what)?; // definition
        }
        rd.skip_string(what)?; // drop statement
        let copy = rd.text(what, MAX_COPY_STMT)?;
        let namespace = rd.text(what, MAX_NAME)?.unwrap_or_default();
        rd.skip_string(what)?; // tablespace
        if vmin >= 14 {
            rd.skip_string(what)?; // table access method
        }
        if vmin >= 16 {
            rd.int(what)?; // relkind
        }
        rd.skip_string(what)?; // owner
        rd.skip_string(what)?; // with oids
        let mut deps = Vec::new();
        // Dependencies, ending in a NULL string; each a dump id in decimal.
        while let Some(dep) = rd.text(what, 32)? {
            let dep = dep
                .trim()
                .parse::<i64>()
                .map_err(|_| anyhow!("a dependency of TOC entry {id} is not a dump id: {dep:?}"))?;
            deps.push(dep);
        }
        rd.byte(what)?; // offset flag
        for _ in 0..off_size {
            rd.byte(what)?;
        }
        let copy = if desc == "TABLE DATA" {
            tables += 1;
            if tables > MAX_TABLES {
                bail!("the archive has more than {MAX_TABLES} tables");
            }
            copy.filter(|c| !c.is_empty())
        } else {
            None
        };
        kept += 64
            + tag.len()
            + desc.len()
            + namespace.len()
            + 8 * deps.len()
            + copy.as_ref().map_or(0, String::len);
        if kept > MAX_TOC_BYTES {
            bail!("the archive's table of contents holds more than {MAX_TOC_BYTES} bytes of names");
        }
        entries.push(TocEntry {
            id,
            desc,
            namespace,
            tag,
            deps,
            copy,
        });
    }
    Ok(Toc {
        version: format!("{vmaj}.{vmin}.{vrev}"),
        encoding,
        entries,
    })
}

/// Read a whole custom-format archive from `r` and digest every table's rows, each
/// row hashed with `algorithm`.
pub fn read<R: BufRead>(r: R, algorithm: DigestAlgorithm) -> Result<Archive> {
    let mut rd = Reader {
        r,
        int_size: 4,
        pos: 0,
    };
    let toc = toc_of(&mut rd)?;
    // (dump id, table) for every TABLE DATA entry with a COPY statement, with its
    // running digest.
    let mut tables: Vec<(i64, TableDigest, Option<RowSet>)> = Vec::new();
    for e in toc.entries {
        let Some(copy) = e.copy else { continue };
        let columns = copy_columns(&copy)
            .with_context(|| format!("the COPY statement of table {}.{}", e.namespace, e.tag))?;
        tables.push((
            e.id,
            TableDigest {
                schema: e.namespace,
                name: e.tag,
                columns,
                rows: 0,
                bytes: 0,
                digest: String::new(),
            },
            None,
        ));
    }
    tables.sort_by_key(|t| t.0);
    let index = |id: i64, tables: &[(i64, TableDigest, Option<RowSet>)]| {
        tables.binary_search_by_key(&id, |t| t.0).ok()
    };

    while let Some(kind) = rd.byte_or_end()? {
        let id = rd.int("a data block's id")?;
        match kind {
            BLK_DATA => {
                let at = index(id, &tables);
                let mut rows = Rows::new(algorithm);
                loop {
                    let len = rd.int("a data chunk's length")?;
                    if len == 0 {
                        break;
                    }
                    if len < 0 {
                        bail!("a data chunk of table entry {id} has a negative length");
                    }
                    rd.pass(len as u64, "a data chunk", |b| {
                        if at.is_some() {
                            rows.feed(b)
                        }
                    })?;
                }
                if let Some(i) = at {
                    let set = rows.finish();
                    let acc = tables[i].2.get_or_insert_with(RowSet::default);
                    // A second block for one entry (a hostile archive) adds its rows.
                    merge(acc, &set);
                }
            }
            BLK_BLOBS => loop {
                let oid = rd.int("a large object's oid")?;
                if oid == 0 {
                    break;
                }
                loop {
                    let len = rd.int("a large object chunk's length")?;
                    if len == 0 {
                        break;
                    }
                    if len < 0 {
                        bail!("a large object chunk has a negative length");
                    }
                    rd.pass(len as u64, "a large object chunk", |_| {})?;
                }
            },
            other => bail!("unknown data block type {other} at byte {}", rd.pos),
        }
    }

    let mut out = Vec::with_capacity(tables.len());
    for (_, mut t, set) in tables {
        // pg_dump writes a data block for every TABLE DATA entry, an empty table's too:
        // one missing means the archive was cut short between blocks.
        let Some(set) = set else {
            bail!("the archive holds no data block for table {}", t.label());
        };
        t.rows = set.rows;
        t.bytes = set.bytes;
        t.digest = set.hex();
        out.push(t);
    }
    out.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    Ok(Archive {
        version: toc.version,
        algorithm,
        encoding: toc.encoding,
        tables: out,
    })
}

fn merge(acc: &mut RowSet, other: &RowSet) {
    let mut carry = 0u64;
    for (a, b) in acc.sum.iter_mut().zip(other.sum) {
        let (s1, c1) = a.overflowing_add(b);
        let (s2, c2) = s1.overflowing_add(carry);
        *a = s2;
        carry = u64::from(c1) + u64::from(c2);
    }
    acc.rows += other.rows;
    acc.bytes += other.bytes;
}

/// The column names of pg_dump's `COPY schema.table (a, "B c") FROM stdin;`, unquoted.
pub fn copy_columns(stmt: &str) -> Result<Vec<String>> {
    let s = stmt
        .strip_prefix("COPY ")
        .ok_or_else(|| anyhow!("does not start with COPY"))?;
    // The qualified table name: identifiers and dots, up to a space outside quotes.
    let mut in_quotes = false;
    let mut end = None;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ' ' if !in_quotes => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let rest = &s[end.ok_or_else(|| anyhow!("has no table name"))? + 1..];
    let Some(list) = rest.strip_prefix('(') else {
        // A table without columns: `COPY t  FROM stdin;`.
        return Ok(Vec::new());
    };
    let mut cols = Vec::new();
    let mut cur = String::new();
    let mut it = list.chars().peekable();
    loop {
        let c = it
            .next()
            .ok_or_else(|| anyhow!("has an unterminated column list"))?;
        match c {
            '"' => loop {
                match it.next() {
                    Some('"') if it.peek() == Some(&'"') => {
                        it.next();
                        cur.push('"');
                    }
                    Some('"') => break,
                    Some(c) => cur.push(c),
                    None => bail!("has an unterminated quoted column name"),
                }
            },
            ',' => {
                cols.push(std::mem::take(&mut cur));
                while it.peek() == Some(&' ') {
                    it.next();
                }
            }
            ')' => {
                cols.push(cur);
                return Ok(cols);
            }
            c => cur.push(c),
        }
    }
}

/// A blocking `BufRead` over chunks arriving on a channel: the archive reader runs on
/// its own thread, fed the same `Bytes` the byte path carries (no copy).
pub struct ChannelBuf {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelBuf {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ChannelBuf {
        ChannelBuf {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelBuf {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelBuf {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let _ = self.current.split_to(n.min(self.current.len()));
    }
}

/// Start reading an archive on its own thread, hashing rows with `algorithm`; send it
/// the archive's bytes in order, then drop the sender and join the handle. A reader that fails stops receiving (the
/// sender sees a closed channel) and returns its error. The handle also yields the
/// CPU seconds the thread used (what digesting costs).
pub fn spawn_reader(
    algorithm: DigestAlgorithm,
) -> (
    tokio::sync::mpsc::Sender<Bytes>,
    std::thread::JoinHandle<(Result<Archive>, f64)>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let handle = std::thread::Builder::new()
        .name("archive-digest".into())
        .spawn(move || {
            let r = read(ChannelBuf::new(rx), algorithm);
            (r, thread_cpu_seconds())
        })
        .expect("spawning the archive reader thread");
    (tx, handle)
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of<H: RowHash>(rows: &[&[u8]]) -> RowSet {
        let mut s = RowSet::default();
        for r in rows {
            s.add_row::<H>(r);
        }
        s
    }

    fn the_digest_ignores_order_and_counts_duplicates_with<H: RowHash>() {
        let a = set_of::<H>(&[b"1\tx", b"2\ty", b"3\tz"]);
        let b = set_of::<H>(&[b"3\tz", b"1\tx", b"2\ty"]);
        assert_eq!(a.hex(), b.hex());
        let dup = set_of::<H>(&[b"1\tx", b"1\tx"]);
        let none = set_of::<H>(&[]);
        assert_ne!(dup.hex(), none.hex(), "equal rows must not cancel");
        assert_ne!(set_of::<H>(&[b"1\tx"]).hex(), set_of::<H>(&[b"1\ty"]).hex());
        assert_eq!(none.hex(), "0".repeat(64));
        assert_eq!(a.rows, 3);
        assert_eq!(a.bytes, 12);
    }

    #[test]
    fn the_digest_ignores_order_and_counts_duplicates() {
        the_digest_ignores_order_and_counts_duplicates_with::<Sha256>();
        the_digest_ignores_order_and_counts_duplicates_with::<blake3::Hasher>();
    }

    /// The row hashes themselves: the published test values of SHA-256 and BLAKE3 for
    /// the empty input and "abc", whole and in pieces, and a row longer than BLAKE3's
    /// 1 KiB chunks fed in pieces of every size.
    #[test]
    fn row_hashes_are_the_standard_ones() {
        fn check<H: RowHash>(empty: &str, abc: &str) {
            let hex32 = |h: [u8; 32]| -> String { h.iter().map(|b| format!("{b:02x}")).collect() };
            // One hasher for two rows: finish_row starts afresh.
            let in_pieces = |row: &[u8], size: usize| {
                let mut h = H::default();
                h.update(b"another ");
                h.update(b"row");
                h.finish_row();
                for p in row.chunks(size) {
                    h.update(p);
                }
                h.finish_row()
            };
            assert_eq!(hex32(H::once(b"")), empty);
            assert_eq!(hex32(H::once(b"abc")), abc);
            assert_eq!(hex32(in_pieces(b"abc", 1)), abc);
            let long: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
            for size in [1, 7, 64, 1000, 1024, 1025, 4096, 5000] {
                assert_eq!(in_pieces(&long, size), H::once(&long), "pieces of {size}");
            }
        }
        check::<Sha256>(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        );
        check::<blake3::Hasher>(
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
        );
    }

    #[test]
    fn algorithms_are_chosen_by_their_exact_names_only() {
        for alg in DigestAlgorithm::ALL {
            assert_eq!(DigestAlgorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(DigestAlgorithm::CURRENT.name(), "blake3-sum");
        assert_eq!(
            DigestAlgorithm::from_name("sha256-sum"),
            Some(DigestAlgorithm::Sha256Sum)
        );
        for other in [
            "",
            "SHA256-SUM",
            "blake3-sum ",
            "blake3",
            "sha256",
            "md5-sum",
        ] {
            assert_eq!(DigestAlgorithm::from_name(other), None, "{other:?}");
        }
    }

    #[test]
    fn sums_carry_across_limbs() {
        let mut s = RowSet::default();
        s.add_hash(&[0xff; 32], 0);
        s.add_hash(
            &{
                let mut one = [0u8; 32];
                one[31] = 1;
                one
            },
            0,
        );
        assert_eq!(s.hex(), "0".repeat(64), "2^256 - 1 + 1 wraps to 0");
    }

    #[test]
    fn rows_split_anywhere_give_the_same_digest() {
        rows_split_anywhere_give_the_same_digest_with::<Sha256>();
        rows_split_anywhere_give_the_same_digest_with::<blake3::Hasher>();
        // Through the run-time choice too, and the two algorithms differ.
        let text = b"1\tone\n2\ttwo\n";
        let [sha, b3] = DigestAlgorithm::ALL.map(|alg| {
            let mut s = Rows::new(alg);
            s.feed(text);
            s.finish()
        });
        assert_eq!(sha, {
            let mut s = RowSplitter::<Sha256>::default();
            s.feed(text);
            s.finish()
        });
        assert_eq!(b3, set_of::<blake3::Hasher>(&[b"1\tone", b"2\ttwo"]));
        assert_eq!((sha.rows, sha.bytes), (b3.rows, b3.bytes));
        assert_ne!(sha.hex(), b3.hex());
    }

    fn rows_split_anywhere_give_the_same_digest_with<H: RowHash>() {
        let text = b"1\tone\n2\ttwo\\nlines\n\n3\t\\N\n\\.\n\n\nnot a row\n";
        let whole = {
            let mut s = RowSplitter::<H>::default();
            s.feed(text);
            s.finish()
        };
        assert_eq!(
            whole.rows, 4,
            "an empty line is a row, what follows \\. is not"
        );
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut s = RowSplitter::<H>::default();
                s.feed(&text[..cut]);
                s.feed(&text[cut..cut2]);
                s.feed(&text[cut2..]);
                assert_eq!(s.finish(), whole, "cut at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn copy_statements_give_their_columns() {
        assert_eq!(
            copy_columns(
                "COPY public.notes (id, title_encrypted, \"Weird \"\"col\"\", x\") FROM stdin;\n"
            )
            .unwrap(),
            vec!["id", "title_encrypted", "Weird \"col\", x"]
        );
        assert_eq!(
            copy_columns("COPY \"my schema\".\"t (1)\" (a) FROM stdin;\n").unwrap(),
            vec!["a"]
        );
        assert!(copy_columns("COPY public.empty  FROM stdin;\n")
            .unwrap()
            .is_empty());
        assert!(copy_columns("DROP TABLE x").is_err());
        assert!(copy_columns("COPY t (a, b").is_err());
    }

    /// Archives made by pg_dump 15 (format 1.14) and 18 (1.16) of the same database
    /// (`tests/fixtures/awkward.sql`); the expected figures were computed from
    /// `COPY ... TO STDOUT` by an independent implementation (Python's hashlib for
    /// sha256-sum, the `blake3` package of PyPI for blake3-sum), the COPY rows being
    /// those of pg_restore's script of the pg15 archive.
    #[test]
    fn real_archives_of_pg_dump_15_and_18() {
        let digests = |alg: DigestAlgorithm| match alg {
            DigestAlgorithm::Sha256Sum => [
                "2b41d62e4d5bf58f3862c80ad967a1801bd431b485fa78c3c3aae9c3bbcd4d64",
                "67f8300829e760a8b2916f3dd59fe0db86fe7378bfcce481eeaaca5fca31399d",
                "0000000000000000000000000000000000000000000000000000000000000000",
                "c761888531f8382935f7e99132df72484f5c83c8c9372699492b3236f0a570aa",
            ],
            DigestAlgorithm::Blake3Sum => [
                "8694d49773444c368cdf66d1778b0f91dded10b61a503a2064fc09edf3df331d",
                "0d1d1e0c6e5defc4bd398690fe80d9576eaa9bd8fcf8b5983d5f3ac87a5194ae",
                "0000000000000000000000000000000000000000000000000000000000000000",
                "5e269373ebf3434d40809bd46db9929337964b935b82256f99352795c83e64c4",
            ],
        };
        let tables = [
            ("Other Schema", "Mixed Case", 3, 12),
            ("public", "awkward", 6, 695),
            ("public", "empty_table", 0, 0),
            ("public", "no_columns", 2, 2),
        ];
        for (bytes, version) in [
            (
                &include_bytes!("../tests/fixtures/awkward.pg15.dump")[..],
                "1.14.0",
            ),
            (
                &include_bytes!("../tests/fixtures/awkward.pg18.dump")[..],
                "1.16.0",
            ),
        ] {
            for alg in DigestAlgorithm::ALL {
                let a = read(bytes, alg).unwrap();
                assert_eq!(a.version, version);
                assert_eq!(a.algorithm, alg);
                assert_eq!(a.encoding.as_deref(), Some("UTF8"));
                let got: Vec<_> = a
                    .tables
                    .iter()
                    .map(|t| {
                        (
                            t.schema.as_str(),
                            t.name.as_str(),
                            t.rows,
                            t.bytes,
                            t.digest.as_str(),
                        )
                    })
                    .collect();
                let expected: Vec<_> = tables
                    .iter()
                    .zip(digests(alg))
                    .map(|(&(schema, name, rows, bytes), d)| (schema, name, rows, bytes, d))
                    .collect();
                assert_eq!(got, expected, "format {version}, {}", alg.name());
                let awkward = a.tables.iter().find(|t| t.name == "awkward").unwrap();
                assert_eq!(
                    awkward.columns,
                    ["id", "txt", "bin", "doc", "at", "f8", "f4", "num", "span", "day"],
                    "the generated column is not dumped"
                );
                assert_eq!(a.tables[0].columns, ["Col A", "b\"q"]);
                assert!(a.tables[3].columns.is_empty());
                // One changed byte in a row changes that table's digest only.
                let at = bytes.windows(9).position(|w| w == b"tab\\there").unwrap();
                let mut edited = bytes.to_vec();
                edited[at] = b'T';
                let b = read(&edited[..], alg).unwrap();
                for (x, y) in a.tables.iter().zip(&b.tables) {
                    assert_eq!(
                        x.name == "awkward",
                        x.differences(y).is_some(),
                        "{}",
                        x.name
                    );
                }
            }
            // Every truncation is an error, never a panic or a short success.
            for cut in 0..bytes.len() {
                assert!(
                    read(&bytes[..cut], DigestAlgorithm::CURRENT).is_err(),
                    "cut at {cut} of {version}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read(&b""[..], DigestAlgorithm::CURRENT).is_err());
        assert!(read(&b"PGDMP"[..], DigestAlgorithm::CURRENT).is_err());
        assert!(read(
            &b"PGDMP\x01\x0e\x00\x04\x08\x01"[..],
            DigestAlgorithm::CURRENT
        )
        .is_err());
        // A string length of 2^31 - 1 is refused, not allocated.
        let mut a = b"PGDMP\x01\x0e\x00\x04\x08\x01\x00\x00\x00\x00\x00".to_vec();
        for _ in 0..7 {
            a.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        a.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0x7f]);
        let e = read(&a[..], DigestAlgorithm::CURRENT).unwrap_err();
        assert!(format!("{e:#}").contains("ends"), "{e:#}");
    }
}

#[cfg(test)]
mod toc_tests {
    use super::*;

    const FIXTURES: [&[u8]; 2] = [
        include_bytes!("../tests/fixtures/awkward.pg15.dump"),
        include_bytes!("../tests/fixtures/awkward.pg18.dump"),
    ];

    fn entry(id: i64, desc: &str, ns: &str, tag: &str, deps: &[i64]) -> TocEntry {
        TocEntry {
            id,
            desc: desc.into(),
            namespace: ns.into(),
            tag: tag.into(),
            deps: deps.to_vec(),
            copy: None,
        }
    }

    #[test]
    fn the_toc_of_pg_dump_15_and_18_archives() {
        for bytes in FIXTURES {
            let toc = read_toc(bytes).unwrap();
            let mixed = toc.find_table("Mixed Case").unwrap();
            assert_eq!(mixed.label(), "Other Schema.Mixed Case");
            let schema = toc
                .entries
                .iter()
                .find(|e| e.desc == "SCHEMA" && e.tag == "Other Schema")
                .unwrap();
            assert_eq!(mixed.deps, vec![schema.id], "dependencies are read");
            let awkward = toc.find_table("public.awkward").unwrap();
            let parts = toc.with_parts(&[awkward.id]);
            let descs: Vec<&str> = toc
                .entries
                .iter()
                .filter(|e| parts.contains(&e.id))
                .map(|e| e.desc.as_str())
                .collect();
            assert!(
                descs.contains(&"TABLE") && descs.contains(&"TABLE DATA"),
                "{descs:?}"
            );
            assert!(descs.contains(&"CONSTRAINT"), "its primary key: {descs:?}");
            assert!(
                toc.entries
                    .iter()
                    .filter(|e| parts.contains(&e.id))
                    .all(|e| e.tag.starts_with("awkward")),
                "nothing of another table"
            );
            // The list selects by id, in archive order.
            let list = toc.use_list(&parts);
            let ids: Vec<i64> = list
                .lines()
                .map(|l| l.split(';').next().unwrap().parse().unwrap())
                .collect();
            let order: Vec<i64> = toc
                .entries
                .iter()
                .filter(|e| parts.contains(&e.id))
                .map(|e| e.id)
                .collect();
            assert_eq!(ids, order);
            assert!(toc.find_table("no_such").unwrap_err().contains("no table"));
        }
    }

    #[test]
    fn a_table_takes_what_is_its_own_and_nothing_of_its_neighbours() {
        let toc = Toc {
            version: "1.16.0".into(),
            encoding: None,
            entries: vec![
                entry(1, "SCHEMA", "", "app", &[]),
                entry(2, "FUNCTION", "app", "touch()", &[1]),
                entry(10, "TABLE", "app", "notes", &[1]),
                entry(11, "TABLE", "app", "notes_archive", &[1]),
                entry(12, "TABLE", "app", "versions", &[1]),
                entry(13, "SEQUENCE", "app", "notes_n_seq", &[10]),
                entry(20, "TABLE DATA", "app", "notes", &[10]),
                entry(21, "TABLE DATA", "app", "versions", &[12]),
                entry(22, "SEQUENCE SET", "app", "notes_n_seq", &[13]),
                entry(30, "CONSTRAINT", "app", "notes notes_pkey", &[10]),
                entry(
                    31,
                    "CONSTRAINT",
                    "app",
                    "notes_archive notes_archive_pkey",
                    &[11],
                ),
                entry(32, "INDEX", "app", "notes_title", &[10]),
                entry(33, "TRIGGER", "app", "notes touch", &[10, 2]),
                entry(
                    34,
                    "FK CONSTRAINT",
                    "app",
                    "versions versions_note_fkey",
                    &[12, 30, 10],
                ),
                entry(
                    35,
                    "FK CONSTRAINT",
                    "app",
                    "notes notes_archive_fkey",
                    &[10, 31, 11],
                ),
                entry(36, "COMMENT", "app", "INDEX notes_title", &[32]),
                entry(37, "ACL", "app", "TABLE notes", &[10]),
                entry(38, "ACL", "app", "TABLE versions", &[12]),
                entry(39, "COMMENT", "app", "TABLE notes_archive", &[11]),
            ],
        };
        let parts = toc.with_parts(&[10]);
        assert_eq!(
            parts.into_iter().collect::<Vec<_>>(),
            vec![10, 13, 20, 22, 30, 32, 33, 35, 36, 37],
            "its data, identity sequence and value, key, index and its comment, trigger, its \
             own foreign key and grant; not versions' key to it, not notes_archive's key"
        );
        let parts = toc.with_parts(&[10]);
        let needed: Vec<i64> = toc.prerequisites(&parts).iter().map(|e| e.id).collect();
        assert_eq!(
            needed,
            vec![1, 2, 31, 11],
            "schema, trigger function, the referenced table"
        );
        assert_eq!(toc.find_table("notes").unwrap().id, 10);
        assert_eq!(toc.find_table("app.versions").unwrap().id, 12);
    }

    /// As pg_dump 15 lays out a partitioned table (events, two partitions, a primary
    /// key and an index on the parent) beside another table.
    #[test]
    fn a_partitioned_table_takes_its_partitions() {
        let toc = Toc {
            version: "1.14.0".into(),
            encoding: None,
            entries: vec![
                entry(214, "TABLE", "public", "events", &[]),
                entry(215, "TABLE", "public", "events_2026", &[214]),
                entry(216, "TABLE", "public", "events_2027", &[214]),
                entry(217, "TABLE", "public", "other", &[]),
                entry(3208, "TABLE ATTACH", "public", "events_2026", &[215, 214]),
                entry(3209, "TABLE ATTACH", "public", "events_2027", &[216, 214]),
                entry(3365, "TABLE DATA", "public", "events_2026", &[215]),
                entry(3366, "TABLE DATA", "public", "events_2027", &[216]),
                entry(3367, "TABLE DATA", "public", "other", &[217]),
                entry(
                    3212,
                    "CONSTRAINT",
                    "public",
                    "events events_pkey",
                    &[214, 214],
                ),
                entry(
                    3215,
                    "CONSTRAINT",
                    "public",
                    "events_2026 events_2026_pkey",
                    &[3212, 215],
                ),
                entry(3210, "INDEX", "public", "events_at_idx", &[214]),
                entry(3213, "INDEX", "public", "events_2026_at_idx", &[215, 3210]),
                entry(
                    3219,
                    "INDEX ATTACH",
                    "public",
                    "events_2026_at_idx",
                    &[3213, 3210, 215, 214],
                ),
                entry(
                    3220,
                    "INDEX ATTACH",
                    "public",
                    "events_2026_pkey",
                    &[3215, 3212, 215, 214],
                ),
            ],
        };
        let parts = toc.with_parts(&[214]);
        assert_eq!(
            parts.into_iter().collect::<Vec<_>>(),
            vec![214, 215, 216, 3208, 3209, 3210, 3212, 3213, 3215, 3219, 3220, 3365, 3366],
            "the partitions with their data, keys and indexes; not the other table"
        );
        let leaf = toc.with_parts(&[215]);
        assert_eq!(
            leaf.into_iter().collect::<Vec<_>>(),
            vec![215, 3208, 3365],
            "a partition alone: attached again (which makes its copies of the parent's \
             index and key), its parent what it needs, not what it owns"
        );
    }

    #[test]
    fn ambiguous_names_and_hostile_tags() {
        let toc = Toc {
            version: "1.16.0".into(),
            encoding: None,
            entries: vec![
                entry(1, "TABLE", "a", "t", &[]),
                entry(2, "TABLE", "b", "t", &[]),
                entry(3, "TABLE DATA", "b", "t\n1; TABLE a t", &[2]),
            ],
        };
        let e = toc.find_table("t").unwrap_err();
        assert!(e.contains("a.t") && e.contains("b.t"), "{e}");
        assert_eq!(toc.find_table("b.t").unwrap().id, 2);
        let list = toc.use_list(&[2, 3].into_iter().collect());
        assert_eq!(list.lines().count(), 2, "a tag cannot add a line: {list:?}");
        assert!(list.lines().all(|l| !l.starts_with("1;")), "{list:?}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..2048), v in 12u8..17, int_size in 0u8..10) {
            let mut a = b"PGDMP\x01".to_vec();
            a.push(v);
            a.push(0);
            a.push(int_size);
            a.push(8);
            a.push(1);
            a.extend_from_slice(&tail);
            let _ = read(&a[..], DigestAlgorithm::CURRENT);
        }
    }
}
