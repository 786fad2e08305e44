"""The gateway checks file permissions as the uid/gid its access key acts
as (run by tests/s3_gateway.rs with DATENLORD_S3_IDS=65534:65534):
python3 permissions.py ENDPOINT MOUNTPOINT ACCESS_KEY SECRET_KEY

The test made, as root on the mount: `closed/` (0755, root's),
`open/` (0777) and `open/secret` (0600, root's)."""

import os

from common import client, code, mount

s3 = client()

assert code(lambda: s3.put_object(Bucket="closed", Key="x", Body=b"x")) == "AccessDenied"
assert code(lambda: s3.create_bucket(Bucket="mine")) == "AccessDenied", "the root directory is root's"
assert code(lambda: s3.get_object(Bucket="open", Key="secret")) == "AccessDenied"
s3.put_object(Bucket="open", Key="by/nobody", Body=b"hello")
st = os.stat(os.path.join(mount, "open", "by", "nobody"))
assert (st.st_uid, st.st_gid) == (65534, 65534), (st.st_uid, st.st_gid)
assert s3.get_object(Bucket="open", Key="by/nobody")["Body"].read() == b"hello"
# A large object streams through in both directions.
big = os.urandom(64 * 2**20 + 7)
s3.put_object(Bucket="open", Key="big", Body=big)
assert s3.get_object(Bucket="open", Key="big")["Body"].read() == big
with open(os.path.join(mount, "open", "big"), "rb") as f:
    assert f.read() == big
print("permissions: ok")
