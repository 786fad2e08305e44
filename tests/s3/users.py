"""Several users from a credentials file (run by tests/s3_gateway.rs):
python3 users.py ENDPOINT MOUNTPOINT ACCESS SECRET. ACCESS is root's key;
"bound" (uid 65534, secret "bound-secret") may use bucket "open" only.
The test made `open/` and `closed/` (0777) on the mount."""

import os

from common import client, code, mount

admin = client()
bound = client("bound-secret", "bound")

assert sorted(b["Name"] for b in admin.list_buckets()["Buckets"]) == ["closed", "open"]
assert [b["Name"] for b in bound.list_buckets()["Buckets"]] == ["open"], "a bound key sees its buckets"
bound.put_object(Bucket="open", Key="mine", Body=b"by bound")
assert os.stat(os.path.join(mount, "open", "mine")).st_uid == 65534
admin.put_object(Bucket="closed", Key="theirs", Body=b"by root")
assert code(lambda: bound.put_object(Bucket="closed", Key="x", Body=b"x")) == "AccessDenied"
assert code(lambda: bound.get_object(Bucket="closed", Key="theirs")) == "AccessDenied"
assert code(lambda: bound.list_objects_v2(Bucket="closed")) == "AccessDenied"
assert code(lambda: bound.copy_object(
    Bucket="open", Key="stolen", CopySource={"Bucket": "closed", "Key": "theirs"},
)) == "AccessDenied", "the copy's source bucket is checked too"
assert code(lambda: bound.create_bucket(Bucket="another")) == "AccessDenied"
assert code(lambda: client("x", "unknown").list_buckets()) == "InvalidAccessKeyId"
assert code(lambda: client("wrong", "bound").list_buckets()) == "SignatureDoesNotMatch"
print("users: ok")
