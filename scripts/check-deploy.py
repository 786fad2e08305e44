"""Offline checks of the rendered Kubernetes manifests (run by
scripts/check-deploy, with the Python of its virtualenv):

  check-deploy.py schemas KUBERNETES_VERSION RENDERED.yaml...
  check-deploy.py checkov RENDERED_DIR    (the renders and a copy of deploy/Dockerfile)

`schemas`: every object against the Kubernetes OpenAPI schemas of that
version (PyPI kubernetes-validate, strict: unknown fields are errors);
ServiceMonitor against prometheus-operator's models generated from its CRD
(PyPI cloudcoil-models-prometheus-operator); VolumeSnapshotClass and the
kube-scheduler's configuration by hand (no PyPI package ships their
schemas); and references between objects (ConfigMaps, Secrets, service
accounts, namespaces, image tags).

`checkov`: PyPI checkov on the rendered objects and the Dockerfile; every
failed check must be in SKIPS below with the reason it is accepted, and
every entry of SKIPS must still be needed.

Each failure says where it is and what to change; the exit status is 1
if there was one.
"""

import json
import subprocess
import sys
from pathlib import Path

import yaml

# Kinds without a namespace.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "CSIDriver",
    "VolumeSnapshotClass",
    "PriorityClass",
}

# Secrets the manifests use and kustomize does not make: deploy/certs.sh
# makes the TLS ones, the operator the store's (README.md, "Kubernetes").
EXTERNAL_SECRETS = {
    "datenlord-store",
    "datenlord-master-tls",
    "datenlord-node-tls",
    "datenlord-csi-controller-tls",
    "datenlord-scheduler-extender-tls",
}

# Fields of KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1)
# and of its extenders, as the kube-scheduler's strict decoding knows them.
SCHEDULER_CONFIG_FIELDS = {
    "apiVersion",
    "kind",
    "parallelism",
    "leaderElection",
    "clientConnection",
    "healthzBindAddress",
    "metricsBindAddress",
    "enableProfiling",
    "enableContentionProfiling",
    "percentageOfNodesToScore",
    "podInitialBackoffSeconds",
    "podMaxBackoffSeconds",
    "profiles",
    "extenders",
    "delayCacheUntilActive",
}
EXTENDER_FIELDS = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "weight",
    "bindVerb",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}

# checkov findings accepted, each with its reason: (check, checkov's
# resource id up to the object's name, overlays it applies to or None for
# all). Anything else that fails is an error.
NODE_DS = "DaemonSet.datenlord.datenlord-node"
CSI_NODE_DS = "DaemonSet.datenlord.datenlord-csi-node"
CSI_CONTROLLER = "Deployment.datenlord.datenlord-csi-controller"
MASTERS = "StatefulSet.datenlord.datenlord-master"
EXTENDER = "Deployment.datenlord.datenlord-scheduler-extender"
FORMAT_JOB = "Job.datenlord.datenlord-format"
MOUNTING = [NODE_DS, CSI_NODE_DS, CSI_CONTROLLER]
DATENLORD_PODS = [NODE_DS, CSI_NODE_DS, CSI_CONTROLLER, MASTERS, EXTENDER, FORMAT_JOB]
SKIPS = [
    # Privileged containers: FUSE needs /dev/fuse and mount(2); the node's
    # mount and the CSI node plugin's bind mounts must reach the host and
    # kubelet (Bidirectional mount propagation is only allowed to
    # privileged containers); the node's init container writes the
    # kernel's FUSE-over-io_uring switch under /sys.
    *[("CKV_K8S_16", r, None) for r in MOUNTING],
    # Privileged implies these: privilege escalation, all capabilities
    # (NET_RAW among them), root.
    *[(c, r, None) for c in ("CKV_K8S_20", "CKV_K8S_28", "CKV_K8S_37") for r in MOUNTING],
    # Root: mount(2) and FUSE as above; the CSI sidecars run as root too
    # because the plugin's socket is root's alone (0600: whoever connects
    # can have the plugin mount).
    *[(c, r, None) for c in ("CKV_K8S_23", "CKV_K8S_40") for r in MOUNTING],
    # The one-machine overlay: its store is a directory of the machine
    # whose files are 0600 (datenlord's umask) and written by root nodes,
    # so the masters and the format Job run as root there.
    *[(c, r, ["kind"]) for c in ("CKV_K8S_23", "CKV_K8S_40") for r in (MASTERS, FORMAT_JOB)],
    # Host network for nodes: the masters and other nodes reach a node at
    # the machine's address (Raft, block service), and RDMA NICs are the
    # host's.
    ("CKV_K8S_19", NODE_DS, None),
    # S3 credentials as environment variables: the store client reads
    # AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment
    # (the issue asks for env vars from a Secret); with a credentials
    # file from a Secret and AWS_SHARED_CREDENTIALS_FILE it would read
    # that instead.
    *[("CKV_K8S_35", r, None) for r in (NODE_DS, CSI_CONTROLLER, MASTERS)],
    # Service account tokens where the API is used: the CSI sidecars
    # (claims, volumes, leases) and the extender (claims, volumes). A
    # token is mounted per pod, not per container.
    ("CKV_K8S_38", CSI_CONTROLLER, None),
    ("CKV_K8S_38", EXTENDER, ["production"]),
    # Probes: the CSI sidecars (provisioner, snapshotter, resizer,
    # registrar, livenessprobe) serve no health endpoint of their own;
    # the plugin's health is checked through the livenessprobe sidecar.
    *[(c, r, None) for c in ("CKV_K8S_8", "CKV_K8S_9") for r in (CSI_NODE_DS, CSI_CONTROLLER)],
    # Pull policy IfNotPresent: images are pinned to a version tag (a
    # digest in the overlay, below), and kind loads the image locally.
    *[("CKV_K8S_15", r, None) for r in DATENLORD_PODS],
    # Digests: the image is built by whoever deploys (deploy/Dockerfile);
    # the overlay pins `digest:` in its `images:` once it is in their
    # registry. The CSI sidecars are pinned to release tags.
    *[("CKV_K8S_43", r, None) for r in DATENLORD_PODS],
    # NetworkPolicies: nodes are host-network pods, which CNIs do not
    # select alike; every DatenLord connection is mutually authenticated
    # TLS with the cluster's own CA instead.
    # (checkov does not ask this of the kind overlay's format Job.)
    *[("CKV2_K8S_6", "Pod." + r.split(".", 1)[1], None) for r in DATENLORD_PODS if r != FORMAT_JOB],
    # Dockerfile without HEALTHCHECK: Kubernetes ignores it; the probes
    # are in the manifests (one image serves masters, nodes, CSI).
    ("CKV_DOCKER_2", "Dockerfile", None),
]


class Report:
    def __init__(self):
        self.errors = []

    def error(self, where, message):
        self.errors.append(f"{where}: {message}")

    def finish(self, what):
        for e in self.errors:
            print(f"check-deploy: {e}", file=sys.stderr)
        if self.errors:
            print(f"check-deploy: {what}: {len(self.errors)} problem(s)", file=sys.stderr)
            return 1
        print(f"check-deploy: {what}: ok")
        return 0


def unknown_fields(given, parsed, path=""):
    """Fields of `given` that a model dropped when parsing it (`parsed` is
    the model dumped back): fields the schema does not know."""
    out = []
    if isinstance(given, dict):
        for key, value in given.items():
            if not isinstance(parsed, dict) or key not in parsed:
                out.append(f"{path}.{key}")
            else:
                out += unknown_fields(value, parsed[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(parsed, list):
        for i, (a, b) in enumerate(zip(given, parsed)):
            out += unknown_fields(a, b, f"{path}[{i}]")
    return out


def check_service_monitor(doc, where, report):
    from cloudcoil.models.prometheus_operator import v1

    try:
        model = v1.ServiceMonitor.model_validate(doc)
    except Exception as e:  # pydantic's ValidationError names the field
        report.error(where, f"not a valid ServiceMonitor: {e}")
        return
    dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    for field in unknown_fields(doc, dumped):
        report.error(where, f"ServiceMonitor has no field {field}")


def check_volume_snapshot_class(doc, where, report):
    # No PyPI package ships the external-snapshotter's CRD schema
    # (snapshot.storage.k8s.io/v1): its few fields are checked here.
    fields = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
    for key in set(doc) - fields:
        report.error(where, f"VolumeSnapshotClass has no field {key}")
    if doc.get("apiVersion") != "snapshot.storage.k8s.io/v1":
        report.error(where, "VolumeSnapshotClass is snapshot.storage.k8s.io/v1")
    if doc.get("driver") != "csi.datenlord.io":
        report.error(where, "the VolumeSnapshotClass's driver is csi.datenlord.io")
    if doc.get("deletionPolicy") not in ("Delete", "Retain"):
        report.error(where, "deletionPolicy is Delete or Retain")


def check_scheduler_config(text, where, report):
    # No PyPI package ships the kube-scheduler's configuration schema
    # (it is not an API object): its fields are checked here, as strictly
    # as the kube-scheduler decodes them.
    config = yaml.safe_load(text)
    if config.get("apiVersion") != "kubescheduler.config.k8s.io/v1" or config.get("kind") != "KubeSchedulerConfiguration":
        report.error(where, "config.yaml is a kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration")
    for key in set(config) - SCHEDULER_CONFIG_FIELDS:
        report.error(where, f"KubeSchedulerConfiguration has no field {key}")
    extenders = config.get("extenders") or []
    if not extenders:
        report.error(where, "no extender: the DatenLord scheduler extender belongs in `extenders`")
    for i, ext in enumerate(extenders):
        for key in set(ext) - EXTENDER_FIELDS:
            report.error(where, f"extenders[{i}] has no field {key}")
        url = ext.get("urlPrefix", "")
        if not url.startswith(("http://", "https://")):
            report.error(where, f"extenders[{i}].urlPrefix {url!r} is an http(s) URL")
        if ext.get("filterVerb") != "filter" or ext.get("prioritizeVerb") != "prioritize":
            report.error(where, f"extenders[{i}]: the DatenLord extender serves /filter and /prioritize")
        weight = ext.get("weight")
        if not isinstance(weight, int) or weight <= 0:
            report.error(where, f"extenders[{i}].weight is a positive integer (with prioritizeVerb)")


def pod_specs(doc):
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
        yield spec.get("template", {}).get("spec", {})


def check_references(docs, where, report):
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        here = f"{where}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] not in CLUSTER_SCOPED and not doc["metadata"].get("namespace"):
            report.error(here, "has no namespace: set `namespace:` in the overlay's kustomization.yaml")
        for pod in pod_specs(doc):
            account = pod.get("serviceAccountName")
            if account and ("ServiceAccount", account) not in names:
                report.error(here, f"service account {account} is not in the render")
            for volume in pod.get("volumes", []):
                secret = volume.get("secret", {}).get("secretName")
                if secret and secret not in EXTERNAL_SECRETS:
                    report.error(here, f"Secret {secret} is made by nobody (add it to deploy/certs.sh or EXTERNAL_SECRETS)")
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                image = c.get("image", "")
                tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
                if "@sha256:" not in image and tag in ("", "latest"):
                    report.error(here, f"container {c['name']}: image {image!r} needs a version tag (the overlay's `images:`)")
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("configMapKeyRef")
                    if ref and ("ConfigMap", ref["name"]) not in names:
                        report.error(here, f"container {c['name']}: ConfigMap {ref['name']} is not in the render")
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref and ref["name"] not in EXTERNAL_SECRETS:
                        report.error(here, f"container {c['name']}: Secret {ref['name']} is made by nobody")
                for src in c.get("envFrom", []):
                    name = src.get("secretRef", {}).get("name")
                    if name and name not in EXTERNAL_SECRETS:
                        report.error(here, f"container {c['name']}: Secret {name} is made by nobody")


def schemas(version, files):
    import kubernetes_validate

    report = Report()
    for path in files:
        overlay = Path(path).stem
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        for doc in docs:
            where = f"{overlay}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            kind = doc.get("kind")
            if kind == "ServiceMonitor":
                check_service_monitor(doc, where, report)
            elif kind == "VolumeSnapshotClass":
                check_volume_snapshot_class(doc, where, report)
            else:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    report.error(where, f"{doc.get('apiVersion')} {kind} is not a Kubernetes {version} kind, nor a CRD kind checked here")
                except kubernetes_validate.ValidationError as e:
                    field = "/".join(str(p) for p in e.path) or "(top)"
                    report.error(where, f"at {field}: {e.message}")
            if kind == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                check_scheduler_config(doc["data"]["config.yaml"], where, report)
        check_references(docs, overlay, report)
    return report.finish(f"schemas (Kubernetes {version}) of {len(files)} render(s)")


def checkov(rendered_dir):
    report = Report()
    # One run over the directory (checkov ignores --file beside
    # --directory): the renders and the Dockerfile copied there.
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("checkov")),
            "--directory", rendered_dir,
            "--framework", "kubernetes", "dockerfile",
            "--output", "json",
            "--quiet",
            "--compact",
        ],
        capture_output=True,
        text=True,
    )
    try:
        results = json.loads(out.stdout)
    except json.JSONDecodeError:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        report.error("checkov", f"no JSON report (exit {out.returncode}); its output is above")
        return report.finish("checkov")
    if isinstance(results, dict):
        results = [results]
    used = set()
    passed = 0
    for framework in results:
        summary = framework.get("summary", {})
        passed += summary.get("passed", 0)
        for f in framework.get("results", {}).get("failed_checks", []):
            file = Path(f["file_path"]).stem
            overlay = "Dockerfile" if f["check_id"].startswith("CKV_DOCKER") else file
            resource = "Dockerfile" if overlay == "Dockerfile" else f["resource"]
            match = None
            for i, (check, prefix, overlays) in enumerate(SKIPS):
                if check == f["check_id"] and (resource == prefix or resource.startswith(prefix + ".")) and (
                    overlays is None or overlay in overlays
                ):
                    match = i
                    break
            if match is None:
                lines = f.get("file_line_range") or []
                report.error(
                    f"{overlay}: {resource}",
                    f"checkov {f['check_id']} ({f['check_name']}) failed"
                    + (f" at lines {lines[0]}-{lines[1]} of the render" if lines else "")
                    + f": fix the manifest, or add ({f['check_id']!r}, {resource!r}) with the reason to SKIPS in scripts/check-deploy.py",
                )
            else:
                used.add(match)
    for i, (check, prefix, overlays) in enumerate(SKIPS):
        if i in used:
            continue
        # An entry for an overlay that was not checked is not stale.
        rendered = {Path(p).stem for p in Path(rendered_dir).glob("*.yaml")} | {"Dockerfile"}
        if overlays is not None and not set(overlays) & rendered:
            continue
        report.error("SKIPS", f"({check!r}, {prefix!r}) no longer fails: remove it from scripts/check-deploy.py")
    return report.finish(f"checkov ({passed} checks passed; failures must be justified in SKIPS)")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "schemas":
        return schemas(sys.argv[2], sys.argv[3:])
    if len(sys.argv) == 3 and sys.argv[1] == "checkov":
        return checkov(sys.argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
