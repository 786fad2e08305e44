"""The gateway over HTTPS (run by tests/s3_gateway.rs):
python3 tls.py ENDPOINT - ACCESS SECRET CA_FILE io|serial

io: a client trusting CA_FILE stores and reads an object; one trusting
only the system's CAs, and plain HTTP to the same port, get nowhere.
serial: prints the serial number of the certificate the gateway serves."""

import socket
import ssl
import sys
import urllib.parse

import botocore
from common import client, endpoint

ca_file, step = sys.argv[5], sys.argv[6]
url = urllib.parse.urlparse(endpoint)

if step == "serial":
    context = ssl.create_default_context(cafile=ca_file)
    with socket.create_connection((url.hostname, url.port)) as raw:
        with context.wrap_socket(raw, server_hostname=url.hostname) as tls:
            print(tls.getpeercert()["serialNumber"])
    sys.exit(0)

s3 = client(verify=ca_file)
s3.create_bucket(Bucket="secure")
s3.put_object(Bucket="secure", Key="k", Body=b"over TLS")
assert s3.get_object(Bucket="secure", Key="k")["Body"].read() == b"over TLS"
try:
    client().list_buckets()
    raise AssertionError("a client that does not trust the cluster CA connected")
except botocore.exceptions.SSLError:
    pass
plain = client(endpoint_url=endpoint.replace("https://", "http://"))
try:
    plain.list_buckets()
    raise AssertionError("plain HTTP was served")
except (botocore.exceptions.ConnectionError, botocore.exceptions.ClientError, botocore.exceptions.HTTPClientError):
    pass
s3.delete_object(Bucket="secure", Key="k")
s3.delete_bucket(Bucket="secure")
print("tls: ok")
