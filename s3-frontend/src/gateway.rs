//! The S3 operations over fs: buckets are the root's directories, objects
//! their files (see the crate doc).

use std::sync::Arc;

use bytes::Bytes;
use datenlord_fs::{
    CreateMode, Creds, FileKind, Fs, FsError, Ino, RenameFlags, XattrFlags, ROOT_INO,
};
use futures::StreamExt as _;
use md5::Digest as _;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopyObjectResult, CopySource, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput,
    DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    ETag, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListObjectsInput, ListObjectsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, Object,
    PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp, UploadPartInput, UploadPartOutput,
};
use s3s::dto::{
    DeleteObjectTaggingInput, DeleteObjectTaggingOutput, GetObjectTaggingInput,
    GetObjectTaggingOutput, ListMultipartUploadsInput, ListMultipartUploadsOutput,
    PutObjectTaggingInput, PutObjectTaggingOutput, UploadPartCopyInput, UploadPartCopyOutput,
};
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::key::{segments, TEMP_PREFIX};
use conditions::{Conditions, WriteCondition};
use meta::{ObjectMeta, META_XATTR};
use tags::{Tags, TAGS_XATTR};

mod conditions;
mod meta;
mod multipart;
mod tags;

use crate::list::{list, Entry, Item, Query, Tree};
use crate::users::Users;
pub use multipart::{PART_MIN_BYTES, PART_NUMBER_MAX};

/// Bytes read or written per step of a GET or a PUT (and the depth of a
/// GET's read-ahead, in steps): a GET holds at most a few of them.
const STEP_BYTES: u32 = 1 << 20;
const GET_STEPS_AHEAD: usize = 2;
/// The extended attribute holding a PUT's ETag, with the size and mtime
/// it is the ETag of (a file changed since, through a mount, gets another).
const ETAG_XATTR: &[u8] = b"user.datenlord.s3.etag";
/// Most keys a listing page holds (S3's limit).
const MAX_KEYS: i32 = 1000;
/// Entries asked per readdir.
const READDIR_BATCH: usize = 1024;
/// Mode of buckets and of the directories a PUT makes.
const DIR_MODE: u32 = 0o755;
/// Mode of objects.
const FILE_MODE: u32 = 0o644;

/// What the gateway tells the kernel of a FUSE mount of the same file
/// system in the same process: that names and files changed behind it
/// (its entry and attribute caches would keep them for as long as the
/// mount's timeouts).
pub trait KernelCaches: Send + Sync + 'static {
    /// Name `name` in directory `parent` changed.
    fn forget_entry(&self, parent: Ino, name: &[u8]);
    /// The attributes and data of `ino` changed.
    fn forget_inode(&self, ino: Ino);
}

/// The S3 service over one file system.
#[derive(Clone)]
pub struct Gateway {
    fs: Arc<Fs>,
    users: Arc<Users>,
    kernel: Option<Arc<dyn KernelCaches>>,
    stats: Arc<crate::S3Stats>,
    placing: Arc<[tokio::sync::Mutex<()>]>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

/// An S3 error with a message.
fn error(code: S3ErrorCode, message: impl Into<String>) -> S3Error {
    S3Error::with_message(code, message.into())
}

/// The S3 error of a file system error while doing `what`.
fn fs_error(e: &FsError, what: &str) -> S3Error {
    let code = match e.errno() {
        libc::EACCES | libc::EPERM => S3ErrorCode::AccessDenied,
        libc::EDQUOT | libc::ENOSPC => {
            // A refusal, not a server fault (clients retry 5xx).
            let mut refused = error(
                S3ErrorCode::Custom("QuotaExceeded".into()),
                format!("{what}: {e}: the bucket's or the volume's quota is full"),
            );
            refused.set_status_code(http::StatusCode::FORBIDDEN);
            return refused;
        }
        libc::ENAMETOOLONG => S3ErrorCode::KeyTooLongError,
        _ => S3ErrorCode::InternalError,
    };
    error(code, format!("{what}: {e}"))
}

fn invalid_key(key: &str, why: impl std::fmt::Display) -> S3Error {
    error(
        S3ErrorCode::InvalidArgument,
        format!("the key {key:?} cannot be a path of the file system: {why}"),
    )
}

/// Runs a file system call on a blocking thread (its futures wait for the
/// metadata and the shards, as on a FUSE request thread).
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> S3Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| error(S3ErrorCode::InternalError, e.to_string()))
}

/// The ETag of `attr` from its xattr value, if it still describes it.
fn recorded_etag(value: &[u8], size: u64, mtime: (i64, u32)) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(' ');
    let (etag, rec_size, secs, nanos) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (rec_size.parse() == Ok(size) && secs.parse() == Ok(mtime.0) && nanos.parse() == Ok(mtime.1))
        .then(|| etag.to_string())
}

/// A file's ETag (the recorded one while it describes the file, else one
/// derived from its inode, size and mtime: written otherwise than by a
/// PUT) and its modification time.
fn etag_and_time(attr: &datenlord_fs::Attr, recorded: Option<&[u8]>) -> (String, Timestamp) {
    let mtime = (attr.mtime.sec, attr.mtime.nsec);
    let etag = recorded
        .and_then(|value| recorded_etag(value, attr.size, mtime))
        .unwrap_or_else(|| format!("{:x}{:x}{:x}{:x}", attr.ino.0, attr.size, mtime.0, mtime.1));
    (etag, timestamp(mtime))
}

/// The time `mtime` (seconds, nanoseconds since the epoch) as S3 shows it.
fn timestamp(mtime: (i64, u32)) -> Timestamp {
    Timestamp::from(
        std::time::UNIX_EPOCH
            + std::time::Duration::new(u64::try_from(mtime.0).unwrap_or(0), mtime.1),
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// What an object is placed with: its ETag, metadata and tags, and what
/// the write requires of the object it replaces.
pub(crate) struct Stamp<'a> {
    pub(crate) etag: &'a str,
    pub(crate) meta: &'a ObjectMeta,
    pub(crate) tags: &'a Tags,
    pub(crate) condition: &'a WriteCondition,
}

impl<'a> Stamp<'a> {
    /// An unconditional write's stamp without metadata or tags (a part).
    fn plain(etag: &'a str) -> Self {
        Self {
            etag,
            meta: &NO_META,
            tags: &NO_TAGS,
            condition: &WriteCondition::Unconditional,
        }
    }
}

static NO_META: ObjectMeta = ObjectMeta::EMPTY;
static NO_TAGS: Tags = Tags::EMPTY;

/// Why an object was not placed.
enum Placing {
    /// Its condition does not hold.
    Refused(S3Error),
    /// The file system refused.
    Fs(FsError),
}

impl From<FsError> for Placing {
    fn from(e: FsError) -> Self {
        Self::Fs(e)
    }
}

/// Locks serializing the placing of objects by key (a stripe per hash):
/// a conditional write's check and its rename happen with no other write
/// of that key through this gateway in between.
const PLACE_STRIPES: usize = 64;

/// An object's metadata for HEAD, GET and listings.
struct ObjectInfo {
    ino: Ino,
    size: u64,
    modified: Timestamp,
    /// `modified` in whole seconds, as conditions compare it.
    seconds: Timestamp,
    etag: String,
    meta: ObjectMeta,
    tags: Tags,
}

impl Gateway {
    /// A gateway over `fs` for `users`; `kernel` when a FUSE mount of `fs`
    /// runs in this process.
    pub fn new(fs: Arc<Fs>, users: Users, kernel: Option<Arc<dyn KernelCaches>>) -> Self {
        Self {
            fs,
            users: Arc::new(users),
            kernel,
            stats: Arc::default(),
            placing: (0..PLACE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Its counters per S3 operation.
    pub fn stats(&self) -> Arc<crate::S3Stats> {
        Arc::clone(&self.stats)
    }

    /// The users (the service's authentication).
    pub fn users(&self) -> Arc<Users> {
        Arc::clone(&self.users)
    }

    fn creds<T>(&self, req: &S3Request<T>) -> S3Result<Creds> {
        let Some(credentials) = &req.credentials else {
            return Err(error(
                S3ErrorCode::AccessDenied,
                "anonymous access is not allowed",
            ));
        };
        self.users
            .creds(&credentials.access_key)
            .ok_or_else(|| error(S3ErrorCode::InvalidAccessKeyId, "unknown access key"))
    }

    fn forget_entry(&self, parent: Ino, name: &str) {
        if let Some(kernel) = &self.kernel {
            kernel.forget_entry(parent, name.as_bytes());
            kernel.forget_inode(parent);
        }
    }

    /// The directory of `bucket`.
    async fn bucket(&self, bucket: &str, creds: &Creds) -> S3Result<Ino> {
        let (fs, name, creds) = (Arc::clone(&self.fs), bucket.to_string(), creds.clone());
        let found = blocking(move || fs.lookup(ROOT_INO, name.as_bytes(), &creds)).await?;
        match found {
            Ok(attr) if attr.kind == FileKind::Dir => Ok(attr.ino),
            Ok(_) => Err(error(
                S3ErrorCode::NoSuchBucket,
                format!("{bucket} is not a directory"),
            )),
            Err(e) if e.errno() == libc::ENOENT => Err(error(
                S3ErrorCode::NoSuchBucket,
                format!("no bucket {bucket}"),
            )),
            Err(e) => Err(fs_error(&e, "looking the bucket up")),
        }
    }

    /// The file of `key` in `bucket`.
    async fn object(&self, bucket: &str, key: &str, creds: &Creds) -> S3Result<ObjectInfo> {
        let parts: Vec<String> = segments(key)
            .map_err(|why| invalid_key(key, why))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut ino = self.bucket(bucket, creds).await?;
        let no_such_key = || error(S3ErrorCode::NoSuchKey, format!("no key {key} in {bucket}"));
        let (fs, creds) = (Arc::clone(&self.fs), creds.clone());
        let found = blocking(move || {
            let mut attr = None;
            for part in &parts {
                let found = fs.lookup(ino, part.as_bytes(), &creds)?;
                ino = found.ino;
                attr = Some(found);
            }
            let attr = attr.ok_or(FsError::Meta {
                errno: libc::ENOENT,
                message: "no key".into(),
            })?;
            let recorded = fs.getxattr(attr.ino, ETAG_XATTR, &creds).ok();
            let meta = fs.getxattr(attr.ino, META_XATTR, &creds).ok();
            let tags = fs.getxattr(attr.ino, TAGS_XATTR, &creds).ok();
            Ok::<_, FsError>((attr, recorded, meta, tags))
        })
        .await?;
        let (attr, recorded, meta, tags) = match found {
            Ok(found) => found,
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) => {
                return Err(no_such_key())
            }
            Err(e) => return Err(fs_error(&e, "looking the key up")),
        };
        if attr.kind != FileKind::File {
            return Err(no_such_key());
        }
        let (etag, modified) = etag_and_time(&attr, recorded.as_deref());
        Ok(ObjectInfo {
            ino: attr.ino,
            size: attr.size,
            modified,
            seconds: timestamp((attr.mtime.sec, 0)),
            etag,
            meta: meta.map(|m| ObjectMeta::decode(&m)).unwrap_or_default(),
            tags: tags.map(|t| Tags::decode(&t)).unwrap_or_default(),
        })
    }

    /// Makes the directories of `dirs` below `bucket` as needed: the last
    /// one's inode.
    async fn make_dirs(
        &self,
        bucket: Ino,
        dirs: Vec<String>,
        key: &str,
        creds: &Creds,
    ) -> S3Result<Ino> {
        let mut ino = bucket;
        for name in dirs {
            let (fs, creds2, name2) = (Arc::clone(&self.fs), creds.clone(), name.clone());
            let made = blocking(move || {
                match futures::executor::block_on(fs.mkdir(
                    ino,
                    name2.as_bytes(),
                    CreateMode::masked(DIR_MODE),
                    &creds2,
                )) {
                    Ok(attr) => Ok((attr, true)),
                    Err(e) if e.errno() == libc::EEXIST => fs
                        .lookup(ino, name2.as_bytes(), &creds2)
                        .map(|a| (a, false)),
                    Err(e) => Err(e),
                }
            })
            .await?;
            match made {
                Ok((attr, _)) if attr.kind != FileKind::Dir => {
                    return Err(invalid_key(
                        key,
                        format!("{name} is an object, not a folder"),
                    ));
                }
                Ok((attr, fresh)) => {
                    if fresh {
                        self.forget_entry(ino, &name);
                    }
                    ino = attr.ino;
                }
                Err(e) => return Err(fs_error(&e, "making the key's folders")),
            }
        }
        Ok(ino)
    }

    /// Writes `body` into a new temporary file in `dir`: its name, inode,
    /// size and MD5, durable (fsync) before this returns.
    async fn write_temp(
        &self,
        dir: Ino,
        mut body: StreamingBlob,
        creds: &Creds,
    ) -> S3Result<(String, Ino, u64, [u8; 16])> {
        let name = format!("{TEMP_PREFIX}{:016x}", rand_u64());
        let (fs, creds2, name2) = (Arc::clone(&self.fs), creds.clone(), name.clone());
        let opened = blocking(move || {
            futures::executor::block_on(fs.create(
                dir,
                name2.as_bytes(),
                CreateMode::masked(FILE_MODE),
                libc::O_WRONLY | libc::O_EXCL,
                &creds2,
            ))
        })
        .await?
        .map_err(|e| fs_error(&e, "creating the object"))?;
        let (ino, fh) = (opened.attr.ino, opened.fh);
        let mut md5 = md5::Md5::new();
        let mut offset = 0u64;
        let written: S3Result<()> = async {
            // The body's chunks (often a few KiB each) are gathered into
            // whole steps (block-aligned, one file system write each).
            let mut step: Vec<u8> = Vec::with_capacity(STEP_BYTES as usize);
            let mut ended = false;
            while !ended {
                match body.next().await {
                    Some(chunk) => {
                        let chunk: Bytes = chunk.map_err(|e| {
                            error(
                                S3ErrorCode::IncompleteBody,
                                format!("reading the request body: {e}"),
                            )
                        })?;
                        md5.update(&chunk);
                        step.extend_from_slice(&chunk);
                        if step.len() < STEP_BYTES as usize {
                            continue;
                        }
                    }
                    None if step.is_empty() => break,
                    None => ended = true,
                }
                let whole = if ended {
                    step.len()
                } else {
                    step.len() / STEP_BYTES as usize * STEP_BYTES as usize
                };
                let rest = step.split_off(whole);
                let data = std::mem::replace(&mut step, rest);
                let (fs, creds) = (Arc::clone(&self.fs), creds.clone());
                let at = offset;
                offset += data.len() as u64;
                blocking(move || futures::executor::block_on(fs.write(ino, fh, at, &data, &creds)))
                    .await?
                    .map_err(|e| fs_error(&e, "writing the object"))?;
                step.reserve(STEP_BYTES as usize);
            }
            let fs = Arc::clone(&self.fs);
            blocking(move || futures::executor::block_on(fs.fsync(ino)))
                .await?
                .map_err(|e| fs_error(&e, "making the object durable"))
        }
        .await;
        let fs = Arc::clone(&self.fs);
        let released =
            blocking(move || futures::executor::block_on(fs.release(ino, fh, None))).await?;
        if let Err(e) = written.and(released.map_err(|e| fs_error(&e, "closing the object"))) {
            self.remove_quietly(dir, &name, creds).await;
            return Err(e);
        }
        Ok((name, ino, offset, md5.finalize().into()))
    }

    async fn remove_quietly(&self, dir: Ino, name: &str, creds: &Creds) {
        let (fs, creds, name) = (Arc::clone(&self.fs), creds.clone(), name.to_string());
        let _ =
            blocking(move || futures::executor::block_on(fs.unlink(dir, name.as_bytes(), &creds)))
                .await;
    }

    /// The entries of directory `dir` as the listing walks them.
    fn entries(fs: &Fs, dir: Ino, creds: &Creds) -> Result<Vec<Entry>, FsError> {
        let mut entries = Vec::new();
        let mut cookie = 0;
        loop {
            let batch = fs.readdir(dir, cookie, READDIR_BATCH, creds)?;
            let Some(last) = batch.last() else { break };
            cookie = last.cookie;
            entries.extend(batch.into_iter().filter_map(|e| {
                let dir = match e.kind {
                    FileKind::Dir => true,
                    FileKind::File => false,
                    _ => return None,
                };
                let name = String::from_utf8(e.name).ok()?;
                (name != "." && name != "..").then_some(Entry {
                    name,
                    ino: e.ino.0,
                    dir,
                })
            }));
        }
        Ok(entries)
    }

    /// One page of `bucket`'s listing, with each key's metadata.
    async fn list_page(
        &self,
        bucket: &str,
        creds: &Creds,
        prefix: String,
        delimiter: String,
        after: String,
        max_keys: Option<i32>,
    ) -> S3Result<(Vec<Object>, Vec<CommonPrefix>, bool, Option<String>)> {
        let root = self.bucket(bucket, creds).await?;
        let max_keys =
            usize::try_from(max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS)).unwrap_or(0);
        let (fs, creds2) = (Arc::clone(&self.fs), creds.clone());
        let page = blocking(move || {
            struct FsTree<'a>(&'a Fs, &'a Creds);
            impl Tree for FsTree<'_> {
                type Error = FsError;
                fn entries(&mut self, dir: u64) -> Result<Vec<Entry>, FsError> {
                    Gateway::entries(self.0, Ino(dir), self.1)
                }
            }
            let query = Query {
                prefix: &prefix,
                delimiter: &delimiter,
                after: &after,
                max_keys,
            };
            let page = list(&mut FsTree(&fs, &creds2), root.0, &query)?;
            let mut objects = Vec::new();
            let mut prefixes = Vec::new();
            for item in &page.items {
                match item {
                    Item::Key(key, ino) => {
                        let Ok(attr) = fs.getattr(Ino(*ino)) else {
                            continue;
                        };
                        let recorded = fs.getxattr(attr.ino, ETAG_XATTR, &creds2).ok();
                        let (etag, modified) = etag_and_time(&attr, recorded.as_deref());
                        objects.push(Object {
                            key: Some(key.clone()),
                            size: Some(i64::try_from(attr.size).unwrap_or(i64::MAX)),
                            e_tag: Some(ETag::Strong(etag)),
                            last_modified: Some(modified),
                            ..Object::default()
                        });
                    }
                    Item::Prefix(prefix) => prefixes.push(CommonPrefix {
                        prefix: Some(prefix.clone()),
                    }),
                }
            }
            let next = page
                .truncated
                .then(|| page.items.last().map(|i| i.text().to_string()))
                .flatten();
            Ok::<_, FsError>((objects, prefixes, page.truncated, next))
        })
        .await?;
        page.map_err(|e| match e.errno() {
            libc::ENOENT => error(S3ErrorCode::NoSuchBucket, format!("no bucket {bucket}")),
            _ => fs_error(&e, "listing the bucket"),
        })
    }
}

/// Whether a body whose MD5 is `md5` matches the request's Content-MD5.
fn check_md5(expected: Option<&str>, md5: &[u8; 16]) -> S3Result<()> {
    use base64::Engine as _;
    match expected {
        Some(expected)
            if base64::engine::general_purpose::STANDARD
                .decode(expected)
                .ok()
                .as_deref()
                != Some(&md5[..]) =>
        {
            Err(error(
                S3ErrorCode::BadDigest,
                "the body's MD5 is not Content-MD5",
            ))
        }
        _ => Ok(()),
    }
}

/// The folders and the name of `key`.
pub(crate) fn split_key(key: &str) -> S3Result<(Vec<String>, String)> {
    let mut parts: Vec<String> = segments(key)
        .map_err(|why| invalid_key(key, why))?
        .into_iter()
        .map(str::to_string)
        .collect();
    let name = parts.pop().unwrap_or_default();
    Ok((parts, name))
}

/// A random number for temporary names and upload ids: std's randomly
/// keyed hasher (seeded from the OS, a new key every call) over the clock.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// `text` as `encoding-type=url` listings carry keys (RFC 3986
/// percent-encoding of all but unreserved characters and `/`): a key may
/// hold characters XML 1.0 cannot.
fn url_encoded(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Encodes a listing's keys and prefixes when the request asked for
/// `encoding-type=url`: the encoder to apply to each text.
fn listing_encoder(encoding: Option<&s3s::dto::EncodingType>) -> fn(String) -> String {
    if encoding.is_some_and(|e| e.as_str() == s3s::dto::EncodingType::URL) {
        |text| url_encoded(&text)
    } else {
        |text| text
    }
}

/// A listing's keys and prefixes through `encode`.
fn encode_listing(
    objects: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    encode: fn(String) -> String,
) -> (Vec<Object>, Vec<CommonPrefix>) {
    let objects = objects
        .into_iter()
        .map(|o| Object {
            key: o.key.map(encode),
            ..o
        })
        .collect();
    let prefixes = prefixes
        .into_iter()
        .map(|p| CommonPrefix {
            prefix: p.prefix.map(encode),
        })
        .collect();
    (objects, prefixes)
}

/// A continuation token: the hex of the last key or prefix of the page.
fn token_of(after: &str) -> String {
    hex(after.as_bytes())
}

fn after_token(token: &str) -> S3Result<String> {
    let bad = || {
        error(
            S3ErrorCode::InvalidArgument,
            "not a continuation token of this gateway",
        )
    };
    if token.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())
}

#[async_trait::async_trait]
impl s3s::S3 for Gateway {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let creds = self.creds(&req)?;
        let key = req
            .credentials
            .as_ref()
            .map(|c| c.access_key.clone())
            .unwrap_or_default();
        let (fs, users) = (Arc::clone(&self.fs), Arc::clone(&self.users));
        let found = blocking(move || {
            let entries = Gateway::entries(&fs, ROOT_INO, &creds)?;
            let mut buckets: Vec<Bucket> = entries
                .into_iter()
                .filter(|e| {
                    e.dir && s3s::path::check_bucket_name(&e.name) && users.may_use(&key, &e.name)
                })
                .map(|e| {
                    let created = fs
                        .getattr(Ino(e.ino))
                        .ok()
                        .map(|a| timestamp((a.crtime.sec, a.crtime.nsec)));
                    Bucket {
                        name: Some(e.name),
                        creation_date: created,
                        ..Bucket::default()
                    }
                })
                .collect();
            buckets.sort_by(|a, b| a.name.cmp(&b.name));
            Ok::<_, FsError>(buckets)
        })
        .await?
        .map_err(|e| fs_error(&e, "listing the buckets"))?;
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(found),
            ..ListBucketsOutput::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let creds = self.creds(&req)?;
        let bucket = req.input.bucket.clone();
        let (fs, name) = (Arc::clone(&self.fs), bucket.clone());
        let made = blocking(move || {
            futures::executor::block_on(fs.mkdir(
                ROOT_INO,
                name.as_bytes(),
                CreateMode::masked(DIR_MODE),
                &creds,
            ))
        })
        .await?;
        match made {
            Ok(_) => {
                self.forget_entry(ROOT_INO, &bucket);
                Ok(S3Response::new(CreateBucketOutput {
                    location: Some(format!("/{bucket}")),
                }))
            }
            Err(e) if e.errno() == libc::EEXIST => Err(error(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                format!("{bucket} exists"),
            )),
            Err(e) => Err(fs_error(&e, "making the bucket")),
        }
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let creds = self.creds(&req)?;
        let bucket = req.input.bucket.clone();
        self.bucket(&bucket, &creds).await?;
        let (fs, name) = (Arc::clone(&self.fs), bucket.clone());
        let removed = blocking(move || {
            futures::executor::block_on(fs.rmdir(ROOT_INO, name.as_bytes(), &creds))
        })
        .await?;
        match removed {
            Ok(()) => {
                self.forget_entry(ROOT_INO, &bucket);
                Ok(S3Response::new(DeleteBucketOutput {}))
            }
            Err(e) if e.errno() == libc::ENOTEMPTY => Err(error(
                S3ErrorCode::BucketNotEmpty,
                format!("{bucket} holds objects (or folders): delete them first"),
            )),
            Err(e) => Err(fs_error(&e, "deleting the bucket")),
        }
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        let creds = self.creds(&req)?;
        self.bucket(&req.input.bucket, &creds).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let creds = self.creds(&req)?;
        let input = &req.input;
        let info = self.object(&input.bucket, &input.key, &creds).await?;
        Conditions::new(
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
        )
        .check(&info.etag, &info.seconds, S3ErrorCode::NotModified)?;
        let meta = info.meta.clone();
        Ok(S3Response::new(HeadObjectOutput {
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            metadata: meta.user_map(),
            content_length: Some(i64::try_from(info.size).unwrap_or(i64::MAX)),
            e_tag: Some(ETag::Strong(info.etag)),
            last_modified: Some(info.modified),
            accept_ranges: Some("bytes".into()),
            ..HeadObjectOutput::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        let info = self.object(&input.bucket, &input.key, &creds).await?;
        Conditions::new(
            input.if_match.as_ref(),
            input.if_unmodified_since.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
        )
        .check(&info.etag, &info.seconds, S3ErrorCode::NotModified)?;
        let (fs, creds2, file) = (Arc::clone(&self.fs), creds.clone(), info.ino);
        // Reading needs read permission, as open(2) would check it.
        blocking(move || fs.access(file, libc::R_OK as u32, &creds2))
            .await?
            .map_err(|e| fs_error(&e, "reading the object"))?;
        let (range, content_range) = match &input.range {
            None => (0..info.size, None),
            Some(range) => {
                let range = range.check(info.size)?;
                let text = format!("bytes {}-{}/{}", range.start, range.end - 1, info.size);
                (range, Some(text))
            }
        };
        let length = range.end - range.start;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(GET_STEPS_AHEAD);
        let fs = Arc::clone(&self.fs);
        tokio::spawn(async move {
            let mut at = range.start;
            while at < range.end {
                let step = u32::try_from((range.end - at).min(u64::from(STEP_BYTES)))
                    .unwrap_or(STEP_BYTES);
                let fs = Arc::clone(&fs);
                let read = tokio::task::spawn_blocking(move || {
                    futures::executor::block_on(fs.read(file, at, step))
                })
                .await;
                let chunk = match read {
                    Ok(Ok(data)) if !data.is_empty() => data,
                    Ok(Ok(_)) => {
                        let _ = tx
                            .send(Err(std::io::Error::other(
                                "the object got shorter while it was read",
                            )))
                            .await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let _ = tx
                            .send(Err(std::io::Error::from_raw_os_error(e.errno())))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                at += chunk.len() as u64;
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return; // the client went away
                }
            }
        });
        let meta = info.meta.clone();
        Ok(S3Response::new(GetObjectOutput {
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            metadata: meta.user_map(),
            body: Some(StreamingBlob::wrap(Chunks(rx))),
            tag_count: (!info.tags.is_empty())
                .then(|| i32::try_from(info.tags.len()).unwrap_or(i32::MAX)),
            content_length: Some(i64::try_from(length).unwrap_or(i64::MAX)),
            content_range,
            e_tag: Some(ETag::Strong(info.etag)),
            last_modified: Some(info.modified),
            accept_ranges: Some("bytes".into()),
            ..GetObjectOutput::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        let key = input.key.clone();
        let (parts, name) = split_key(&key)?;
        let meta = meta::requested_meta!(input)?;
        let tags = Tags::from_header(input.tagging.as_deref())?;
        let condition = WriteCondition::new(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let bucket = self.bucket(&input.bucket, &creds).await?;
        let dir = self.make_dirs(bucket, parts, &key, &creds).await?;
        let body = input
            .body
            .ok_or_else(|| error(S3ErrorCode::IncompleteBody, "a PUT without a body"))?;
        let (temp, ino, size, md5) = self.write_temp(dir, body, &creds).await?;
        if let Err(e) = check_md5(input.content_md5.as_deref(), &md5) {
            self.remove_quietly(dir, &temp, &creds).await;
            return Err(e);
        }
        let etag = hex(&md5);
        let stamp = Stamp {
            etag: &etag,
            meta: &meta,
            tags: &tags,
            condition: &condition,
        };
        self.place(dir, &temp, &name, ino, stamp, &key, &creds)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(etag)),
            size: Some(i64::try_from(size).unwrap_or(i64::MAX)),
            ..PutObjectOutput::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let creds = self.creds(&req)?;
        self.delete_key(&req.input.bucket, &req.input.key, &creds)
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let creds = self.creds(&req)?;
        let bucket = req.input.bucket.clone();
        self.bucket(&bucket, &creds).await?;
        let quiet = req.input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in req.input.delete.objects {
            match self.delete_key(&bucket, &object.key, &creds).await {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..DeletedObject::default()
                }),
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(object.key),
                    message: e.message().map(str::to_string),
                    ..s3s::dto::Error::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..DeleteObjectsOutput::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        let source = self
            .copy_source(
                &input.copy_source,
                conditions::copy_source_conditions!(input),
                &creds,
            )
            .await?;
        let key = input.key.clone();
        let (dirs, name) = split_key(&key)?;
        let bucket = self.bucket(&input.bucket, &creds).await?;
        let dir = self.make_dirs(bucket, dirs, &key, &creds).await?;
        // Same bytes, same ETag; the source's metadata and tags unless
        // replaced.
        let meta = if input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == s3s::dto::MetadataDirective::REPLACE)
        {
            meta::requested_meta!(input)?
        } else {
            source.meta.clone()
        };
        let tags = if input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == s3s::dto::TaggingDirective::REPLACE)
        {
            Tags::from_header(input.tagging.as_deref())?
        } else {
            source.tags.clone()
        };
        let (temp, ino, _) = self
            .copy_into_temp(dir, vec![(source.ino, 0, source.size)], false, &creds)
            .await?;
        let stamp = Stamp {
            etag: &source.etag,
            meta: &meta,
            tags: &tags,
            condition: &WriteCondition::Unconditional,
        };
        self.place(dir, &temp, &name, ino, stamp, &key, &creds)
            .await?;
        let copied = self.object(&input.bucket, &key, &creds).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(copied.etag)),
                last_modified: Some(copied.modified),
                ..CopyObjectResult::default()
            }),
            ..CopyObjectOutput::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(
            self.create_upload(req.input, &creds).await?,
        ))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(
            self.upload_part_in(req.input, &creds).await?,
        ))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(
            self.list_upload_parts(req.input, &creds).await?,
        ))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(
            self.upload_part_copy_in(req.input, &creds).await?,
        ))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(self.list_uploads(req.input, &creds).await?))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let creds = self.creds(&req)?;
        let info = self
            .object(&req.input.bucket, &req.input.key, &creds)
            .await?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: info.tags.to_tag_set(),
            ..GetObjectTaggingOutput::default()
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        let tags = Tags::from_tagging(input.tagging)?;
        self.set_tags(&input.bucket, &input.key, &tags, &creds)
            .await?;
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        self.set_tags(&input.bucket, &input.key, &Tags::default(), &creds)
            .await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(
            self.complete_upload(req.input, &creds).await?,
        ))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let creds = self.creds(&req)?;
        Ok(S3Response::new(self.abort_upload(req.input, &creds).await?))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        let from_token = input
            .continuation_token
            .as_deref()
            .map(after_token)
            .transpose()?;
        let after = from_token
            .clone()
            .into_iter()
            .chain(input.start_after.clone())
            .max()
            .unwrap_or_default();
        let (objects, prefixes, truncated, next) = self
            .list_page(
                &input.bucket,
                &creds,
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone().unwrap_or_default(),
                after,
                input.max_keys,
            )
            .await?;
        let encode = listing_encoder(input.encoding_type.as_ref());
        let (objects, prefixes) = encode_listing(objects, prefixes, encode);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix.map(encode),
            delimiter: input.delimiter.map(encode),
            encoding_type: input.encoding_type,
            max_keys: input.max_keys.or(Some(MAX_KEYS)),
            key_count: Some(i32::try_from(objects.len() + prefixes.len()).unwrap_or(i32::MAX)),
            is_truncated: Some(truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: next.map(|n| token_of(&n)),
            start_after: input.start_after.map(encode),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            ..ListObjectsV2Output::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let creds = self.creds(&req)?;
        let input = req.input;
        let (objects, prefixes, truncated, next) = self
            .list_page(
                &input.bucket,
                &creds,
                input.prefix.clone().unwrap_or_default(),
                input.delimiter.clone().unwrap_or_default(),
                input.marker.clone().unwrap_or_default(),
                input.max_keys,
            )
            .await?;
        let encode = listing_encoder(input.encoding_type.as_ref());
        let (objects, prefixes) = encode_listing(objects, prefixes, encode);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix.map(encode),
            delimiter: input.delimiter.map(encode),
            marker: input.marker.map(encode),
            encoding_type: input.encoding_type,
            max_keys: input.max_keys.or(Some(MAX_KEYS)),
            is_truncated: Some(truncated),
            next_marker: next.map(encode),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            ..ListObjectsOutput::default()
        }))
    }
}

impl Gateway {
    /// Records the stamp's ETag, metadata and tags on temporary file
    /// `temp` (inode `ino`) in `dir`, checks its condition against the
    /// object of `name`, renames the file onto `name` and makes the rename
    /// durable; on failure the temporary file goes (`key` names the object
    /// in errors).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn place(
        &self,
        dir: Ino,
        temp: &str,
        name: &str,
        ino: Ino,
        stamp: Stamp<'_>,
        key: &str,
        creds: &Creds,
    ) -> S3Result<()> {
        let meta = (!stamp.meta.is_empty()).then(|| stamp.meta.encode());
        let tags = (!stamp.tags.is_empty()).then(|| stamp.tags.encode());
        let condition = stamp.condition.clone();
        let (fs, creds2, temp2, name2, etag2) = (
            Arc::clone(&self.fs),
            creds.clone(),
            temp.to_string(),
            name.to_string(),
            stamp.etag.to_string(),
        );
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (dir.0, name).hash(&mut h);
            h.finish() as usize % self.placing.len()
        };
        let _placing = self.placing[stripe].lock().await;
        let absent = condition == WriteCondition::Absent;
        let placed = blocking(move || -> Result<(), Placing> {
            if condition != WriteCondition::Unconditional {
                let current = match fs.lookup(dir, name2.as_bytes(), &creds2) {
                    Ok(attr) if attr.kind == FileKind::File => {
                        let recorded = fs.getxattr(attr.ino, ETAG_XATTR, &creds2).ok();
                        Some(etag_and_time(&attr, recorded.as_deref()).0)
                    }
                    Ok(_) => None,
                    Err(e) if e.errno() == libc::ENOENT => None,
                    Err(e) => return Err(e.into()),
                };
                condition
                    .check(current.as_deref())
                    .map_err(Placing::Refused)?;
            }
            let attr = fs.getattr(ino)?;
            let value = format!(
                "{etag2} {} {} {}",
                attr.size, attr.mtime.sec, attr.mtime.nsec
            );
            futures::executor::block_on(fs.setxattr(
                ino,
                ETAG_XATTR,
                value.as_bytes(),
                XattrFlags::default(),
                &creds2,
            ))?;
            for (name, value) in [(META_XATTR, &meta), (TAGS_XATTR, &tags)] {
                if let Some(value) = value {
                    futures::executor::block_on(fs.setxattr(
                        ino,
                        name,
                        value,
                        XattrFlags::default(),
                        &creds2,
                    ))?;
                }
            }
            // If-None-Match: * holds even against another gateway's write
            // of the key: the rename refuses to replace.
            let flags = RenameFlags {
                noreplace: absent,
                ..RenameFlags::default()
            };
            futures::executor::block_on(fs.rename(
                dir,
                temp2.as_bytes(),
                dir,
                name2.as_bytes(),
                flags,
                &creds2,
            ))?;
            // The rename is durable with the directory's metadata.
            futures::executor::block_on(fs.fsyncdir())?;
            Ok(())
        })
        .await?;
        if let Err(e) = placed {
            self.remove_quietly(dir, temp, creds).await;
            return Err(match e {
                Placing::Refused(refused) => refused,
                Placing::Fs(e) if absent && e.errno() == libc::EEXIST => error(
                    S3ErrorCode::PreconditionFailed,
                    "an object of that key exists (If-None-Match: *)",
                ),
                Placing::Fs(e) => match e.errno() {
                    libc::EISDIR | libc::ENOTEMPTY | libc::EEXIST => {
                        invalid_key(key, "a folder of that name holds other keys")
                    }
                    _ => fs_error(&e, "placing the object"),
                },
            });
        }
        self.forget_entry(dir, name);
        Ok(())
    }

    /// A new temporary file in `dir` holding `len` bytes at `offset` of
    /// each of `sources` in order, durable, and when `hash` their MD5 (a
    /// copy, a part copied, or a multipart join;
    /// the data is copied, blocks are not shared yet).
    pub(crate) async fn copy_into_temp(
        &self,
        dir: Ino,
        sources: Vec<(Ino, u64, u64)>,
        hash: bool,
        creds: &Creds,
    ) -> S3Result<(String, Ino, Option<Vec<u8>>)> {
        let name = format!("{TEMP_PREFIX}{:016x}", rand_u64());
        let (fs, creds2, name2) = (Arc::clone(&self.fs), creds.clone(), name.clone());
        let made = blocking(move || {
            let opened = futures::executor::block_on(fs.create(
                dir,
                name2.as_bytes(),
                CreateMode::masked(FILE_MODE),
                libc::O_WRONLY | libc::O_EXCL,
                &creds2,
            ))?;
            let (ino, fh) = (opened.attr.ino, opened.fh);
            let mut md5 = hash.then(md5::Md5::new);
            let copied = (|| {
                let mut at = 0;
                for (source, offset, len) in sources {
                    let mut hashing = |data: &[u8]| {
                        if let Some(md5) = &mut md5 {
                            md5.update(data);
                        }
                    };
                    let n = futures::executor::block_on(fs.copy_range_seen(
                        (source, offset),
                        (ino, fh, at),
                        len,
                        &creds2,
                        &mut hashing,
                    ))?;
                    if n != len {
                        return Err(FsError::Meta {
                            errno: libc::EIO,
                            message: "a source got shorter while it was copied".into(),
                        });
                    }
                    at += len;
                }
                futures::executor::block_on(fs.fsync(ino))
            })();
            let released = futures::executor::block_on(fs.release(ino, fh, None));
            copied
                .and(released)
                .map(|()| (ino, md5.map(|m| m.finalize().to_vec())))
        })
        .await?;
        match made {
            Ok((ino, md5)) => Ok((name, ino, md5)),
            Err(e) => {
                self.remove_quietly(dir, &name, creds).await;
                Err(fs_error(&e, "copying into the object"))
            }
        }
    }

    /// The object a copy reads (`source`), checked against the copy's
    /// `conditions` and for read permission.
    async fn copy_source(
        &self,
        source: &CopySource,
        conditions: Conditions<'_>,
        creds: &Creds,
    ) -> S3Result<ObjectInfo> {
        let CopySource::Bucket { bucket, key, .. } = source else {
            return Err(error(
                S3ErrorCode::NotImplemented,
                "copies from access points are not served: name the source as bucket/key",
            ));
        };
        let source = self.object(bucket, key, creds).await?;
        conditions.check(
            &source.etag,
            &source.seconds,
            S3ErrorCode::PreconditionFailed,
        )?;
        let (fs, creds2, file) = (Arc::clone(&self.fs), creds.clone(), source.ino);
        blocking(move || fs.access(file, libc::R_OK as u32, &creds2))
            .await?
            .map_err(|e| fs_error(&e, "reading the source object"))?;
        Ok(source)
    }

    /// Replaces the tags of `key` (none: removes them).
    async fn set_tags(&self, bucket: &str, key: &str, tags: &Tags, creds: &Creds) -> S3Result<()> {
        let info = self.object(bucket, key, creds).await?;
        let (fs, creds, value) = (Arc::clone(&self.fs), creds.clone(), tags.encode());
        let set = blocking(move || {
            let done = if value.is_empty() {
                futures::executor::block_on(fs.removexattr(info.ino, TAGS_XATTR, &creds))
            } else {
                futures::executor::block_on(fs.setxattr(
                    info.ino,
                    TAGS_XATTR,
                    &value,
                    XattrFlags::default(),
                    &creds,
                ))
            };
            match done {
                Err(e) if e.errno() == libc::ENODATA => Ok(()),
                other => other,
            }
        })
        .await?;
        set.map_err(|e| fs_error(&e, "setting the object's tags"))
    }

    /// Deletes `key` (nothing to do when it is not there, as S3 does), and
    /// the folders it leaves empty.
    async fn delete_key(&self, bucket: &str, key: &str, creds: &Creds) -> S3Result<()> {
        let parts: Vec<String> = segments(key)
            .map_err(|why| invalid_key(key, why))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let root = self.bucket(bucket, creds).await?;
        let (fs, creds2) = (Arc::clone(&self.fs), creds.clone());
        let outcome = blocking(move || {
            // The directories down to the key: (directory, name in it).
            let mut path = vec![(root, String::new())];
            let mut ino = root;
            for part in &parts[..parts.len() - 1] {
                match fs.lookup(ino, part.as_bytes(), &creds2) {
                    Ok(attr) if attr.kind == FileKind::Dir => {
                        path.push((attr.ino, part.clone()));
                        ino = attr.ino;
                    }
                    Ok(_) => return Ok(Vec::new()),
                    Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENOTDIR) => {
                        return Ok(Vec::new())
                    }
                    Err(e) => return Err(e),
                }
            }
            let name = &parts[parts.len() - 1];
            match fs.lookup(ino, name.as_bytes(), &creds2) {
                Ok(attr) if attr.kind == FileKind::File => {}
                Ok(_) => return Ok(Vec::new()),
                Err(e) if e.errno() == libc::ENOENT => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
            futures::executor::block_on(fs.unlink(ino, name.as_bytes(), &creds2))?;
            let mut forgotten = vec![(ino, name.clone())];
            // Folders exist only through their keys: remove the empty ones
            // (the bucket, `path[0]`, stays).
            while path.len() > 1 {
                let Some((_, dir_name)) = path.pop() else {
                    break;
                };
                let parent = path.last().map_or(root, |p| p.0);
                if futures::executor::block_on(fs.rmdir(parent, dir_name.as_bytes(), &creds2))
                    .is_err()
                {
                    break;
                }
                forgotten.push((parent, dir_name));
            }
            Ok::<_, FsError>(forgotten)
        })
        .await?;
        match outcome {
            Ok(forgotten) => {
                for (dir, name) in forgotten {
                    self.forget_entry(dir, &name);
                }
                Ok(())
            }
            Err(e) => Err(fs_error(&e, "deleting the object")),
        }
    }
}

/// A GET's body: the chunks its reader task sends (a channel receiver is
/// `Send` and `Sync`, as s3s's bodies must be).
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_kept_only_for_the_version_they_describe() {
        let value = b"0123abcd 42 1700000000 5";
        assert_eq!(
            recorded_etag(value, 42, (1_700_000_000, 5)).as_deref(),
            Some("0123abcd")
        );
        assert_eq!(
            recorded_etag(value, 43, (1_700_000_000, 5)),
            None,
            "resized"
        );
        assert_eq!(
            recorded_etag(value, 42, (1_700_000_001, 5)),
            None,
            "rewritten"
        );
        assert_eq!(recorded_etag(b"garbage", 42, (0, 0)), None);
        assert_eq!(recorded_etag(&[0xff, 0xfe], 42, (0, 0)), None);
    }

    #[test]
    fn url_encoded_listings_keep_slashes_and_unreserved_characters() {
        assert_eq!(url_encoded("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(url_encoded("sp ace+ü%\u{1}"), "sp%20ace%2B%C3%BC%25%01");
    }

    #[test]
    fn continuation_tokens_roundtrip_and_garbage_is_refused() {
        for after in ["", "a/b c/d", "ü/€"] {
            assert_eq!(after_token(&token_of(after)).expect("roundtrip"), after);
        }
        for bad in ["x", "zz", "ff"] {
            assert!(after_token(bad).is_err(), "{bad}");
        }
    }
}
