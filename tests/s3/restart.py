"""`datenlord gateway` keeps what it stored across a restart (run by
tests/s3_gateway.rs): python3 restart.py ENDPOINT - ACCESS SECRET put|check"""

import sys

from common import client

s3 = client()
BODY = b"stored by a gateway without a mount\n" * 1000
if sys.argv[5] == "put":
    s3.create_bucket(Bucket="kept")
    s3.put_object(Bucket="kept", Key="a/b", Body=BODY)
    assert s3.get_object(Bucket="kept", Key="a/b")["Body"].read() == BODY
else:
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
    assert s3.get_object(Bucket="kept", Key="a/b")["Body"].read() == BODY
print("restart: ok")
