#!/usr/bin/env bash
# The AWS CLI against the gateway (run by tests/s3_gateway.rs):
#   cli.sh ENDPOINT MOUNTPOINT ACCESS SECRET
# mb, cp both ways (a 20 MiB file: the CLI's multipart upload and ranged
# parallel download), a server-side copy of it (the CLI copies objects
# over 8 MiB with UploadPartCopy), sync, ls, tagging through s3api, rm
# --recursive, rb; each result checked on the mount too.
set -euo pipefail
endpoint=$1 mount=$2
export AWS_ACCESS_KEY_ID=$3 AWS_SECRET_ACCESS_KEY=$4 AWS_DEFAULT_REGION=us-east-1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export AWS_CONFIG_FILE=$work/config AWS_SHARED_CREDENTIALS_FILE=$work/credentials
printf '[default]\ns3 =\n    addressing_style = path\n' > "$AWS_CONFIG_FILE"
aws=(aws --endpoint-url "$endpoint")

"${aws[@]}" s3 mb s3://cli
head -c $((20 * 1024 * 1024 + 17)) /dev/urandom > "$work/big"
"${aws[@]}" s3 cp --quiet "$work/big" s3://cli/in/big
cmp "$work/big" "$mount/cli/in/big"
"${aws[@]}" s3 cp --quiet s3://cli/in/big "$work/back"
cmp "$work/big" "$work/back"
"${aws[@]}" s3 cp --quiet s3://cli/in/big s3://cli/copied/big
cmp "$work/big" "$mount/cli/copied/big"
mkdir -p "$work/tree/sub"
for i in 1 2 3; do echo "file $i" > "$work/tree/f$i"; done
echo nested > "$work/tree/sub/n"
"${aws[@]}" s3 sync --quiet "$work/tree" s3://cli/tree
diff -r "$work/tree" "$mount/cli/tree"
echo changed > "$work/tree/f2"
"${aws[@]}" s3 sync --quiet "$work/tree" s3://cli/tree
[[ $(cat "$mount/cli/tree/f2") == changed ]]
listed=$("${aws[@]}" s3 ls s3://cli/tree/)
grep -q 'PRE sub/' <<<"$listed"
[[ $(grep -c ' f[123]$' <<<"$listed") == 3 ]]
"${aws[@]}" s3api put-object-tagging --bucket cli --key tree/f1 --tagging 'TagSet=[{Key=k,Value=v}]'
[[ $("${aws[@]}" s3api get-object-tagging --bucket cli --key tree/f1 --query 'TagSet[0].Value' --output text) == v ]]
"${aws[@]}" s3 rm --quiet --recursive s3://cli/
[[ -z $(ls -A "$mount/cli") ]]
"${aws[@]}" s3 rb s3://cli
[[ ! -e $mount/cli ]]
echo "cli: ok"
