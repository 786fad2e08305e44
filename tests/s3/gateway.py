"""The S3 gateway through boto3 (a real S3 client), run by tests/s3_gateway.rs:
python3 gateway.py ENDPOINT MOUNTPOINT ACCESS_KEY SECRET_KEY

Every step says what it checks; the first failure ends the run with a
traceback and exit status 1."""

import hashlib
import io
import os
import time
import urllib.request

from boto3.s3.transfer import TransferConfig

from common import client, code, mount

s3 = client()


def on_mount(*parts):
    return os.path.join(mount, *parts)


# Buckets are the volume's top-level directories.
s3.create_bucket(Bucket="data")
assert os.path.isdir(on_mount("data")), "a bucket is a directory on the mount"
assert code(lambda: s3.create_bucket(Bucket="data")) == "BucketAlreadyOwnedByYou"
assert "data" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
s3.head_bucket(Bucket="data")
assert code(lambda: s3.head_bucket(Bucket="nope")) in ("404", "NoSuchBucket")

# A PUT (3 MiB and a bit: several blocks) is a file on the mount.
body = os.urandom(3 * 2**20 + 123)
put = s3.put_object(Bucket="data", Key="dir/sub/obj", Body=body)
assert put["ETag"].strip('"') == hashlib.md5(body).hexdigest(), put["ETag"]
with open(on_mount("data", "dir", "sub", "obj"), "rb") as f:
    assert f.read() == body, "the mount reads what S3 wrote"
got = s3.get_object(Bucket="data", Key="dir/sub/obj")
assert got["Body"].read() == body
assert got["ETag"] == put["ETag"]
head = s3.head_object(Bucket="data", Key="dir/sub/obj")
assert head["ContentLength"] == len(body) and head["ETag"] == put["ETag"]

# Ranges, across a block edge and from the end.
edge = 2**20
got = s3.get_object(Bucket="data", Key="dir/sub/obj", Range=f"bytes={edge - 6}-{edge + 9}")
assert got["Body"].read() == body[edge - 6 : edge + 10]
assert got["ContentRange"] == f"bytes {edge - 6}-{edge + 9}/{len(body)}", got["ContentRange"]
got = s3.get_object(Bucket="data", Key="dir/sub/obj", Range="bytes=-100")
assert got["Body"].read() == body[-100:]
assert code(lambda: s3.get_object(Bucket="data", Key="dir/sub/obj", Range=f"bytes={len(body)}-")) == "InvalidRange"

# A file written on the mount is an object; an overwrite through S3 shows
# on the mount at once (the kernel keeps an embedded mount's names and
# attributes for a day unless told).
with open(on_mount("data", "local.txt"), "wb") as f:
    f.write(b"from the mount")
assert s3.get_object(Bucket="data", Key="local.txt")["Body"].read() == b"from the mount"
assert os.stat(on_mount("data", "local.txt")).st_size == 14
s3.put_object(Bucket="data", Key="local.txt", Body=b"replaced through S3, and longer")
with open(on_mount("data", "local.txt"), "rb") as f:
    assert f.read() == b"replaced through S3, and longer", "the mount sees the new object"
assert os.stat(on_mount("data", "local.txt")).st_size == 31
assert not [n for n in os.listdir(on_mount("data")) if n.startswith(".datenlord-s3-")], "no temporary left"

# Listings: in key order, paged, with delimiters.
keys = [f"many/k{i:03}" for i in range(25)]
for key in reversed(keys):
    s3.put_object(Bucket="data", Key=key, Body=key.encode())
pages = list(
    s3.get_paginator("list_objects_v2").paginate(Bucket="data", Prefix="many/", PaginationConfig={"PageSize": 7})
)
listed = [o["Key"] for p in pages for o in p.get("Contents", [])]
assert listed == keys, listed
assert len(pages) == 4, len(pages)
top = s3.list_objects_v2(Bucket="data", Delimiter="/")
assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir/", "many/"], top
assert [o["Key"] for o in top["Contents"]] == ["local.txt"], top
assert top["KeyCount"] == 3
first = s3.list_objects(Bucket="data", Prefix="many/", MaxKeys=10)
assert first["IsTruncated"] and len(first["Contents"]) == 10
rest = s3.list_objects(Bucket="data", Prefix="many/", Marker=first["Contents"][-1]["Key"])
assert [o["Key"] for o in first["Contents"] + rest["Contents"]] == keys
after = s3.list_objects_v2(Bucket="data", StartAfter="many/k020")
assert [o["Key"] for o in after["Contents"]] == keys[21:]
# A thousand keys in ten folders: default pages of 1,000, pages of 250,
# and a delimiter rolling them into ten prefixes.
thousand = [f"thousand/d{i % 10}/k{i:04}" for i in range(1000)]
for key in thousand:
    s3.put_object(Bucket="data", Key=key, Body=b"")
whole = s3.list_objects_v2(Bucket="data", Prefix="thousand/")
assert whole["KeyCount"] == 1000 and not whole["IsTruncated"], whole["KeyCount"]
assert [o["Key"] for o in whole["Contents"]] == sorted(thousand)
pages = list(s3.get_paginator("list_objects_v2").paginate(
    Bucket="data", Prefix="thousand/", PaginationConfig={"PageSize": 250}))
assert [len(p["Contents"]) for p in pages] == [250] * 4
assert [o["Key"] for p in pages for o in p["Contents"]] == sorted(thousand)
folders = s3.list_objects_v2(Bucket="data", Prefix="thousand/", Delimiter="/")
assert [p["Prefix"] for p in folders["CommonPrefixes"]] == [f"thousand/d{i}/" for i in range(10)]
v1 = list(s3.get_paginator("list_objects").paginate(Bucket="data", Prefix="thousand/d3/", PaginationConfig={"PageSize": 30}))
assert sum(len(p["Contents"]) for p in v1) == 100 and len(v1) == 4
gone = s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": k} for k in thousand], "Quiet": True})
assert not gone.get("Errors"), gone
assert not os.path.exists(on_mount("data", "thousand"))

# boto3 asks for url-encoded listings: keys with any characters come back.
odd = "odd dir/sp ace+ü%x&<y>"
s3.put_object(Bucket="data", Key=odd, Body=b"odd")
assert [o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix="odd dir/")["Contents"]] == [odd]
assert [o["Key"] for o in s3.list_objects(Bucket="data", Prefix="odd")["Contents"]] == [odd]
assert [p["Prefix"] for p in s3.list_objects_v2(Bucket="data", Prefix="odd", Delimiter="/")["CommonPrefixes"]] == ["odd dir/"]
with open(on_mount("data", "odd dir", "sp ace+ü%x&<y>"), "rb") as f:
    assert f.read() == b"odd"
s3.delete_object(Bucket="data", Key=odd)

# Errors S3 clients expect.
assert code(lambda: s3.get_object(Bucket="data", Key="missing")) == "NoSuchKey"
assert code(lambda: s3.get_object(Bucket="nope", Key="x")) == "NoSuchBucket"
assert code(lambda: s3.get_object(Bucket="data", Key="dir")) == "NoSuchKey", "a folder is no object"
assert code(lambda: s3.delete_bucket(Bucket="data")) == "BucketNotEmpty"
assert code(lambda: s3.put_object(Bucket="data", Key="folder/", Body=b"")) == "InvalidArgument"
assert code(lambda: s3.put_object(Bucket="data", Key="a/../b", Body=b"")) == "InvalidArgument"
assert code(lambda: s3.put_object(Bucket="data", Key="local.txt/inner", Body=b"")) == "InvalidArgument"
assert code(lambda: s3.put_object(Bucket="data", Key="dir", Body=b"")) == "InvalidArgument"
assert code(lambda: s3.put_object(Bucket="data", Key="md5", Body=b"abc", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==")) == "BadDigest"
assert not os.path.exists(on_mount("data", "md5")), "a refused PUT leaves nothing"
assert code(lambda: client("wrong").list_buckets()) == "SignatureDoesNotMatch"

# A presigned GET works without credentials; a tampered one does not.
url = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "local.txt"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == b"replaced through S3, and longer"
try:
    urllib.request.urlopen(url.replace("local.txt", "many/k000"))
    raise AssertionError("a presigned URL opened another key")
except urllib.error.HTTPError as e:
    assert e.code == 403, e.code

# An expired presigned URL is refused.
expired = s3.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "local.txt"}, ExpiresIn=1)
time.sleep(2)
try:
    urllib.request.urlopen(expired)
    raise AssertionError("an expired presigned URL was served")
except urllib.error.HTTPError as e:
    assert e.code == 403, e.code

# Conditional reads (RFC 9110 order, as S3 applies them).
import datetime

etag = s3.head_object(Bucket="data", Key="local.txt")["ETag"]
future = datetime.datetime(2100, 1, 1, tzinfo=datetime.timezone.utc)
past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
assert s3.get_object(Bucket="data", Key="local.txt", IfMatch=etag)["Body"].read().startswith(b"replaced")
assert code(lambda: s3.get_object(Bucket="data", Key="local.txt", IfMatch='"nope"')) in ("PreconditionFailed", "412")
assert code(lambda: s3.get_object(Bucket="data", Key="local.txt", IfNoneMatch=etag)) in ("NotModified", "304")
assert code(lambda: s3.head_object(Bucket="data", Key="local.txt", IfModifiedSince=future)) in ("NotModified", "304")
assert code(lambda: s3.head_object(Bucket="data", Key="local.txt", IfUnmodifiedSince=past)) in ("PreconditionFailed", "412")
assert s3.get_object(Bucket="data", Key="local.txt", IfModifiedSince=past)["ContentLength"] == 31

# CopyObject: the same bytes and ETag under another key, conditions on
# the source honoured.
copied = s3.copy_object(Bucket="data", Key="copies/one", CopySource={"Bucket": "data", "Key": "local.txt"})
assert copied["CopyObjectResult"]["ETag"] == etag, copied
with open(on_mount("data", "copies", "one"), "rb") as f:
    assert f.read() == b"replaced through S3, and longer"
assert code(lambda: s3.copy_object(
    Bucket="data", Key="copies/two", CopySource={"Bucket": "data", "Key": "local.txt"}, CopySourceIfMatch='"nope"',
)) == "PreconditionFailed"
assert code(lambda: s3.copy_object(Bucket="data", Key="copies/two", CopySource={"Bucket": "data", "Key": "missing"})) == "NoSuchKey"
s3.delete_object(Bucket="data", Key="copies/one")

# Object metadata: headers and x-amz-meta-* kept with the object, copied
# with it unless replaced; too much user metadata is refused.
s3.put_object(
    Bucket="data", Key="meta.json", Body=b"{}", ContentType="application/json",
    CacheControl="max-age=60", Metadata={"owner": "ml-team", "run": "42"},
)
head = s3.head_object(Bucket="data", Key="meta.json")
assert head["ContentType"] == "application/json" and head["CacheControl"] == "max-age=60", head
assert head["Metadata"] == {"owner": "ml-team", "run": "42"}, head["Metadata"]
assert s3.get_object(Bucket="data", Key="meta.json")["ContentType"] == "application/json"
s3.copy_object(Bucket="data", Key="meta-copy", CopySource={"Bucket": "data", "Key": "meta.json"})
assert s3.head_object(Bucket="data", Key="meta-copy")["Metadata"] == {"owner": "ml-team", "run": "42"}
s3.copy_object(
    Bucket="data", Key="meta-copy", CopySource={"Bucket": "data", "Key": "meta.json"},
    MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"owner": "other"},
)
head = s3.head_object(Bucket="data", Key="meta-copy")
assert head["ContentType"] == "text/plain" and head["Metadata"] == {"owner": "other"}, head
assert code(lambda: s3.put_object(Bucket="data", Key="big-meta", Body=b"x", Metadata={"k": "v" * 3000})) == "MetadataTooLarge"
s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": "meta.json"}, {"Key": "meta-copy"}]})

# Multipart uploads: boto3's transfer manager splits a 20 MiB file into
# 5 MiB parts; the object is their concatenation with a "-N" ETag.
large = os.urandom(20 * 2**20 + 5)
s3.upload_fileobj(
    io.BytesIO(large), "data", "multi/part", ExtraArgs={"ContentType": "application/octet-stream", "Metadata": {"kind": "checkpoint"}},
    Config=TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=2),
)
head = s3.head_object(Bucket="data", Key="multi/part")
assert head["ContentLength"] == len(large) and head["ETag"].strip('"').endswith("-5"), head["ETag"]
assert head["Metadata"] == {"kind": "checkpoint"} and head["ContentType"] == "application/octet-stream", head
with open(on_mount("data", "multi", "part"), "rb") as f:
    assert f.read() == large, "the mount reads the joined parts"
assert not [n for n in os.listdir(on_mount("data")) if n.startswith(".datenlord-s3-")], "the upload is gone"
# By hand: parts listed, a part sent again replaces it, order and size
# rules, abort.
up = s3.create_multipart_upload(Bucket="data", Key="manual")["UploadId"]
p1 = s3.upload_part(Bucket="data", Key="manual", UploadId=up, PartNumber=1, Body=b"a" * (5 * 2**20))
p2 = s3.upload_part(Bucket="data", Key="manual", UploadId=up, PartNumber=2, Body=b"old")
p2 = s3.upload_part(Bucket="data", Key="manual", UploadId=up, PartNumber=2, Body=b"tail")
parts = s3.list_parts(Bucket="data", Key="manual", UploadId=up)["Parts"]
assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * 2**20), (2, 4)], parts
assert code(lambda: s3.complete_multipart_upload(
    Bucket="data", Key="manual", UploadId=up,
    MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": p2["ETag"]}, {"PartNumber": 1, "ETag": p1["ETag"]}]},
)) == "InvalidPartOrder"
assert code(lambda: s3.complete_multipart_upload(
    Bucket="data", Key="manual", UploadId=up,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]},
)) == "InvalidPart"
assert code(lambda: s3.get_object(Bucket="data", Key="manual")) == "NoSuchKey", "nothing before complete"
s3.complete_multipart_upload(
    Bucket="data", Key="manual", UploadId=up,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]},
)
assert s3.get_object(Bucket="data", Key="manual")["Body"].read() == b"a" * (5 * 2**20) + b"tail"
assert code(lambda: s3.list_parts(Bucket="data", Key="manual", UploadId=up)) == "NoSuchUpload"
small = s3.create_multipart_upload(Bucket="data", Key="small")["UploadId"]
q1 = s3.upload_part(Bucket="data", Key="small", UploadId=small, PartNumber=1, Body=b"x")
q2 = s3.upload_part(Bucket="data", Key="small", UploadId=small, PartNumber=2, Body=b"y")
assert code(lambda: s3.complete_multipart_upload(
    Bucket="data", Key="small", UploadId=small,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": q1["ETag"]}, {"PartNumber": 2, "ETag": q2["ETag"]}]},
)) == "EntityTooSmall"
assert code(lambda: s3.upload_part(Bucket="data", Key="other", UploadId=small, PartNumber=3, Body=b"z")) == "NoSuchUpload"
s3.abort_multipart_upload(Bucket="data", Key="small", UploadId=small)
assert code(lambda: s3.abort_multipart_upload(Bucket="data", Key="small", UploadId=small)) == "NoSuchUpload"
assert not [n for n in os.listdir(on_mount("data")) if n.startswith(".datenlord-s3-")], "aborted: nothing left"
# Parts copied from objects (whole, and a byte range), uploads in
# progress listed by key then id, with prefixes and pages.
src = os.urandom(6 * 2**20)
s3.put_object(Bucket="data", Key="copy/src", Body=src)
joined = s3.create_multipart_upload(Bucket="data", Key="copy/joined", Tagging="origin=copy")["UploadId"]
c1 = s3.upload_part_copy(Bucket="data", Key="copy/joined", UploadId=joined, PartNumber=1,
                         CopySource={"Bucket": "data", "Key": "copy/src"})["CopyPartResult"]
c2 = s3.upload_part_copy(Bucket="data", Key="copy/joined", UploadId=joined, PartNumber=2,
                         CopySource={"Bucket": "data", "Key": "copy/src"}, CopySourceRange="bytes=10-1033")["CopyPartResult"]
assert c1["ETag"].strip('"') == hashlib.md5(src).hexdigest(), c1
assert c2["ETag"].strip('"') == hashlib.md5(src[10:1034]).hexdigest(), c2
assert code(lambda: s3.upload_part_copy(Bucket="data", Key="copy/joined", UploadId=joined, PartNumber=3,
                                        CopySource={"Bucket": "data", "Key": "copy/src"},
                                        CopySourceRange=f"bytes=0-{len(src)}")) == "InvalidRange"
assert code(lambda: s3.upload_part_copy(Bucket="data", Key="copy/joined", UploadId=joined, PartNumber=3,
                                        CopySource={"Bucket": "data", "Key": "copy/none"})) == "NoSuchKey"
ids = {s3.create_multipart_upload(Bucket="data", Key=k)["UploadId"]: k for k in ["up/a", "up/b", "up/b", "zz"]}
listed = s3.list_multipart_uploads(Bucket="data")["Uploads"]
order = [(u["Key"], u["UploadId"]) for u in listed]
assert order == sorted(order) and len(order) == 5, order
assert {u["UploadId"]: u["Key"] for u in listed if u["Key"] != "copy/joined"} == ids
rolled = s3.list_multipart_uploads(Bucket="data", Delimiter="/")
assert [p["Prefix"] for p in rolled["CommonPrefixes"]] == ["copy/", "up/"], rolled
assert [u["Key"] for u in rolled["Uploads"]] == ["zz"], rolled
first = s3.list_multipart_uploads(Bucket="data", Prefix="up/", MaxUploads=2)
assert first["IsTruncated"] and len(first["Uploads"]) == 2, first
rest = s3.list_multipart_uploads(Bucket="data", Prefix="up/", KeyMarker=first["NextKeyMarker"],
                                 UploadIdMarker=first["NextUploadIdMarker"])
assert not rest["IsTruncated"] and [u["Key"] for u in rest["Uploads"]] == ["up/b"], rest
for upload_id, k in ids.items():
    s3.abort_multipart_upload(Bucket="data", Key=k, UploadId=upload_id)
s3.complete_multipart_upload(
    Bucket="data", Key="copy/joined", UploadId=joined,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": c1["ETag"]}, {"PartNumber": 2, "ETag": c2["ETag"]}]},
)
with open(on_mount("data", "copy", "joined"), "rb") as f:
    assert f.read() == src + src[10:1034], "the mount reads the copied parts"
assert s3.list_multipart_uploads(Bucket="data").get("Uploads", []) == []

# Conditional writes: If-None-Match: * creates only, If-Match replaces
# only the version named.
first = s3.put_object(Bucket="data", Key="cond", Body=b"one", IfNoneMatch="*")
assert code(lambda: s3.put_object(Bucket="data", Key="cond", Body=b"two", IfNoneMatch="*")) == "PreconditionFailed"
assert code(lambda: s3.put_object(Bucket="data", Key="cond", Body=b"two", IfMatch='"0000"')) == "PreconditionFailed"
assert code(lambda: s3.put_object(Bucket="data", Key="cond-none", Body=b"x", IfMatch=first["ETag"])) == "NoSuchKey"
s3.put_object(Bucket="data", Key="cond", Body=b"three", IfMatch=first["ETag"])
assert s3.get_object(Bucket="data", Key="cond")["Body"].read() == b"three"
assert not [n for n in os.listdir(on_mount("data")) if n.startswith(".datenlord-s3-")], "refused writes leave nothing"
s3.delete_object(Bucket="data", Key="cond")

# Tags: set by a PUT's header, a CreateMultipartUpload (above), a copy
# with REPLACE, or PutObjectTagging; counted by GET; S3's limits.
tagged = s3.get_object_tagging(Bucket="data", Key="copy/joined")["TagSet"]
assert tagged == [{"Key": "origin", "Value": "copy"}], tagged
s3.put_object(Bucket="data", Key="tagged", Body=b"t", Tagging="team=storage&note=a%20b")
assert s3.get_object(Bucket="data", Key="tagged")["TagCount"] == 2
assert s3.get_object_tagging(Bucket="data", Key="tagged")["TagSet"] == [
    {"Key": "team", "Value": "storage"}, {"Key": "note", "Value": "a b"}]
s3.copy_object(Bucket="data", Key="tag-copy", CopySource={"Bucket": "data", "Key": "tagged"})
assert len(s3.get_object_tagging(Bucket="data", Key="tag-copy")["TagSet"]) == 2, "copied with the object"
s3.copy_object(Bucket="data", Key="tag-copy", CopySource={"Bucket": "data", "Key": "tagged"},
               TaggingDirective="REPLACE", Tagging="only=one")
assert s3.get_object_tagging(Bucket="data", Key="tag-copy")["TagSet"] == [{"Key": "only", "Value": "one"}]
s3.put_object_tagging(Bucket="data", Key="tagged", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
assert s3.get_object_tagging(Bucket="data", Key="tagged")["TagSet"] == [{"Key": "k", "Value": "v"}]
too_many = {"TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]}
assert code(lambda: s3.put_object_tagging(Bucket="data", Key="tagged", Tagging=too_many)) == "InvalidTag"
assert code(lambda: s3.put_object(Bucket="data", Key="bad-tags", Body=b"x", Tagging="a=1&a=2")) == "InvalidTag"
assert code(lambda: s3.get_object_tagging(Bucket="data", Key="no-such")) == "NoSuchKey"
s3.delete_object_tagging(Bucket="data", Key="tagged")
assert s3.get_object_tagging(Bucket="data", Key="tagged")["TagSet"] == []
assert "TagCount" not in s3.get_object(Bucket="data", Key="tagged")
s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": k} for k in ["tagged", "tag-copy", "copy/src", "copy/joined"]]})

s3.delete_object(Bucket="data", Key="multi/part")
s3.delete_object(Bucket="data", Key="manual")

# Deletes: folders emptied by them go too; a missing key is no error.
result = s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": k} for k in keys]})
assert len(result["Deleted"]) == 25 and not result.get("Errors"), result
assert not os.path.exists(on_mount("data", "many")), "the emptied folder is gone"
s3.delete_object(Bucket="data", Key="dir/sub/obj")
assert not os.path.exists(on_mount("data", "dir")), "emptied folders up to the bucket are gone"
s3.delete_object(Bucket="data", Key="missing")
s3.delete_object(Bucket="data", Key="local.txt")
assert not os.path.exists(on_mount("data", "local.txt")), "the mount forgets a deleted object"
s3.delete_bucket(Bucket="data")
assert not os.path.exists(on_mount("data")), "a deleted bucket is gone from the mount"
print("gateway: ok")
