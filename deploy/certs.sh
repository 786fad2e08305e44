#!/bin/sh
# Makes the TLS Secrets of a DatenLord cluster on Kubernetes from the
# cluster's CA, and gives every Kubernetes node its own node id.
#
#   deploy/certs.sh --ca DIR [--namespace NS] [--nodes "NAME ..."] [--out DIR]
#
# --ca DIR       the cluster's CA (`datenlord certs init DIR` is run when
#                DIR has none). Keep it off the cluster: its key makes
#                masters. DIR also holds what was issued (issued/NAME/) and
#                the node id table (node-ids: "NAME ID" lines).
# --namespace NS the namespace of the Secrets (default: datenlord).
# --nodes LIST   the Kubernetes node names (default: `kubectl get nodes`).
# --out DIR      write the Secrets there as YAML (one file each) instead of
#                applying them with kubectl.
#
# Node ids: masters are 1, 2, 3; the CSI controller (a node of the group,
# it mounts the namespace) is 100; Kubernetes nodes get 101, 102, ... in
# the order they are first seen, recorded in DIR/node-ids and never
# reused: a node keeps its id (and its certificate) across runs, and a
# new one takes the next free id. Each certificate carries its id, which
# `datenlord mount --node-id cert` takes. Run it again when nodes join the
# cluster (the DaemonSet's pod on a node without a certificate waits in
# its init container, saying so). The table is locked while it runs, so
# two runs on one CA directory cannot give one id twice; do not issue
# node certificates from copies of the directory.
#
# Secrets made (keys):
#   datenlord-master-tls             ca.pem, mN.cert.pem, mN.key.pem (N = 1..3)
#   datenlord-node-tls               ca.pem, NAME.cert.pem, NAME.key.pem per node, node-ids
#   datenlord-csi-controller-tls     ca.pem, cert.pem, key.pem (node 100)
#   datenlord-scheduler-extender-tls ca.pem, cert.pem, key.pem (admin)
# A Secret holds at most 1 MiB: about 800 nodes (1.3 KiB each, base64).
#
# Needs datenlord ($DATENLORD_BIN, else on PATH) and kubectl (its
# --dry-run=client output needs no cluster with --out).
set -eu

me=certs.sh
ca=
namespace=datenlord
nodes=
nodes_given=
out=
while [ $# -gt 0 ]; do
    case $1 in
    --ca) ca=${2:?--ca DIR}; shift 2 ;;
    --namespace) namespace=${2:?--namespace NS}; shift 2 ;;
    --nodes) nodes=${2?--nodes \"NAME ...\"}; nodes_given=1; shift 2 ;;
    --out) out=${2:?--out DIR}; shift 2 ;;
    -h | --help) sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "$me: unknown argument $1 (see --help)" >&2; exit 1 ;;
    esac
done
[ -n "$ca" ] || { echo "$me: give --ca DIR (the cluster's CA directory; see --help)" >&2; exit 1; }

# Ids of the group's members other than Kubernetes nodes.
MASTERS="1 2 3"
CSI_CONTROLLER_ID=100
FIRST_NODE_ID=101
# datenlord's limit on node ids (block versions carry them: 16 bits).
NODE_ID_MAX=65535

bin=${DATENLORD_BIN:-$(command -v datenlord || true)}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "$me: datenlord not found: put it on PATH or set DATENLORD_BIN" >&2
    exit 1
fi
command -v kubectl >/dev/null || { echo "$me: kubectl not found" >&2; exit 1; }

if [ ! -e "$ca/ca.pem" ]; then
    "$bin" certs init "$ca"
fi
mkdir -p "$ca/issued"
table=$ca/node-ids
touch "$table"

if [ -z "$nodes_given" ]; then
    nodes=$(kubectl get nodes -o 'jsonpath={.items[*].metadata.name}')
fi

# Issues NAME's certificate once (kept across runs: stable keys).
issue() { # NAME ROLE [ID]
    if [ ! -e "$ca/issued/$1/cert.pem" ]; then
        if [ $# -ge 3 ]; then
            "$bin" certs issue --ca "$ca" --name "$1" --role "$2" --id "$3" --out "$ca/issued/$1" >/dev/null
        else
            "$bin" certs issue --ca "$ca" --name "$1" --role "$2" --out "$ca/issued/$1" >/dev/null
        fi
    fi
}

# Applies or writes a Secret; the arguments after NAME are
# `--from-file=KEY=PATH` items.
secret() { # NAME ITEMS...
    name=$1
    shift
    if [ -n "$out" ]; then
        mkdir -p "$out"
        kubectl create secret generic "$name" --namespace "$namespace" "$@" \
            --dry-run=client -o yaml >"$out/$name.yaml"
        echo "wrote $out/$name.yaml"
    else
        kubectl create secret generic "$name" --namespace "$namespace" "$@" \
            --dry-run=client -o yaml | kubectl apply -f -
    fi
}

(
    # One run at a time allocates ids from this table.
    if command -v flock >/dev/null; then
        flock 9
    fi
    for m in $MASTERS; do
        issue "m$m" master "$m"
    done
    issue csi-controller node "$CSI_CONTROLLER_ID"
    issue scheduler-extender admin
    for node in $nodes; do
        case $node in
        *[!a-z0-9.-]*) echo "$me: $node is not a Kubernetes node name" >&2; exit 1 ;;
        esac
        id=$(awk -v n="$node" '$1 == n { print $2 }' "$table")
        if [ -z "$id" ]; then
            last=$(awk 'BEGIN { m = 0 } $2 > m { m = $2 } END { print m }' "$table")
            id=$((last < FIRST_NODE_ID ? FIRST_NODE_ID : last + 1))
            [ "$id" -le "$NODE_ID_MAX" ] || { echo "$me: no node id left (the largest is $NODE_ID_MAX)" >&2; exit 1; }
            echo "$node $id" >>"$table"
            echo "node $node: id $id (new)"
        fi
        issue "$node" node "$id"
    done
) 9>>"$ca/node-ids.lock"

set --
for m in $MASTERS; do
    set -- "$@" "--from-file=m$m.cert.pem=$ca/issued/m$m/cert.pem" "--from-file=m$m.key.pem=$ca/issued/m$m/key.pem"
done
secret datenlord-master-tls "--from-file=ca.pem=$ca/ca.pem" "$@"

set --
while read -r node id; do
    [ -n "$node" ] || continue
    set -- "$@" "--from-file=$node.cert.pem=$ca/issued/$node/cert.pem" "--from-file=$node.key.pem=$ca/issued/$node/key.pem"
done <"$table"
secret datenlord-node-tls "--from-file=ca.pem=$ca/ca.pem" "--from-file=node-ids=$table" "$@"

for name in csi-controller scheduler-extender; do
    secret "datenlord-$name-tls" "--from-file=ca.pem=$ca/ca.pem" \
        "--from-file=cert.pem=$ca/issued/$name/cert.pem" "--from-file=key.pem=$ca/issued/$name/key.pem"
done
