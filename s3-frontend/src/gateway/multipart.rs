//! Multipart uploads. An upload is a hidden directory in its bucket,
//! `.datenlord-s3-upload-<id>` (listings skip it), bound to its key by an
//! extended attribute; each part is a file in it named by its number,
//! written like an object (streamed, fsynced, its MD5 recorded, renamed
//! into place: a part sent again replaces the old one whole). Completing
//! checks the parts named (ascending, present, same ETags, all but the
//! last at least 5 MiB), concatenates them into a temporary file next to
//! the key, places it as a PUT does (ETag: the MD5 of the parts' MD5s and
//! `-N`) and removes the upload. Aborting removes the upload. A part may
//! also be copied from (a range of) an object (UploadPartCopy), and a
//! bucket's uploads in progress are listed (ListMultipartUploads) in key
//! and then upload id order.

use std::sync::Arc;

use datenlord_fs::{Creds, FileKind, FsError, Ino, XattrFlags};
use md5::Digest as _;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyPartResult,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, ETag, ListMultipartUploadsInput,
    ListMultipartUploadsOutput, ListPartsInput, ListPartsOutput, MultipartUpload, Part,
    StreamingBlob, Timestamp, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput,
    UploadPartOutput,
};
use s3s::{S3ErrorCode, S3Result};

use super::conditions::WriteCondition;
use super::meta::{ObjectMeta, META_XATTR};
use super::tags::{Tags, TAGS_XATTR};
use super::{
    blocking, error, fs_error, hex, invalid_key, rand_u64, recorded_etag, Gateway, Stamp,
    ETAG_XATTR,
};
use crate::key::{segments, TEMP_PREFIX};

/// The attribute of an upload's directory naming its key.
const KEY_XATTR: &[u8] = b"user.datenlord.s3.upload-key";
/// Smallest part but the last (S3's rule).
pub const PART_MIN_BYTES: u64 = 5 << 20;
/// Highest part number.
pub const PART_NUMBER_MAX: i32 = 10_000;
/// Most parts a ListParts page holds.
const PARTS_PAGE_MAX: usize = 1000;
/// Most uploads a ListMultipartUploads page holds.
const UPLOADS_PAGE_MAX: usize = 1000;

/// The directory name of upload `id`.
fn upload_dir(id: &str) -> String {
    format!("{TEMP_PREFIX}upload-{id}")
}

/// The upload id of an upload directory's name.
fn upload_id(name: &str) -> Option<&str> {
    name.strip_prefix(TEMP_PREFIX)?
        .strip_prefix("upload-")
        .filter(|id| check_id(id).is_ok())
}

/// The bytes a `bytes=FIRST-LAST` copy range names of an object of
/// `size` bytes: `(offset, len)`.
fn copy_range(range: &str, size: u64) -> S3Result<(u64, u64)> {
    let bounds = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match bounds {
        Some((first, last)) if first <= last && last < size => Ok((first, last - first + 1)),
        Some(_) => Err(error(
            S3ErrorCode::InvalidRange,
            format!("copy range {range} is not within the source's {size} bytes"),
        )),
        None => Err(error(
            S3ErrorCode::InvalidArgument,
            format!("copy range {range:?}: give bytes=FIRST-LAST"),
        )),
    }
}

/// An upload in progress, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    key: String,
    id: String,
    initiated: (i64, u32),
}

/// One page of `uploads` (sorted by key, then id) as ListMultipartUploads
/// shows it: after the markers, under `prefix`, keys with `delimiter`
/// after the prefix rolled up into common prefixes, at most `max`
/// entries (uploads and prefixes); whether more follow.
fn page<'a>(
    uploads: &'a [Listed],
    prefix: &str,
    delimiter: Option<&str>,
    (key_marker, id_marker): (Option<&str>, Option<&str>),
    max: usize,
) -> (Vec<&'a Listed>, Vec<String>, bool) {
    let after = |u: &Listed| match (key_marker, id_marker) {
        (None, _) => true,
        (Some(k), None) => u.key.as_str() > k,
        (Some(k), Some(id)) => u.key.as_str() > k || (u.key == k && u.id.as_str() > id),
    };
    let (mut shown, mut prefixes) = (Vec::new(), Vec::<String>::new());
    for u in uploads
        .iter()
        .filter(|u| u.key.starts_with(prefix) && after(u))
    {
        let rolled = delimiter
            .filter(|d| !d.is_empty())
            .and_then(|d| {
                u.key[prefix.len()..]
                    .find(d)
                    .map(|at| prefix.len() + at + d.len())
            })
            .map(|end| u.key[..end].to_string());
        if let Some(common) = &rolled {
            if prefixes.last() == Some(common) {
                continue;
            }
        }
        if shown.len() + prefixes.len() == max {
            return (shown, prefixes, true);
        }
        match rolled {
            Some(common) => prefixes.push(common),
            None => shown.push(u),
        }
    }
    (shown, prefixes, false)
}

/// Whether `id` is an upload id this gateway gives out (32 hex digits).
fn check_id(id: &str) -> S3Result<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(no_such_upload(id))
    }
}

fn no_such_upload(id: &str) -> s3s::S3Error {
    error(
        S3ErrorCode::NoSuchUpload,
        format!("no multipart upload {id:?} (completed, aborted or never begun)"),
    )
}

fn part_name(number: i32) -> String {
    format!("{number:05}")
}

fn check_part_number(number: i32) -> S3Result<()> {
    if (1..=PART_NUMBER_MAX).contains(&number) {
        Ok(())
    } else {
        Err(error(
            S3ErrorCode::InvalidArgument,
            format!("part number {number}: give 1 to {PART_NUMBER_MAX}"),
        ))
    }
}

/// A part as stored: number, size, MD5 (hex), mtime.
struct Stored {
    number: i32,
    ino: Ino,
    size: u64,
    etag: String,
    modified: Timestamp,
}

impl Gateway {
    /// The bucket's directory and that of upload `id` for `key` in it.
    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        creds: &Creds,
    ) -> S3Result<(Ino, Ino)> {
        check_id(id)?;
        let root = self.bucket(bucket, creds).await?;
        let (fs, creds, name) = (Arc::clone(&self.fs), creds.clone(), upload_dir(id));
        let found = blocking(move || {
            let attr = fs.lookup(root, name.as_bytes(), &creds)?;
            let bound = fs.getxattr(attr.ino, KEY_XATTR, &creds)?;
            Ok::<_, FsError>((attr, bound))
        })
        .await?;
        match found {
            Ok((attr, bound)) if attr.kind == FileKind::Dir && bound == key.as_bytes() => {
                Ok((root, attr.ino))
            }
            Ok(_) => Err(no_such_upload(id)),
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ENODATA) => Err(no_such_upload(id)),
            Err(e) => Err(fs_error(&e, "looking the upload up")),
        }
    }

    /// The parts stored in upload directory `dir`, by number.
    async fn stored_parts(&self, dir: Ino, creds: &Creds) -> S3Result<Vec<Stored>> {
        let (fs, creds) = (Arc::clone(&self.fs), creds.clone());
        let parts = blocking(move || {
            let mut parts = Vec::new();
            for entry in Gateway::entries(&fs, dir, &creds)? {
                let Ok(number) = entry.name.parse::<i32>() else {
                    continue;
                };
                if entry.dir || entry.name != part_name(number) {
                    continue;
                }
                let attr = fs.getattr(Ino(entry.ino))?;
                let mtime = (attr.mtime.sec, attr.mtime.nsec);
                let Some(etag) = fs
                    .getxattr(attr.ino, ETAG_XATTR, &creds)
                    .ok()
                    .and_then(|v| recorded_etag(&v, attr.size, mtime))
                else {
                    continue;
                };
                parts.push(Stored {
                    number,
                    ino: attr.ino,
                    size: attr.size,
                    etag,
                    modified: super::timestamp(mtime),
                });
            }
            parts.sort_by_key(|p| p.number);
            Ok::<_, FsError>(parts)
        })
        .await?;
        parts.map_err(|e| fs_error(&e, "listing the upload's parts"))
    }

    /// Removes upload directory `name` (in the bucket's root `root`) and
    /// its files.
    async fn remove_upload(&self, root: Ino, name: &str, creds: &Creds) -> S3Result<()> {
        let (fs, creds, name) = (Arc::clone(&self.fs), creds.clone(), name.to_string());
        let removed = blocking(move || {
            let dir = fs.lookup(root, name.as_bytes(), &creds)?.ino;
            for entry in Gateway::entries(&fs, dir, &creds)? {
                futures::executor::block_on(fs.unlink(dir, entry.name.as_bytes(), &creds))?;
            }
            futures::executor::block_on(fs.rmdir(root, name.as_bytes(), &creds))
        })
        .await?;
        removed.map_err(|e| fs_error(&e, "removing the upload"))
    }

    pub(super) async fn create_upload(
        &self,
        input: CreateMultipartUploadInput,
        creds: &Creds,
    ) -> S3Result<CreateMultipartUploadOutput> {
        segments(&input.key).map_err(|why| invalid_key(&input.key, why))?;
        let meta = super::meta::requested_meta!(input)?.encode();
        let tags = Tags::from_header(input.tagging.as_deref())?;
        let tags = (!tags.is_empty()).then(|| tags.encode());
        let root = self.bucket(&input.bucket, creds).await?;
        let id = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        let (fs, creds, name, key) = (
            Arc::clone(&self.fs),
            creds.clone(),
            upload_dir(&id),
            input.key.clone(),
        );
        let made = blocking(move || {
            let dir = futures::executor::block_on(fs.mkdir(
                root,
                name.as_bytes(),
                datenlord_fs::CreateMode::masked(0o700),
                &creds,
            ))?;
            futures::executor::block_on(fs.setxattr(
                dir.ino,
                KEY_XATTR,
                key.as_bytes(),
                XattrFlags::default(),
                &creds,
            ))?;
            futures::executor::block_on(fs.setxattr(
                dir.ino,
                META_XATTR,
                &meta,
                XattrFlags::default(),
                &creds,
            ))?;
            match &tags {
                Some(tags) => futures::executor::block_on(fs.setxattr(
                    dir.ino,
                    TAGS_XATTR,
                    tags,
                    XattrFlags::default(),
                    &creds,
                )),
                None => Ok(()),
            }
        })
        .await?;
        made.map_err(|e| fs_error(&e, "beginning the upload"))?;
        Ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..CreateMultipartUploadOutput::default()
        })
    }

    pub(super) async fn upload_part_in(
        &self,
        input: UploadPartInput,
        creds: &Creds,
    ) -> S3Result<UploadPartOutput> {
        check_part_number(input.part_number)?;
        let (_, dir) = self
            .upload(&input.bucket, &input.key, &input.upload_id, creds)
            .await?;
        let body = input.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        });
        let (temp, ino, _, md5) = self.write_temp(dir, body, creds).await?;
        if let Err(e) = super::check_md5(input.content_md5.as_deref(), &md5) {
            self.remove_quietly(dir, &temp, creds).await;
            return Err(e);
        }
        let etag = hex(&md5);
        let name = part_name(input.part_number);
        let stamp = Stamp::plain(&etag);
        self.place(dir, &temp, &name, ino, stamp, &input.key, creds)
            .await?;
        Ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(etag)),
            ..UploadPartOutput::default()
        })
    }

    pub(super) async fn upload_part_copy_in(
        &self,
        input: UploadPartCopyInput,
        creds: &Creds,
    ) -> S3Result<UploadPartCopyOutput> {
        check_part_number(input.part_number)?;
        let (_, dir) = self
            .upload(&input.bucket, &input.key, &input.upload_id, creds)
            .await?;
        let source = self
            .copy_source(
                &input.copy_source,
                super::conditions::copy_source_conditions!(input),
                creds,
            )
            .await?;
        let (offset, len) = match &input.copy_source_range {
            None => (0, source.size),
            Some(range) => copy_range(range, source.size)?,
        };
        let (temp, ino, md5) = self
            .copy_into_temp(dir, vec![(source.ino, offset, len)], true, creds)
            .await?;
        let etag = hex(&md5.unwrap_or_default());
        let stamp = Stamp::plain(&etag);
        let name = part_name(input.part_number);
        self.place(dir, &temp, &name, ino, stamp, &input.key, creds)
            .await?;
        Ok(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(etag)),
                last_modified: Some(Timestamp::from(std::time::SystemTime::now())),
                ..CopyPartResult::default()
            }),
            ..UploadPartCopyOutput::default()
        })
    }

    pub(super) async fn list_uploads(
        &self,
        input: ListMultipartUploadsInput,
        creds: &Creds,
    ) -> S3Result<ListMultipartUploadsOutput> {
        let root = self.bucket(&input.bucket, creds).await?;
        let (fs, creds2) = (Arc::clone(&self.fs), creds.clone());
        let found = blocking(move || {
            let mut uploads = Vec::new();
            for entry in Gateway::entries(&fs, root, &creds2)? {
                let Some(id) = upload_id(&entry.name).filter(|_| entry.dir) else {
                    continue;
                };
                // An upload completed or aborted meanwhile is not listed.
                let (Ok(key), Ok(attr)) = (
                    fs.getxattr(Ino(entry.ino), KEY_XATTR, &creds2),
                    fs.getattr(Ino(entry.ino)),
                ) else {
                    continue;
                };
                let Ok(key) = String::from_utf8(key) else {
                    continue;
                };
                uploads.push(Listed {
                    key,
                    id: id.to_string(),
                    initiated: (attr.ctime.sec, attr.ctime.nsec),
                });
            }
            Ok::<_, FsError>(uploads)
        })
        .await?;
        let mut uploads = found.map_err(|e| fs_error(&e, "listing the bucket's uploads"))?;
        uploads.sort_by(|a, b| (&a.key, &a.id).cmp(&(&b.key, &b.id)));
        let max = usize::try_from(input.max_uploads.unwrap_or(1000))
            .unwrap_or(0)
            .min(UPLOADS_PAGE_MAX);
        let prefix = input.prefix.clone().unwrap_or_default();
        let markers = (
            input.key_marker.as_deref(),
            input.upload_id_marker.as_deref(),
        );
        let (shown, prefixes, truncated) =
            page(&uploads, &prefix, input.delimiter.as_deref(), markers, max);
        let last = shown.last();
        Ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            next_key_marker: truncated.then(|| last.map(|u| u.key.clone())).flatten(),
            next_upload_id_marker: truncated.then(|| last.map(|u| u.id.clone())).flatten(),
            max_uploads: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            is_truncated: Some(truncated),
            uploads: Some(
                shown
                    .into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key.clone()),
                        upload_id: Some(u.id.clone()),
                        initiated: Some(super::timestamp(u.initiated)),
                        ..MultipartUpload::default()
                    })
                    .collect(),
            ),
            common_prefixes: Some(
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect(),
            ),
            ..ListMultipartUploadsOutput::default()
        })
    }

    pub(super) async fn list_upload_parts(
        &self,
        input: ListPartsInput,
        creds: &Creds,
    ) -> S3Result<ListPartsOutput> {
        let (_, dir) = self
            .upload(&input.bucket, &input.key, &input.upload_id, creds)
            .await?;
        let marker = input.part_number_marker.unwrap_or(0);
        let max = usize::try_from(input.max_parts.unwrap_or(1000))
            .unwrap_or(0)
            .min(PARTS_PAGE_MAX);
        let mut parts: Vec<Stored> = self
            .stored_parts(dir, creds)
            .await?
            .into_iter()
            .filter(|p| p.number > marker)
            .collect();
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = parts.last().map(|p| p.number);
        Ok(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: next,
            max_parts: Some(i32::try_from(max).unwrap_or(i32::MAX)),
            parts: Some(
                parts
                    .into_iter()
                    .map(|p| Part {
                        part_number: Some(p.number),
                        size: Some(i64::try_from(p.size).unwrap_or(i64::MAX)),
                        e_tag: Some(ETag::Strong(p.etag)),
                        last_modified: Some(p.modified),
                        ..Part::default()
                    })
                    .collect(),
            ),
            ..ListPartsOutput::default()
        })
    }

    pub(super) async fn abort_upload(
        &self,
        input: AbortMultipartUploadInput,
        creds: &Creds,
    ) -> S3Result<AbortMultipartUploadOutput> {
        let (root, _) = self
            .upload(&input.bucket, &input.key, &input.upload_id, creds)
            .await?;
        self.remove_upload(root, &upload_dir(&input.upload_id), creds)
            .await?;
        Ok(AbortMultipartUploadOutput::default())
    }

    pub(super) async fn complete_upload(
        &self,
        input: CompleteMultipartUploadInput,
        creds: &Creds,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let key = input.key.clone();
        let condition = WriteCondition::new(input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let (root, upload) = self
            .upload(&input.bucket, &key, &input.upload_id, creds)
            .await?;
        let named: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0),
                    p.e_tag.map(|e| e.value().to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let stored = self.stored_parts(upload, creds).await?;
        let (fs, creds2) = (Arc::clone(&self.fs), creds.clone());
        let (meta, tags) = blocking(move || {
            (
                fs.getxattr(upload, META_XATTR, &creds2),
                fs.getxattr(upload, TAGS_XATTR, &creds2),
            )
        })
        .await?;
        let meta = meta.map(|m| ObjectMeta::decode(&m)).unwrap_or_default();
        let tags = tags.map(|t| Tags::decode(&t)).unwrap_or_default();
        let chosen = choose_parts(&named, &stored)?;
        // The object: the parts one after the other, placed as a PUT.
        let (dirs, name) = super::split_key(&key)?;
        let dir = self.make_dirs(root, dirs, &key, creds).await?;
        let sources: Vec<(Ino, u64, u64)> = chosen.iter().map(|p| (p.ino, 0, p.size)).collect();
        let (temp, ino, _) = self.copy_into_temp(dir, sources, false, creds).await?;
        let mut md5s = md5::Md5::new();
        for part in &chosen {
            md5s.update(unhex(&part.etag));
        }
        let etag = format!("{}-{}", hex(&md5s.finalize()), chosen.len());
        let stamp = Stamp {
            etag: &etag,
            meta: &meta,
            tags: &tags,
            condition: &condition,
        };
        self.place(dir, &temp, &name, ino, stamp, &key, creds)
            .await?;
        self.remove_upload(root, &upload_dir(&input.upload_id), creds)
            .await?;
        Ok(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(key),
            e_tag: Some(ETag::Strong(etag)),
            ..CompleteMultipartUploadOutput::default()
        })
    }
}

/// The stored parts a Complete request names, checked as S3 does.
fn choose_parts<'a>(named: &[(i32, String)], stored: &'a [Stored]) -> S3Result<Vec<&'a Stored>> {
    if named.is_empty() {
        return Err(error(
            S3ErrorCode::MalformedXML,
            "a complete request names no part",
        ));
    }
    let mut chosen = Vec::with_capacity(named.len());
    for (i, (number, etag)) in named.iter().enumerate() {
        if i > 0 && named[i - 1].0 >= *number {
            return Err(error(
                S3ErrorCode::InvalidPartOrder,
                "the parts must be named in ascending order, each once",
            ));
        }
        let part = stored
            .iter()
            .find(|p| p.number == *number)
            .filter(|p| p.etag == etag.trim_matches('"'))
            .ok_or_else(|| {
                error(
                    S3ErrorCode::InvalidPart,
                    format!("part {number} with ETag {etag} was not uploaded"),
                )
            })?;
        chosen.push(part);
    }
    if let Some(small) = chosen[..chosen.len() - 1]
        .iter()
        .find(|p| p.size < PART_MIN_BYTES)
    {
        return Err(error(
            S3ErrorCode::EntityTooSmall,
            format!(
                "part {} has {} bytes: every part but the last needs at least {PART_MIN_BYTES}",
                small.number, small.size
            ),
        ));
    }
    Ok(chosen)
}

/// The bytes of a hex MD5 (garbage gives what it gives: it was recorded by
/// this gateway).
fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: i32, size: u64, etag: &str) -> Stored {
        Stored {
            number,
            ino: Ino(100 + number as u64),
            size,
            etag: etag.into(),
            modified: Timestamp::from(std::time::UNIX_EPOCH),
        }
    }

    #[test]
    fn completes_name_uploaded_parts_in_order_and_big_enough() {
        let stored = vec![
            part(1, PART_MIN_BYTES, "aa"),
            part(2, PART_MIN_BYTES, "bb"),
            part(3, 10, "cc"),
        ];
        let name = |list: &[(i32, &str)]| -> Vec<(i32, String)> {
            list.iter().map(|(n, e)| (*n, format!("\"{e}\""))).collect()
        };
        let chosen = choose_parts(&name(&[(1, "aa"), (3, "cc")]), &stored).expect("parts");
        assert_eq!(chosen.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 3]);
        let code = |list: &[(i32, &str)]| {
            choose_parts(&name(list), &stored)
                .err()
                .map(|e| e.code().as_str().to_string())
        };
        assert_eq!(code(&[]).as_deref(), Some("MalformedXML"));
        assert_eq!(
            code(&[(2, "bb"), (1, "aa")]).as_deref(),
            Some("InvalidPartOrder")
        );
        assert_eq!(
            code(&[(1, "aa"), (1, "aa")]).as_deref(),
            Some("InvalidPartOrder")
        );
        assert_eq!(code(&[(1, "zz")]).as_deref(), Some("InvalidPart"));
        assert_eq!(code(&[(4, "dd")]).as_deref(), Some("InvalidPart"));
        assert_eq!(code(&[(3, "cc"), (9, "x")]).as_deref(), Some("InvalidPart"));
        let small = vec![part(1, 10, "aa"), part(2, 10, "bb")];
        assert_eq!(
            choose_parts(&name(&[(1, "aa"), (2, "bb")]), &small)
                .err()
                .map(|e| e.code().as_str().to_string())
                .as_deref(),
            Some("EntityTooSmall")
        );
    }

    #[test]
    fn copy_ranges_name_bytes_of_the_source() {
        assert_eq!(copy_range("bytes=0-9", 10).expect("range"), (0, 10));
        assert_eq!(copy_range("bytes=5-5", 10).expect("range"), (5, 1));
        let code = |r: &str| {
            copy_range(r, 10)
                .err()
                .map(|e| e.code().as_str().to_string())
        };
        assert_eq!(code("bytes=5-10").as_deref(), Some("InvalidRange"));
        assert_eq!(code("bytes=6-5").as_deref(), Some("InvalidRange"));
        assert_eq!(code("bytes=5-").as_deref(), Some("InvalidArgument"));
        assert_eq!(code("5-6").as_deref(), Some("InvalidArgument"));
    }

    #[test]
    fn upload_listings_page_by_key_then_id_and_roll_up_prefixes() {
        let u = |key: &str, id: &str| Listed {
            key: key.into(),
            id: id.into(),
            initiated: (0, 0),
        };
        let all = vec![
            u("a", "1"),
            u("a", "2"),
            u("b/x", "3"),
            u("b/y", "4"),
            u("c", "5"),
        ];
        let keys = |shown: &[&Listed]| -> Vec<(String, String)> {
            shown
                .iter()
                .map(|l| (l.key.clone(), l.id.clone()))
                .collect()
        };
        let (shown, prefixes, more) = page(&all, "", None, (None, None), 2);
        assert_eq!(
            keys(&shown),
            [("a".into(), "1".into()), ("a".into(), "2".into())]
        );
        assert!(prefixes.is_empty() && more);
        let (shown, _, more) = page(&all, "", None, (Some("a"), Some("1")), 2);
        assert_eq!(
            keys(&shown),
            [("a".into(), "2".into()), ("b/x".into(), "3".into())]
        );
        assert!(more);
        let (shown, _, more) = page(&all, "", None, (Some("a"), None), 10);
        assert_eq!(shown.len(), 3);
        assert!(!more);
        let (shown, prefixes, more) = page(&all, "", Some("/"), (None, None), 10);
        assert_eq!(shown.len(), 3);
        assert_eq!(prefixes, ["b/"]);
        assert!(!more);
        let (shown, prefixes, _) = page(&all, "b/", Some("/"), (None, None), 10);
        assert_eq!(shown.len(), 2);
        assert!(prefixes.is_empty());
        assert_eq!(
            upload_id(&upload_dir(&"a".repeat(32))),
            Some(&*"a".repeat(32))
        );
        assert_eq!(upload_id(&upload_dir("nothex")), None);
    }

    #[test]
    fn upload_ids_are_ours_or_no_such_upload() {
        assert!(check_id(&"a".repeat(32)).is_ok());
        for bad in ["", "../x", &"g".repeat(32), &"a".repeat(31)] {
            assert_eq!(
                check_id(bad)
                    .err()
                    .map(|e| e.code().as_str().to_string())
                    .as_deref(),
                Some("NoSuchUpload"),
                "{bad}"
            );
        }
        assert_eq!(unhex("00ff10"), [0, 255, 16]);
        assert!(check_part_number(0).is_err() && check_part_number(10_001).is_err());
        assert!(check_part_number(1).is_ok() && check_part_number(10_000).is_ok());
    }
}
