"""What the gateway's boto3 scripts share: the command line
(ENDPOINT MOUNTPOINT ACCESS_KEY SECRET_KEY), a path-style client, and the
error code of a call that must fail."""

import sys

import boto3
import botocore
from botocore.config import Config

endpoint, mount, access, secret = sys.argv[1:5]


def client(secret_key=secret, access_key=access, verify=None, endpoint_url=endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        verify=verify,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def code(call):
    """The S3 error code of a call that must fail."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("the call succeeded")
