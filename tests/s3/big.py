"""A 1 GiB object through the gateway (run by tests/s3_gateway.rs):
python3 big.py ENDPOINT MOUNTPOINT ACCESS SECRET

One streamed PUT of 1 GiB, read back whole by a GET and compared; then a
multipart upload of 1 GiB in 16 MiB parts (four at once), its size and
last bytes checked. The bytes are made as they are sent (a pattern with a
prime period, so a shifted or repeated block shows), never held whole."""

import io
import os

from boto3.s3.transfer import TransferConfig
from common import client, mount

SIZE = 2**30
PERIOD = 1_000_003
UNIT = bytes((i * 7 + 3) % 251 for i in range(PERIOD))


def pattern(start, n):
    out = bytearray()
    while n:
        at = start % PERIOD
        take = min(n, PERIOD - at)
        out += UNIT[at:at + take]
        start += take
        n -= take
    return bytes(out)


class Pattern(io.RawIOBase):
    """SIZE bytes of the pattern, readable and seekable."""

    def __init__(self):
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: SIZE}[whence]
        self.pos = max(0, min(SIZE, base + offset))
        return self.pos

    def readinto(self, buffer):
        n = min(len(buffer), SIZE - self.pos)
        buffer[:n] = pattern(self.pos, n)
        self.pos += n
        return n


s3 = client()
s3.create_bucket(Bucket="big")
single = TransferConfig(multipart_threshold=4 * SIZE)
s3.upload_fileobj(io.BufferedReader(Pattern(), 8 * 2**20), "big", "one", Config=single)
body = s3.get_object(Bucket="big", Key="one")["Body"]
at = 0
while True:
    chunk = body.read(8 * 2**20)
    if not chunk:
        break
    assert chunk == pattern(at, len(chunk)), f"bytes at {at} differ"
    at += len(chunk)
assert at == SIZE, at
assert os.stat(os.path.join(mount, "big", "one")).st_size == SIZE

parts = TransferConfig(multipart_threshold=16 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)
s3.upload_fileobj(io.BufferedReader(Pattern(), 8 * 2**20), "big", "parts", Config=parts)
head = s3.head_object(Bucket="big", Key="parts")
assert head["ContentLength"] == SIZE and head["ETag"].strip('"').endswith("-64"), head
tail = s3.get_object(Bucket="big", Key="parts", Range=f"bytes={SIZE - 2**20}-")["Body"].read()
assert tail == pattern(SIZE - 2**20, 2**20)
s3.delete_objects(Bucket="big", Delete={"Objects": [{"Key": "one"}, {"Key": "parts"}]})
s3.delete_bucket(Bucket="big")
print("big: ok")
