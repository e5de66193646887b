//! S3 (and S3-compatible servers) as the destination.
//!
//! A backup streams into a multipart upload: the writer cuts the stream into parts of
//! `part_size`, uploads at most `parts_in_flight` of them at once (waiting, and so
//! pushing back on pg_dump, when that many are in flight), and completes the upload
//! only in `finish`. Memory is about `part_size x (parts_in_flight + 1)`. Nothing is
//! staged on local disk. `abort` (also run from `Drop` as a last resort) cancels the
//! in-flight parts and aborts the upload, so no parts are left billed in the bucket.
//! Transient errors are retried by the SDK's standard retry mode (exponential backoff
//! with jitter) up to `max_attempts`.
//!
//! Stores as they are (see docs/s3-stores.md):
//! - request checksums follow `--s3-checksum` ([`Checksum`]): one algorithm on every
//!   upload request, read back by HEAD after the upload like the protections; the
//!   SDK's own choice; or none where the operation does not require one (stores that
//!   refuse the SDK's flexible checksums);
//! - every part but the last is exactly `part_size` bytes (Cloudflare R2 requires
//!   equal parts);
//! - responses are not checksum-validated by the SDK, except small objects read whole
//!   (their single-part checksum): the read side hashes every object against its
//!   manifest's sha256, and the SDK cannot validate a multipart object's part-level
//!   checksum (it would warn on every read);
//! - objects are deleted one at a time (DeleteObject), never by DeleteObjects, so no
//!   store's Content-MD5 requirement for batch deletes applies;
//! - an error names the store's answer (HTTP status, code, message, request id) and,
//!   for a request the store refused, the features the request asked for.

use super::{ObjectInfo, ObjectWriter, Storage, Unfinished};
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::task::JoinSet;

#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Empty or ends with `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    /// Explicit keys; `None` means the AWS default credential chain.
    pub credentials: Option<(String, String)>,
    pub force_path_style: bool,
    pub storage_class: Option<String>,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub max_attempts: u32,
    pub sse: Option<Sse>,
    /// Object Lock: (mode, days).
    pub object_lock: Option<(LockMode, u32)>,
    /// A requested protection the store does not apply is a warning, not a failure.
    pub allow_unapplied_protection: bool,
    /// Request checksums (`--s3-checksum`).
    pub checksum: Checksum,
}

/// Which checksum requests that carry data (parts, small objects) are sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The SDK's defaults: a checksum of its choice (CRC32 today) on every request
    /// that supports one; nothing is named or read back.
    Auto,
    /// Only where an operation requires one (no upload does): for stores that refuse
    /// the SDK's flexible checksums (`x-amz-checksum-*`, `x-amz-sdk-checksum-algorithm`,
    /// aws-chunked trailers). The body is still signed (SigV4's payload hash).
    WhenRequired,
    /// This algorithm on every part and small object, and read back by HEAD after the
    /// upload (a store that did not keep it fails the run, as an unapplied protection).
    Fixed(FixedChecksum),
}

/// The algorithms `--s3-checksum` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixedChecksum {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Checksum {
    /// Today's behaviour and the default: SHA-256 on every part, kept by SeaweedFS,
    /// Garage, moto and AWS alike.
    pub const DEFAULT: Checksum = Checksum::Fixed(FixedChecksum::Sha256);

    /// The names `--s3-checksum` takes.
    pub const NAMES: &'static [&'static str] = &[
        "auto",
        "when-required",
        "crc32",
        "crc32c",
        "crc64nvme",
        "sha1",
        "sha256",
    ];

    pub fn parse(s: &str) -> Option<Checksum> {
        Some(match s.to_ascii_lowercase().as_str() {
            "auto" => Checksum::Auto,
            "when-required" | "when_required" => Checksum::WhenRequired,
            "crc32" => Checksum::Fixed(FixedChecksum::Crc32),
            "crc32c" => Checksum::Fixed(FixedChecksum::Crc32c),
            "crc64nvme" => Checksum::Fixed(FixedChecksum::Crc64Nvme),
            "sha1" => Checksum::Fixed(FixedChecksum::Sha1),
            "sha256" => Checksum::Fixed(FixedChecksum::Sha256),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Checksum::Auto => "auto",
            Checksum::WhenRequired => "when-required",
            Checksum::Fixed(f) => f.name(),
        }
    }

    /// The algorithm named on a small object's PutObject (`auto`: none, the SDK
    /// chooses).
    fn algorithm(self) -> Option<ChecksumAlgorithm> {
        match self {
            Checksum::Fixed(f) => Some(f.algorithm()),
            _ => None,
        }
    }

    /// The algorithm of a multipart upload: named on CreateMultipartUpload, sent with
    /// every part and repeated in CompleteMultipartUpload. A store such as AWS refuses
    /// parts whose checksum the upload did not announce, so `auto` names the SDK's own
    /// default (CRC32) rather than leave the parts to differ from their upload.
    fn multipart(self) -> Option<FixedChecksum> {
        match self {
            Checksum::Fixed(f) => Some(f),
            Checksum::Auto => Some(FixedChecksum::Crc32),
            Checksum::WhenRequired => None,
        }
    }
}

impl FixedChecksum {
    pub fn name(self) -> &'static str {
        match self {
            FixedChecksum::Crc32 => "crc32",
            FixedChecksum::Crc32c => "crc32c",
            FixedChecksum::Crc64Nvme => "crc64nvme",
            FixedChecksum::Sha1 => "sha1",
            FixedChecksum::Sha256 => "sha256",
        }
    }

    fn algorithm(self) -> ChecksumAlgorithm {
        match self {
            FixedChecksum::Crc32 => ChecksumAlgorithm::Crc32,
            FixedChecksum::Crc32c => ChecksumAlgorithm::Crc32C,
            FixedChecksum::Crc64Nvme => ChecksumAlgorithm::Crc64Nvme,
            FixedChecksum::Sha1 => ChecksumAlgorithm::Sha1,
            FixedChecksum::Sha256 => ChecksumAlgorithm::Sha256,
        }
    }

    /// This algorithm's value in a HEAD answer (`x-amz-checksum-*`), if the store
    /// returned one.
    fn in_head(self, h: &aws_sdk_s3::operation::head_object::HeadObjectOutput) -> Option<&str> {
        match self {
            FixedChecksum::Crc32 => h.checksum_crc32(),
            FixedChecksum::Crc32c => h.checksum_crc32_c(),
            FixedChecksum::Crc64Nvme => h.checksum_crc64_nvme(),
            FixedChecksum::Sha1 => h.checksum_sha1(),
            FixedChecksum::Sha256 => h.checksum_sha256(),
        }
    }

    /// A part's checksum as the store answered UploadPart, put on its `CompletedPart`
    /// (CompleteMultipartUpload must repeat them when the upload named an algorithm).
    fn on_part(
        self,
        part: aws_sdk_s3::types::builders::CompletedPartBuilder,
        out: &aws_sdk_s3::operation::upload_part::UploadPartOutput,
    ) -> aws_sdk_s3::types::builders::CompletedPartBuilder {
        let v = |s: Option<&str>| s.map(str::to_string);
        match self {
            FixedChecksum::Crc32 => part.set_checksum_crc32(v(out.checksum_crc32())),
            FixedChecksum::Crc32c => part.set_checksum_crc32_c(v(out.checksum_crc32_c())),
            FixedChecksum::Crc64Nvme => part.set_checksum_crc64_nvme(v(out.checksum_crc64_nvme())),
            FixedChecksum::Sha1 => part.set_checksum_sha1(v(out.checksum_sha1())),
            FixedChecksum::Sha256 => part.set_checksum_sha256(v(out.checksum_sha256())),
        }
    }
}

/// Server-side encryption of stored objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS, optionally with a key id.
    Kms(Option<String>),
    /// SSE-C: the key (base64) and its MD5 (base64), sent with every request.
    Customer { key: String, key_md5: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

pub struct S3Storage {
    client: Client,
    bucket: String,
    where_: String,
    storage_class: Option<StorageClass>,
    part_size: usize,
    parts_in_flight: usize,
    protect: Protect,
}

/// What every write (and, for SSE-C, every read) carries: server-side encryption,
/// Object Lock retention, the request checksum. Conditional writes
/// (`If-None-Match: *`) are always on.
#[derive(Debug, Clone)]
struct Protect {
    sse: Option<Sse>,
    lock: Option<(LockMode, u32)>,
    checksum: Checksum,
    /// `--allow-unapplied-protection`: a protection the store ignores is a warning.
    allow_unapplied: bool,
}

/// Read back by HEAD what the store applied to `key`: every protection asked for must
/// be there (a store that ignores `x-amz-server-side-encryption` or Object Lock
/// answers the PUT with 200 all the same). `Ok` when everything asked for is applied,
/// or when the operator allowed it not to be (then with a warning).
async fn check_applied(client: &Client, bucket: &str, key: &str, protect: &Protect) -> Result<()> {
    let checksum = match protect.checksum {
        Checksum::Fixed(f) => Some(f),
        _ => None,
    };
    if protect.sse.is_none() && protect.lock.is_none() && checksum.is_none() {
        return Ok(());
    }
    let h = client
        .head_object()
        .bucket(bucket)
        .key(key)
        .sse_c(protect.sse_c())
        .set_checksum_mode(checksum.map(|_| ChecksumMode::Enabled))
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot read back what the store applied to {key}: {}",
                refused(&e, protect, Req::Read)
            )
        })?;
    let mut missing = Vec::new();
    let said = |v: Option<&str>| v.map_or("nothing".to_string(), |s| format!("{s:?}"));
    let applied = h.server_side_encryption();
    match &protect.sse {
        None => {}
        Some(Sse::S3) if applied != Some(&ServerSideEncryption::Aes256) => {
            missing.push(format!(
                "SSE-S3 (--sse AES256; the store says {})",
                said(applied.map(|s| s.as_str()))
            ));
        }
        Some(Sse::Kms(_)) if applied != Some(&ServerSideEncryption::AwsKms) => {
            missing.push(format!(
                "SSE-KMS (--sse aws:kms; the store says {})",
                said(applied.map(|s| s.as_str()))
            ));
        }
        Some(Sse::Kms(Some(want)))
            if !h
                .ssekms_key_id()
                .is_some_and(|id| id == want || id.ends_with(&format!("/{want}"))) =>
        {
            missing.push(format!(
                "the KMS key {want} (--sse-kms-key-id; the store says {})",
                said(h.ssekms_key_id())
            ));
        }
        Some(Sse::Customer { .. }) if h.sse_customer_algorithm() != Some("AES256") => {
            missing.push(format!(
                "SSE-C (--sse-c-key; the store says {})",
                said(h.sse_customer_algorithm())
            ));
        }
        Some(_) => {}
    }
    if let Some((mode, days)) = protect.lock {
        let want_mode = match mode {
            LockMode::Governance => ObjectLockMode::Governance,
            LockMode::Compliance => ObjectLockMode::Compliance,
        };
        // Retained at least `days` from the upload, less an hour of clock and upload time.
        let floor = Utc::now().timestamp() + days as i64 * 86400 - 3600;
        let until = h.object_lock_retain_until_date().map(|d| d.secs());
        if h.object_lock_mode() != Some(&want_mode) || until.is_none_or(|u| u < floor) {
            missing.push(format!(
                "Object Lock ({} for {days} days; the store says mode {}, retain until {})",
                want_mode.as_str(),
                said(h.object_lock_mode().map(|m| m.as_str())),
                until.map_or("nothing".into(), |u| {
                    DateTime::<Utc>::from_timestamp(u, 0).map_or(u.to_string(), |d| d.to_rfc3339())
                })
            ));
        }
    }
    if let Some(f) = checksum {
        if f.in_head(&h).is_none_or(str::is_empty) {
            missing.push(format!(
                "the {} checksum (--s3-checksum {}; the store returned none; \
                 --s3-checksum auto or when-required asks for none)",
                f.algorithm().as_str(),
                f.name()
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let what = format!("the store did not apply {} to {key}", missing.join(", "));
    if protect.allow_unapplied {
        tracing::warn!(key, "{what}; kept, as --allow-unapplied-protection says");
        return Ok(());
    }
    Err(anyhow!(
        "{what}; the object is removed (the store cannot give this protection: choose \
         another store or setting, or pass --allow-unapplied-protection to accept it)"
    ))
}

impl Protect {
    /// The features a request of this kind asks the store for, as the flags name them.
    fn asked(&self, req: Req) -> Vec<String> {
        let mut out = Vec::new();
        match &self.sse {
            Some(Sse::Customer { .. }) => out.push("SSE-C (--sse-c-key)".to_string()),
            Some(Sse::S3) if req == Req::Write => out.push("SSE-S3 (--sse AES256)".into()),
            Some(Sse::Kms(_)) if req == Req::Write => out.push("SSE-KMS (--sse aws:kms)".into()),
            _ => {}
        }
        if req == Req::Write {
            if let Some((_, days)) = self.lock {
                out.push(format!("Object Lock (--object-lock-days {days})"));
            }
            match self.checksum {
                Checksum::WhenRequired => {}
                c => out.push(format!(
                    "the SDK's flexible checksums (--s3-checksum {}; when-required sends none)",
                    c.name()
                )),
            }
        }
        out
    }

    fn sse_c(&self) -> Option<(&str, &str)> {
        match &self.sse {
            Some(Sse::Customer { key, key_md5 }) => Some((key, key_md5)),
            _ => None,
        }
    }
    fn server_side(&self) -> Option<ServerSideEncryption> {
        match &self.sse {
            Some(Sse::S3) => Some(ServerSideEncryption::Aes256),
            Some(Sse::Kms(_)) => Some(ServerSideEncryption::AwsKms),
            _ => None,
        }
    }
    fn kms_key(&self) -> Option<String> {
        match &self.sse {
            Some(Sse::Kms(k)) => k.clone(),
            _ => None,
        }
    }
    fn lock(&self) -> (Option<ObjectLockMode>, Option<aws_smithy_types::DateTime>) {
        match self.lock {
            None => (None, None),
            Some((mode, days)) => (
                Some(match mode {
                    LockMode::Governance => ObjectLockMode::Governance,
                    LockMode::Compliance => ObjectLockMode::Compliance,
                }),
                Some(aws_smithy_types::DateTime::from_secs(
                    (chrono::Utc::now() + chrono::Duration::days(days as i64)).timestamp(),
                )),
            ),
        }
    }
}

/// The SSE-C headers (algorithm, key, key MD5) on every request that reads or writes
/// an object's data: one definition for every request kind that takes them.
trait SseC: Sized {
    fn sse_c(self, key: Option<(&str, &str)>) -> Self;
}

macro_rules! sse_c_on {
    ($($builder:ty),* $(,)?) => {$(
        impl SseC for $builder {
            fn sse_c(self, key: Option<(&str, &str)>) -> Self {
                self.set_sse_customer_algorithm(key.map(|_| "AES256".to_string()))
                    .set_sse_customer_key(key.map(|k| k.0.to_string()))
                    .set_sse_customer_key_md5(key.map(|k| k.1.to_string()))
            }
        }
    )*};
}

sse_c_on!(
    aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder,
    aws_sdk_s3::operation::head_object::builders::HeadObjectFluentBuilder,
    aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder,
    aws_sdk_s3::operation::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder,
    aws_sdk_s3::operation::list_parts::builders::ListPartsFluentBuilder,
);

/// Build an S3 client from the configuration (explicit keys or the AWS chain).
pub async fn client(cfg: &S3Config) -> anyhow::Result<Client> {
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(20));
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .operation_attempt_timeout(Duration::from_secs(300))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(crate::httptls::aws_http_client()?)
        .region(aws_config::Region::new(cfg.region.clone()))
        .retry_config(retry)
        .timeout_config(timeouts);
    if let Some((ak, sk)) = &cfg.credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            ak,
            sk,
            None,
            None,
            "leaflock-backup",
        ));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.force_path_style)
        // `when-required`: no flexible checksum on any request that does not need one;
        // otherwise the SDK's default, with the algorithm named per request.
        .request_checksum_calculation(match cfg.checksum {
            Checksum::WhenRequired => RequestChecksumCalculation::WhenRequired,
            _ => RequestChecksumCalculation::WhenSupported,
        })
        // Reads: the read side hashes every object against its manifest's sha256; the
        // SDK could not validate a multipart object's part-level checksum anyway (and
        // warns on every such read). Small objects ask for validation themselves.
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .interceptor(RepeatedSseCMd5);
    if let Some(ep) = &cfg.endpoint {
        b = b.endpoint_url(ep);
    }
    Ok(Client::from_conf(b.build()))
}

/// Keeps the `Date` header of a response: the S3 server's clock, a second opinion on
/// the local one (see `clock.rs`).
#[derive(Debug, Default, Clone)]
struct DateCapture(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl aws_sdk_s3::config::Intercept for DateCapture {
    fn name(&self) -> &'static str {
        "DateCapture"
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        if let Some(d) = ctx.response().headers().get("date") {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.to_string());
        }
        Ok(())
    }
}

/// Some S3-compatible servers (SeaweedFS among them) repeat the SSE-C key MD5 response
/// header (`x, x`), which the SDK refuses to parse. Identical repeats are folded into
/// one value; anything else is left for the SDK to reject.
#[derive(Debug)]
struct RepeatedSseCMd5;

impl aws_sdk_s3::config::Intercept for RepeatedSseCMd5 {
    fn name(&self) -> &'static str {
        "RepeatedSseCMd5"
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        const NAME: &str = "x-amz-server-side-encryption-customer-key-md5";
        let headers = ctx.response_mut().headers_mut();
        let joined = headers.get_all(NAME).collect::<Vec<_>>().join(",");
        let values: Vec<&str> = joined
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if values.len() > 1 && values.iter().all(|v| *v == values[0]) {
            let one = values[0].to_string();
            headers.insert(NAME, one);
        }
        Ok(())
    }
}

/// One line describing an SDK error: for an answer of the store, its HTTP status,
/// error code, message and request id (whichever it gave; a HEAD answer has no body,
/// so often only the status); otherwise the whole chain of causes (timeout,
/// connection, TLS, ...).
pub fn describe_error<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    match e {
        SdkError::ServiceError(se) => store_answer(status, se.err().meta()),
        SdkError::ResponseError(_) if status.is_some() => format!(
            "{} (an answer the SDK could not read: {})",
            store_answer(status, &Default::default()),
            DisplayErrorContext(e)
        ),
        other => format!("{}", DisplayErrorContext(other)),
    }
}

/// Whether a request writes an object (and so carries every protection asked for) or
/// reads one (SSE-C only).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Req {
    Read,
    Write,
}

/// [`describe_error`], and for a request the store refused as unsupported or invalid
/// (400, 403, 405, 411, 501), the features this request asked for: a store that lacks
/// one answers so (Garage and SSE-C, B2 and the SDK's checksums), often with a terse
/// message or, for a HEAD, none at all.
fn refused<E>(e: &SdkError<E, HttpResponse>, protect: &Protect, req: Req) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let what = describe_error(e);
    let status = e.raw_response().map(|r| r.status().as_u16());
    let asked = protect.asked(req);
    if !matches!(status, Some(400 | 403 | 405 | 411 | 501)) || asked.is_empty() {
        return what;
    }
    format!(
        "{what}; the request asked for {}: a store that lacks one of these refuses it \
         (see the S3 stores page of the documentation for what each store needs)",
        asked.join(", ")
    )
}

/// The store's answer to a refused request: `HTTP 400 Bad Request, code X: message
/// (request id Y)`, with every part the store gave.
fn store_answer(status: Option<u16>, meta: &aws_sdk_s3::error::ErrorMetadata) -> String {
    let mut out = match status {
        Some(s) => {
            let reason = match s {
                400 => " Bad Request",
                401 => " Unauthorized",
                403 => " Forbidden",
                404 => " Not Found",
                405 => " Method Not Allowed",
                409 => " Conflict",
                411 => " Length Required",
                412 => " Precondition Failed",
                416 => " Range Not Satisfiable",
                429 => " Too Many Requests",
                500 => " Internal Server Error",
                501 => " Not Implemented",
                502 => " Bad Gateway",
                503 => " Service Unavailable",
                504 => " Gateway Timeout",
                _ => "",
            };
            format!("HTTP {s}{reason}")
        }
        None => "the store refused it".to_string(),
    };
    match (meta.code(), meta.message().filter(|m| !m.is_empty())) {
        (Some(c), Some(m)) => out.push_str(&format!(", code {c}: {m}")),
        (Some(c), None) => out.push_str(&format!(", code {c} (no message)")),
        (None, Some(m)) => out.push_str(&format!(": {m}")),
        (None, None) => out.push_str(" with no error code or message"),
    }
    let id = meta.extra("aws_request_id").or(meta.extra("request_id"));
    if let Some(id) = id.filter(|i| !i.is_empty()) {
        out.push_str(&format!(" (request id {id})"));
    }
    out
}

impl S3Storage {
    /// A PutObject of `body` at `key` with every protection asked for: the request
    /// checksum, SSE-S3/KMS or SSE-C, and Object Lock (mode and retain-until date).
    fn protected_put(
        &self,
        key: &str,
        content_type: &str,
        body: ByteStream,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .set_checksum_algorithm(self.protect.checksum.algorithm())
            .set_server_side_encryption(self.protect.server_side())
            .set_ssekms_key_id(self.protect.kms_key())
            .sse_c(self.protect.sse_c())
            .set_object_lock_mode(self.protect.lock().0)
            .set_object_lock_retain_until_date(self.protect.lock().1)
            .body(body)
    }

    pub async fn new(cfg: &S3Config) -> Result<S3Storage> {
        let where_ = format!(
            "s3://{}/{} at {}",
            cfg.bucket,
            cfg.prefix,
            cfg.endpoint.as_deref().unwrap_or("AWS")
        );
        Ok(S3Storage {
            client: client(cfg).await?,
            bucket: cfg.bucket.clone(),
            where_,
            storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
            part_size: cfg.part_size,
            parts_in_flight: cfg.parts_in_flight,
            protect: Protect {
                sse: cfg.sse.clone(),
                lock: cfg.object_lock,
                checksum: cfg.checksum,
                allow_unapplied: cfg.allow_unapplied_protection,
            },
        })
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.where_.clone()
    }

    async fn preflight(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let why = match status {
                    Some(404) => "the bucket does not exist".to_string(),
                    Some(403) => {
                        "access denied (check the access key, secret key and the bucket policy)"
                            .to_string()
                    }
                    Some(301) => "the bucket is in another region (check --s3-region)".to_string(),
                    _ => describe_error(&e),
                };
                Err(anyhow!("S3 bucket {} is not usable: {why}", self.where_))
            }
        }
    }

    async fn server_time(&self) -> Result<Option<DateTime<Utc>>> {
        let date = DateCapture::default();
        // Any answer carries the server's Date, an error (403 for a key without
        // s3:ListBucket) as well as a success.
        let _ = self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .customize()
            .interceptor(date.clone())
            .send()
            .await;
        let text = date.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(text.and_then(|t| {
            DateTime::parse_from_rfc2822(t.trim())
                .ok()
                .map(|d| d.with_timezone(&Utc))
        }))
    }

    async fn create(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/octet-stream")
            .set_storage_class(self.storage_class.clone())
            .set_checksum_algorithm(self.protect.checksum.multipart().map(|f| f.algorithm()))
            .set_server_side_encryption(self.protect.server_side())
            .set_ssekms_key_id(self.protect.kms_key())
            .sse_c(self.protect.sse_c())
            .set_object_lock_mode(self.protect.lock().0)
            .set_object_lock_retain_until_date(self.protect.lock().1)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot start the upload to {}: {}",
                    self.where_,
                    refused(&e, &self.protect, Req::Write)
                )
            })?;
        let upload_id = out
            .upload_id()
            .ok_or_else(|| anyhow!("S3 returned no upload id"))?
            .to_string();
        tracing::debug!(key, upload_id, "multipart upload started");
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_string(),
            upload_id: Some(upload_id),
            buf: BytesMut::with_capacity(self.part_size),
            part_size: self.part_size,
            max_in_flight: self.parts_in_flight,
            next_part: 1,
            protect: self.protect.clone(),
            in_flight: JoinSet::new(),
            done: Vec::new(),
            written: 0,
        }))
    }

    async fn put_small(&self, key: &str, data: Bytes, replace: bool) -> Result<()> {
        let mut req = self.protected_put(key, "application/json", ByteStream::from(data.clone()));
        if !replace {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => {
                if let Err(e) = check_applied(&self.client, &self.bucket, key, &self.protect).await
                {
                    let _ = self
                        .client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .send()
                        .await;
                    return Err(e);
                }
                Ok(())
            }
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(412) => {
                // A retried PUT whose first attempt succeeded but whose answer was lost
                // also meets its own object: identical content is success.
                match self.get_small(key).await {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(anyhow!(
                        "{key} already exists in {}; not overwriting it",
                        self.where_
                    )),
                }
            }
            Err(e) => Err(anyhow!(
                "cannot write {key} to {}: {}",
                self.where_,
                refused(&e, &self.protect, Req::Write)
            )),
        }
    }

    async fn open_read(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .sse_c(self.protect.sse_c())
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot read {key} from {}: {}",
                    self.where_,
                    refused(&e, &self.protect, Req::Read)
                )
            })?;
        Ok(Box::new(out.body.into_async_read()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                anyhow!(
                    "cannot list {prefix} in {}: {}",
                    self.where_,
                    describe_error(&e)
                )
            })?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        Ok(out)
    }

    async fn get_small(&self, key: &str) -> Result<Bytes> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .sse_c(self.protect.sse_c())
            // A small object is one part: its checksum, if the store keeps one, is the
            // whole object's, which the SDK validates.
            .set_checksum_mode(
                (self.protect.checksum != Checksum::WhenRequired).then_some(ChecksumMode::Enabled),
            )
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot read {key} from {}: {}",
                    self.where_,
                    refused(&e, &self.protect, Req::Read)
                )
            })?;
        // Refuse a large object before reading it (its length as the store says), and
        // never hold more than the cap even if the length was a lie.
        if let Some(n) = out.content_length() {
            super::check_small(key, n.max(0) as u64)?;
        }
        let mut body = out.body;
        let mut data = Vec::new();
        while let Some(chunk) = body
            .try_next()
            .await
            .with_context(|| format!("cannot read {key}"))?
        {
            data.extend_from_slice(&chunk);
            super::check_small(key, data.len() as u64)?;
        }
        Ok(data.into())
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .sse_c(self.protect.sse_c())
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(false),
            Err(e) => Err(anyhow!(
                "cannot check {key} in {}: {}",
                self.where_,
                refused(&e, &self.protect, Req::Read)
            )),
        }
    }

    async fn list_unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot list the unfinished uploads under {prefix} in {}: {}",
                        self.where_,
                        describe_error(&e)
                    )
                })?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                out.push(Unfinished {
                    key: key.to_string(),
                    id: id.to_string(),
                    started: u
                        .initiated()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
            let next = (
                page.next_key_marker().map(str::to_string),
                page.next_upload_id_marker().map(str::to_string),
            );
            if page.is_truncated() != Some(true) || (next.0.is_none() && next.1.is_none()) {
                break;
            }
            if next == (key_marker.clone(), id_marker.clone()) {
                break; // a server that does not advance: stop rather than loop
            }
            (key_marker, id_marker) = next;
        }
        Ok(out)
    }

    async fn last_written(&self, u: &Unfinished) -> Result<Option<DateTime<Utc>>> {
        let mut newest = u.started;
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&u.key)
                .upload_id(&u.id)
                .set_part_number_marker(marker.clone())
                .sse_c(self.protect.sse_c())
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot list the parts of the unfinished upload {} in {}: {}",
                        u.key,
                        self.where_,
                        refused(&e, &self.protect, Req::Read)
                    )
                })?;
            for p in page.parts() {
                let t = p
                    .last_modified()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos()));
                newest = newest.max(t);
            }
            let next = page.next_part_number_marker().map(str::to_string);
            if page.is_truncated() != Some(true) || next.is_none() || next == marker {
                break;
            }
            marker = next;
        }
        Ok(newest)
    }

    async fn discard_unfinished(&self, u: &Unfinished) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&u.key)
            .upload_id(&u.id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(()),
            Err(e) => Err(anyhow!(
                "cannot abort the multipart upload {} of {} in {}: {}",
                u.id,
                u.key,
                self.where_,
                describe_error(&e)
            )),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot delete {key} from {}: {}",
                    self.where_,
                    describe_error(&e)
                )
            })?;
        Ok(())
    }

    async fn purge(&self, key: &str) -> Result<()> {
        self.delete(key).await?;
        let listed = self
            .client
            .list_object_versions()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await;
        // A store without versioning may not know the call: the DELETE was enough.
        let Ok(listed) = listed else { return Ok(()) };
        let ids = listed
            .versions()
            .iter()
            .filter(|v| v.key() == Some(key))
            .filter_map(|v| v.version_id())
            .chain(
                listed
                    .delete_markers()
                    .iter()
                    .filter(|m| m.key() == Some(key))
                    .filter_map(|m| m.version_id()),
            )
            .filter(|id| *id != "null")
            .map(str::to_string)
            .collect::<Vec<_>>();
        for id in ids {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .version_id(&id)
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot delete version {id} of {key} from {}: {}",
                        self.where_,
                        describe_error(&e)
                    )
                })?;
        }
        Ok(())
    }

    async fn probe_lock(&self, key: &str) -> Result<String> {
        let Some((mode, _)) = self.protect.lock else {
            anyhow::bail!("no Object Lock was asked for");
        };
        // Retained for seconds, not days, so that the probe can be removed: the
        // read-back asks for the mode and a retain-until date that is not in the past.
        let until = Utc::now() + chrono::Duration::seconds(5);
        let want = Protect {
            lock: Some((mode, 0)),
            allow_unapplied: false,
            ..self.protect.clone()
        };
        let body = ByteStream::from_static(b"leaflock-backup check: object lock probe\n");
        let put = self
            .protected_put(key, "text/plain", body)
            .object_lock_retain_until_date(aws_smithy_types::DateTime::from_secs(until.timestamp()))
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "the store refused an object with Object Lock: {}",
                    describe_error(&e)
                )
            })?;
        let applied = check_applied(&self.client, &self.bucket, key, &want).await;
        // Removed once its retention has passed: the version itself, so that no locked
        // data stays behind a delete marker.
        let wait = (until - Utc::now()).num_milliseconds().max(0) as u64 + 1500;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut removed = Err(anyhow!("not tried"));
        for attempt in 0..4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            removed = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .set_version_id(put.version_id().map(str::to_string))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| anyhow!("cannot remove the probe {key}: {}", describe_error(&e)));
            if removed.is_ok() {
                break;
            }
        }
        applied.map_err(|e| anyhow!("{e:#}").context("the probe object"))?;
        removed?;
        let name = want.lock().0.map(|m| m.as_str().to_string());
        Ok(format!(
            "{} retention applied and read back (probe retained 5 s, then its version removed)",
            name.unwrap_or_default()
        ))
    }
}

struct S3Writer {
    client: Client,
    bucket: String,
    key: String,
    /// `None` once completed or aborted.
    upload_id: Option<String>,
    buf: BytesMut,
    part_size: usize,
    max_in_flight: usize,
    next_part: i32,
    protect: Protect,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
    written: u64,
}

impl S3Writer {
    fn upload_id(&self) -> &str {
        self.upload_id.as_deref().expect("upload still open")
    }

    async fn reap_one(&mut self) -> Result<()> {
        if let Some(r) = self.in_flight.join_next().await {
            let part = r.map_err(|e| anyhow!("part upload task failed: {e}"))??;
            self.done.push(part);
        }
        Ok(())
    }

    /// Upload one part, waiting first while `max_in_flight` parts are in flight.
    async fn launch(&mut self, body: Bytes) -> Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.reap_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let client = self.client.clone();
        let sse_c = self
            .protect
            .sse_c()
            .map(|(k, m)| (k.to_string(), m.to_string()));
        let (bucket, key, upload_id) = (
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id().to_string(),
        );
        let checksum = self.protect.checksum.multipart();
        let protect = self.protect.clone();
        self.in_flight.spawn(async move {
            let len = body.len();
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .set_checksum_algorithm(checksum.map(|f| f.algorithm()))
                .sse_c(sse_c.as_ref().map(|(k, m)| (k.as_str(), m.as_str())))
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| {
                    anyhow!(
                        "upload of part {number} of {key} failed: {}",
                        refused(&e, &protect, Req::Write)
                    )
                })?;
            tracing::debug!(part = number, bytes = len, "part stored");
            let part = CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string));
            Ok(match checksum {
                Some(f) => f.on_part(part, &out),
                None => part,
            }
            .build())
        });
        Ok(())
    }

    async fn abort_upload(&mut self) -> Result<()> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        let mut last_err = None;
        for attempt in 0..3 {
            match self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::info!(key = %self.key, "multipart upload aborted");
                    return Ok(());
                }
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => {
                    return Ok(())
                }
                Err(e) => last_err = Some(describe_error(&e)),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        Err(anyhow!(
            "cannot abort multipart upload {upload_id} of {}: {}",
            self.key,
            last_err.unwrap_or_default()
        ))
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        while !data.is_empty() {
            let room = self.part_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data.split_to(take));
            if self.buf.len() == self.part_size {
                let part =
                    std::mem::replace(&mut self.buf, BytesMut::with_capacity(self.part_size))
                        .freeze();
                self.launch(part).await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let result: Result<()> = async {
            if !self.buf.is_empty() || self.next_part == 1 {
                let last = std::mem::take(&mut self.buf).freeze();
                self.launch(last).await?;
            }
            while !self.in_flight.is_empty() {
                self.reap_one().await?;
            }
            let mut parts = std::mem::take(&mut self.done);
            parts.sort_by_key(|p| p.part_number());
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(self.upload_id())
                .if_none_match("*")
                .sse_c(self.protect.sse_c())
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| {
                    if e.raw_response().map(|r| r.status().as_u16()) == Some(412) {
                        anyhow!("{} already exists; not overwriting it", self.key)
                    } else {
                        anyhow!(
                            "cannot complete the upload of {}: {}",
                            self.key,
                            refused(&e, &self.protect, Req::Write)
                        )
                    }
                })?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.upload_id = None;
                if let Err(e) =
                    check_applied(&self.client, &self.bucket, &self.key, &self.protect).await
                {
                    if let Err(d) = self
                        .client
                        .delete_object()
                        .bucket(&self.bucket)
                        .key(&self.key)
                        .send()
                        .await
                    {
                        tracing::error!(
                            key = %self.key,
                            error = %describe_error(&d),
                            "could not remove the object whose protection was not applied"
                        );
                    }
                    return Err(e);
                }
                Ok(self.written)
            }
            Err(e) => {
                if let Err(ae) = self.abort_upload().await {
                    tracing::error!(error = %ae, "abort after a failed upload also failed");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_upload().await
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped while the upload is open (a cancelled future): abort in the background.
        if let (Some(upload_id), Ok(handle)) =
            (self.upload_id.take(), tokio::runtime::Handle::try_current())
        {
            self.in_flight.abort_all();
            let (client, bucket, key) =
                (self.client.clone(), self.bucket.clone(), self.key.clone());
            handle.spawn(async move {
                let _ = client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .send()
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;

    #[test]
    fn a_stores_answer_says_everything_it_gave() {
        let full = ErrorMetadata::builder()
            .code("NotImplemented")
            .message("SSE-C is not supported")
            .custom("aws_request_id", "r-1")
            .build();
        assert_eq!(
            store_answer(Some(501), &full),
            "HTTP 501 Not Implemented, code NotImplemented: SSE-C is not supported (request id r-1)"
        );
        // A HEAD answer has no body: only its status (this used to read "error").
        assert_eq!(
            store_answer(Some(400), &ErrorMetadata::default()),
            "HTTP 400 Bad Request with no error code or message"
        );
        let code = ErrorMetadata::builder().code("InvalidArgument").build();
        assert_eq!(
            store_answer(Some(418), &code),
            "HTTP 418, code InvalidArgument (no message)"
        );
    }

    #[test]
    fn a_refused_write_names_what_it_asked_for() {
        let protect = Protect {
            sse: Some(Sse::S3),
            lock: Some((LockMode::Governance, 3)),
            checksum: Checksum::DEFAULT,
            allow_unapplied: false,
        };
        assert_eq!(
            protect.asked(Req::Write),
            [
                "SSE-S3 (--sse AES256)",
                "Object Lock (--object-lock-days 3)",
                "the SDK's flexible checksums (--s3-checksum sha256; when-required sends none)"
            ]
        );
        assert!(protect.asked(Req::Read).is_empty());
        let quiet = Protect {
            sse: None,
            lock: None,
            checksum: Checksum::WhenRequired,
            allow_unapplied: false,
        };
        assert!(quiet.asked(Req::Write).is_empty());
    }
}
