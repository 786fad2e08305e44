#!/bin/sh
# A smoke test of deploy/ on a one-machine Kubernetes cluster: builds the
# image, installs the `kind` overlay (masters, nodes, CSI driver, a local
# directory of the machine as the store), and runs a pod that writes a
# file to a DatenLord PVC, then a second pod that reads it back.
#
#   deploy/kind-smoke.sh            # a kind cluster (made if missing)
#   deploy/kind-smoke.sh --k3s      # the k3s of this machine
#
# Needs docker, kind (or k3s) and kubectl; the datenlord binary for the
# certificates ($DATENLORD_BIN, else built with cargo). Its CA goes to
# $CA_DIR (default ~/.datenlord-smoke-ca). The cluster is left as it is
# for a look (kind delete cluster --name datenlord-smoke).
#
# Not run on the development machines, which have no Kubernetes cluster:
# there, scripts/check-deploy validates the manifests offline only.
set -eu
cd "$(dirname "$0")/.."

image=datenlord/datenlord:0.1.0
cluster=${KIND_CLUSTER:-datenlord-smoke}
ns=datenlord
runtime=kind
[ "${1:-}" = --k3s ] && runtime=k3s

step() { printf '\n==> %s\n' "$*"; }

step "image $image"
docker build -f deploy/Dockerfile -t "$image" .

if [ "$runtime" = kind ]; then
    step "kind cluster $cluster"
    kind get clusters | grep -qx "$cluster" || kind create cluster --name "$cluster"
    kind load docker-image "$image" --name "$cluster"
    kubectl config use-context "kind-$cluster"
    # FUSE in kind's node container: the host's /dev/fuse is there.
    docker exec "$cluster-control-plane" sh -c 'test -c /dev/fuse || mknod -m 666 /dev/fuse c 10 229'
else
    step "k3s: importing the image"
    docker save "$image" | sudo k3s ctr images import -
fi

step "TLS Secrets (deploy/certs.sh)"
bin=${DATENLORD_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --bin datenlord
    bin=${CARGO_TARGET_DIR:-target}/release/datenlord
fi
kubectl apply -f deploy/base/namespace.yaml
DATENLORD_BIN=$bin deploy/certs.sh --ca "${CA_DIR:-$HOME/.datenlord-smoke-ca}" --namespace "$ns"

step "kubectl apply -k deploy/overlays/kind"
kubectl apply -k deploy/overlays/kind
kubectl -n "$ns" wait --for=condition=complete job/datenlord-format --timeout=300s
kubectl -n "$ns" rollout status statefulset/datenlord-master --timeout=600s
kubectl -n "$ns" rollout status daemonset/datenlord-node --timeout=600s
kubectl -n "$ns" rollout status daemonset/datenlord-csi-node --timeout=300s
kubectl -n "$ns" rollout status deployment/datenlord-csi-controller --timeout=300s

step "a PVC written by one pod and read by another"
kubectl apply -f - <<EOF
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: smoke
  namespace: default
spec:
  accessModes: ["ReadWriteMany"]
  storageClassName: datenlord
  resources:
    requests:
      storage: 1Gi
EOF
pod() { # NAME SCRIPT
    kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: default
spec:
  restartPolicy: Never
  securityContext:
    runAsUser: 1000
    runAsGroup: 1000
  containers:
    - name: test
      image: $image
      command: ["/bin/sh", "-c", "$2"]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: smoke
EOF
    kubectl wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$1" --timeout=300s || {
        kubectl describe "pod/$1"
        kubectl logs "pod/$1" || true
        echo "kind-smoke: pod $1 did not succeed" >&2
        exit 1
    }
}
kubectl delete pod smoke-writer smoke-reader --ignore-not-found
pod smoke-writer "echo hello from DatenLord > /data/hello && sync && cat /data/hello"
pod smoke-reader "cat /data/hello"
got=$(kubectl logs pod/smoke-reader)
if [ "$got" != "hello from DatenLord" ]; then
    echo "kind-smoke: the reader saw '$got'" >&2
    exit 1
fi
echo "kind-smoke: ok: a file written to a DatenLord volume by one pod was read by another"
