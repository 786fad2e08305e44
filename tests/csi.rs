//! `datenlord csi` end to end: the real plugin binary on a unix socket,
//! over a real DatenLord mount it makes itself, driven by the driver's
//! gRPC clients. The cases are those of the Kubernetes CSI sanity suite
//! (kubernetes-csi/csi-test `pkg/sanity`) that apply to what the driver
//! serves: identity; CreateVolume/DeleteVolume idempotency and
//! ALREADY_EXISTS; INVALID_ARGUMENT for missing fields; ListVolumes
//! pagination; ValidateVolumeCapabilities; GetCapacity; expansion; and
//! stage/publish/unpublish/unstage with real bind mounts, read-only
//! publishing, stats, and cleanup after a restart of the plugin.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use datenlord_csi::proto::controller_service_capability::rpc::Type as ControllerRpc;
use datenlord_csi::proto::node_service_capability::rpc::Type as NodeRpc;
use datenlord_csi::proto::plugin_capability::{service, volume_expansion, Type as PluginType};
use datenlord_csi::proto::volume_capability::access_mode::Mode;
use datenlord_csi::proto::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use datenlord_csi::proto::volume_content_source::{self, VolumeSource};
use datenlord_csi::proto::volume_usage::Unit;
use datenlord_csi::proto::{
    controller_service_capability, node_service_capability, CapacityRange,
    ControllerExpandVolumeRequest, ControllerGetCapabilitiesRequest, CreateVolumeRequest,
    DeleteVolumeRequest, GetCapacityRequest, GetPluginCapabilitiesRequest, GetPluginInfoRequest,
    ListVolumesRequest, NodeExpandVolumeRequest, NodeGetCapabilitiesRequest, NodeGetInfoRequest,
    NodeGetVolumeStatsRequest, NodePublishVolumeRequest, NodeStageVolumeRequest,
    NodeUnpublishVolumeRequest, NodeUnstageVolumeRequest, ProbeRequest,
    ValidateVolumeCapabilitiesRequest, VolumeCapability, VolumeContentSource,
};
use support::csi::{mounts_under, Clients, Fixture};
use tonic::Code;

const MIB: i64 = 1 << 20;

fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    }
}

fn writer() -> VolumeCapability {
    mount_capability(Mode::MultiNodeMultiWriter)
}

fn exact(bytes: i64) -> CapacityRange {
    CapacityRange {
        required_bytes: bytes,
        limit_bytes: bytes,
    }
}

fn create_request(name: &str, capacity: Option<CapacityRange>) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: capacity,
        volume_capabilities: vec![writer()],
        ..CreateVolumeRequest::default()
    }
}

/// The status code of a call expected to fail.
fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call should fail").code()
}

/// The quota attribute of a directory.
fn quota_xattr(dir: &Path) -> String {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", "trusted.datenlord.quota"])
        .arg(dir)
        .output()
        .expect("getfattr");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create(c: &Clients, name: &str, bytes: i64) {
    let reply = c
        .call(
            c.controller
                .clone()
                .create_volume(create_request(name, Some(exact(bytes)))),
        )
        .expect("create volume");
    let volume = reply.volume.expect("a volume");
    assert_eq!(
        (volume.volume_id.as_str(), volume.capacity_bytes),
        (name, bytes)
    );
}

#[test]
fn identity_answers_who_and_what() {
    let fx = Fixture::start(&[]);
    let c = fx.clients();
    let info = c
        .call(c.identity.clone().get_plugin_info(GetPluginInfoRequest {}))
        .expect("plugin info");
    assert_eq!(info.name, "csi.datenlord.io");
    assert!(!info.vendor_version.is_empty());
    let caps = c
        .call(
            c.identity
                .clone()
                .get_plugin_capabilities(GetPluginCapabilitiesRequest {}),
        )
        .expect("plugin capabilities");
    let services: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match c.r#type {
            Some(PluginType::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert!(services.contains(&(service::Type::ControllerService as i32)));
    assert!(services.contains(&(service::Type::VolumeAccessibilityConstraints as i32)));
    assert!(caps.capabilities.iter().any(|c| matches!(
        c.r#type,
        Some(PluginType::VolumeExpansion(e)) if e.r#type == volume_expansion::Type::Online as i32
    )));
    let probe = c
        .call(c.identity.clone().probe(ProbeRequest {}))
        .expect("probe");
    assert_eq!(probe.ready, Some(true));

    let controller = c
        .call(
            c.controller
                .clone()
                .controller_get_capabilities(ControllerGetCapabilitiesRequest {}),
        )
        .expect("controller capabilities");
    let rpcs: BTreeSet<i32> = controller
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    let want: BTreeSet<i32> = [
        ControllerRpc::CreateDeleteVolume,
        ControllerRpc::ListVolumes,
        ControllerRpc::GetCapacity,
        ControllerRpc::ExpandVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(rpcs, want);

    let node = c
        .call(
            c.node
                .clone()
                .node_get_capabilities(NodeGetCapabilitiesRequest {}),
        )
        .expect("node capabilities");
    let rpcs: BTreeSet<i32> = node
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .map(|node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    for wanted in [
        NodeRpc::StageUnstageVolume,
        NodeRpc::GetVolumeStats,
        NodeRpc::ExpandVolume,
        NodeRpc::VolumeCondition,
    ] {
        assert!(rpcs.contains(&(wanted as i32)), "{wanted:?}");
    }
    let info = c
        .call(c.node.clone().node_get_info(NodeGetInfoRequest {}))
        .expect("node info");
    assert_eq!(info.node_id, "node-a");
    let topology = info.accessible_topology.expect("topology");
    assert_eq!(
        topology
            .segments
            .get("topology.csi.datenlord.io/node")
            .map(String::as_str),
        Some("node-a")
    );
}

#[test]
fn create_and_delete_are_idempotent_and_check_their_arguments() {
    let fx = Fixture::start(&[]);
    let c = fx.clients();
    let ctl = || c.controller.clone();
    // Missing or malformed fields.
    assert_eq!(
        code(c.call(ctl().create_volume(create_request("", None)))),
        Code::InvalidArgument
    );
    let mut no_caps = create_request("v-nocaps", None);
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(c.call(ctl().create_volume(no_caps))),
        Code::InvalidArgument
    );
    let mut block = create_request("v-block", None);
    block.volume_capabilities[0].access_type = Some(AccessType::Block(BlockVolume {}));
    assert_eq!(
        code(c.call(ctl().create_volume(block))),
        Code::InvalidArgument
    );
    let mut clone = create_request("v-clone", None);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(VolumeSource {
            volume_id: "x".into(),
        })),
    });
    assert_eq!(
        code(c.call(ctl().create_volume(clone))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.call(ctl().create_volume(create_request("../escape", None)))),
        Code::InvalidArgument
    );
    let mut unknown = create_request("v-param", None);
    unknown.parameters.insert("replicas".into(), "3".into());
    assert_eq!(
        code(c.call(ctl().create_volume(unknown))),
        Code::InvalidArgument
    );

    // A volume is a directory of the namespace with its capacity recorded.
    create(&c, "vol-a", 64 * MIB);
    let dir = fx.dirs.mountpoint().join("csi-volumes/vol-a");
    assert!(dir.is_dir());
    assert_eq!(quota_xattr(&dir), (64 * MIB).to_string());
    // Same name, same capacity: the same volume; another capacity: refused.
    create(&c, "vol-a", 64 * MIB);
    assert_eq!(
        code(c.call(ctl().create_volume(create_request("vol-a", Some(exact(128 * MIB)))))),
        Code::AlreadyExists
    );
    // No capacity: the default (1 GiB).
    let reply = c
        .call(ctl().create_volume(create_request("vol-default", None)))
        .expect("create without capacity");
    assert_eq!(reply.volume.expect("volume").capacity_bytes, 1 << 30);
    // A maximum-length name.
    create(&c, &"n".repeat(128), MIB);

    // Delete: required id; deleting twice, or what never was, succeeds.
    let delete = |id: &str| {
        c.call(ctl().delete_volume(DeleteVolumeRequest {
            volume_id: id.into(),
            ..DeleteVolumeRequest::default()
        }))
    };
    assert_eq!(code(delete("")), Code::InvalidArgument);
    delete("vol-a").expect("delete");
    assert!(!dir.exists(), "the directory is gone");
    delete("vol-a").expect("delete again");
    delete("never-was").expect("delete a volume that never was");
    delete("../etc").expect("an id that cannot be a volume is not there");
    // The name is free again, at another capacity.
    create(&c, "vol-a", 2 * MIB);

    // Creations of one name at once: each is made or ABORTED, one volume results.
    let mut clients: Vec<_> = (0..8).map(|_| ctl()).collect();
    let calls = clients
        .iter_mut()
        .map(|client| client.create_volume(create_request("vol-race", Some(exact(MIB)))))
        .collect();
    let results = c.call_all(calls);
    assert!(results.iter().any(Result::is_ok), "{results:?}");
    for r in &results {
        if let Err(status) = r {
            assert_eq!(status.code(), Code::Aborted, "{status:?}");
        }
    }
    let listed = c
        .call(ctl().list_volumes(ListVolumesRequest::default()))
        .expect("list");
    let races = listed
        .entries
        .iter()
        .filter(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == "vol-race"))
        .count();
    assert_eq!(races, 1);
    let left: Vec<_> = std::fs::read_dir(fx.dirs.mountpoint().join("csi-volumes/.creating"))
        .expect("the creating directory")
        .collect();
    assert!(left.is_empty(), "no half-made volume is left: {left:?}");
}

#[test]
fn list_validate_capacity_and_expand() {
    let fx = Fixture::start(&[]);
    let c = fx.clients();
    list_pages(&c, &fx.dirs.mountpoint());
    validate_and_capacity(&c);
    expand_checks(&c, &fx);
}

/// ListVolumes: everything, pages of two, foreign tokens, and a token
/// whose volume was deleted.
fn list_pages(c: &Clients, mountpoint: &Path) {
    let ctl = || c.controller.clone();
    let names = ["pv-1", "pv-2", "pv-3", "pv-4", "pv-5"];
    for name in names {
        create(c, name, 8 * MIB);
    }
    let list = |max_entries: i32, starting_token: &str| {
        c.call(ctl().list_volumes(ListVolumesRequest {
            max_entries,
            starting_token: starting_token.into(),
        }))
    };
    let all = list(0, "").expect("list all");
    assert_eq!(all.entries.len(), names.len());
    assert!(all.next_token.is_empty());
    assert!(all.entries.iter().all(|e| e
        .volume
        .as_ref()
        .is_some_and(|v| v.capacity_bytes == 8 * MIB)));
    // Pages of two.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(2, &token).expect("a page");
        assert!(page.entries.len() <= 2);
        seen.extend(
            page.entries
                .into_iter()
                .filter_map(|e| e.volume)
                .map(|v| v.volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen, names);
    assert_eq!(code(list(0, "invalid-token")), Code::Aborted);
    // A directory made by hand (no recorded capacity) is no volume and
    // breaks no listing.
    std::fs::create_dir(mountpoint.join("csi-volumes/pv-by-hand")).expect("mkdir by hand");
    assert_eq!(list(0, "").expect("list").entries.len(), names.len());
    assert_eq!(code(list(-1, "")), Code::InvalidArgument);
    // The last volume of a page deleted and one created before the next
    // page: the token still works, no volume is skipped.
    let first = list(2, "").expect("first page");
    c.call(ctl().delete_volume(DeleteVolumeRequest {
        volume_id: "pv-2".into(),
        ..DeleteVolumeRequest::default()
    }))
    .expect("delete pv-2");
    create(c, "pv-3a", 8 * MIB);
    let rest = list(0, &first.next_token).expect("the rest");
    let rest: Vec<String> = rest
        .entries
        .into_iter()
        .filter_map(|e| e.volume)
        .map(|v| v.volume_id)
        .collect();
    assert_eq!(rest, ["pv-3", "pv-3a", "pv-4", "pv-5"]);
}

/// ValidateVolumeCapabilities and GetCapacity.
fn validate_and_capacity(c: &Clients) {
    let ctl = || c.controller.clone();
    let validate = |id: &str, caps: Vec<VolumeCapability>| {
        c.call(
            ctl().validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: id.into(),
                volume_capabilities: caps,
                ..ValidateVolumeCapabilitiesRequest::default()
            }),
        )
    };
    assert_eq!(code(validate("", vec![writer()])), Code::InvalidArgument);
    assert_eq!(code(validate("pv-1", vec![])), Code::InvalidArgument);
    assert_eq!(code(validate("no-such", vec![writer()])), Code::NotFound);
    let ok = validate(
        "pv-1",
        vec![writer(), mount_capability(Mode::SingleNodeReaderOnly)],
    )
    .expect("validate");
    assert_eq!(
        ok.confirmed.expect("confirmed").volume_capabilities.len(),
        2
    );
    let mut block = writer();
    block.access_type = Some(AccessType::Block(BlockVolume {}));
    let refused = validate("pv-1", vec![block]).expect("validate block");
    assert!(refused.confirmed.is_none() && !refused.message.is_empty());

    // GetCapacity: what the namespace has free.
    let capacity = c
        .call(ctl().get_capacity(GetCapacityRequest::default()))
        .expect("capacity");
    assert!(capacity.available_capacity > 0, "{capacity:?}");
}

/// ControllerExpandVolume.
fn expand_checks(c: &Clients, fx: &Fixture) {
    let ctl = || c.controller.clone();
    let list = |max_entries: i32| {
        c.call(ctl().list_volumes(ListVolumesRequest {
            max_entries,
            starting_token: String::new(),
        }))
    };
    let expand = |id: &str, range: Option<CapacityRange>| {
        c.call(
            ctl().controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: id.into(),
                capacity_range: range,
                ..ControllerExpandVolumeRequest::default()
            }),
        )
    };
    assert_eq!(code(expand("", Some(exact(MIB)))), Code::InvalidArgument);
    assert_eq!(code(expand("pv-1", None)), Code::InvalidArgument);
    assert_eq!(code(expand("no-such", Some(exact(MIB)))), Code::NotFound);
    let grown = expand("pv-1", Some(exact(32 * MIB))).expect("expand");
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (32 * MIB, false)
    );
    let dir = fx.dirs.mountpoint().join("csi-volumes/pv-1");
    assert_eq!(quota_xattr(&dir), (32 * MIB).to_string());
    let smaller = expand(
        "pv-1",
        Some(CapacityRange {
            required_bytes: MIB,
            limit_bytes: 0,
        }),
    )
    .expect("a smaller size is no shrink");
    assert_eq!(smaller.capacity_bytes, 32 * MIB);
    assert_eq!(code(expand("pv-1", Some(exact(MIB)))), Code::OutOfRange);
    let listed = list(1).expect("list");
    assert_eq!(
        listed.entries[0].volume.as_ref().map(|v| v.capacity_bytes),
        Some(32 * MIB)
    );
}

fn stage_request(id: &str, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(writer()),
        ..NodeStageVolumeRequest::default()
    }
}

fn publish_request(
    id: &str,
    staging: &Path,
    target: &Path,
    readonly: bool,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(writer()),
        readonly,
        ..NodePublishVolumeRequest::default()
    }
}

fn unpublish(c: &Clients, id: &str, target: &Path) -> Result<(), tonic::Status> {
    c.call(
        c.node
            .clone()
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.display().to_string(),
            }),
    )
    .map(drop)
}

fn unstage(c: &Clients, id: &str, staging: &Path) -> Result<(), tonic::Status> {
    c.call(
        c.node
            .clone()
            .node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.display().to_string(),
            }),
    )
    .map(drop)
}

fn stats(
    c: &Clients,
    id: &str,
    path: &Path,
) -> Result<datenlord_csi::proto::NodeGetVolumeStatsResponse, tonic::Status> {
    c.call(
        c.node
            .clone()
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: id.into(),
                volume_path: path.display().to_string(),
                staging_target_path: String::new(),
            }),
    )
}

/// Whether the mount table shows a mount at `path`.
fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|p| p == path)
}

/// Stage and publish checks: missing fields, a volume that is not there,
/// publish before stage; then a staged volume.
fn stage_checks(c: &Clients, staging: &Path, target: &Path) {
    let node = || c.node.clone();
    let mut req = stage_request("", staging);
    assert_eq!(
        code(c.call(node().node_stage_volume(req.clone()))),
        Code::InvalidArgument
    );
    req.volume_id = "data".into();
    req.staging_target_path.clear();
    assert_eq!(
        code(c.call(node().node_stage_volume(req.clone()))),
        Code::InvalidArgument
    );
    req = stage_request("data", staging);
    req.volume_capability = None;
    assert_eq!(
        code(c.call(node().node_stage_volume(req))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.call(node().node_stage_volume(stage_request("no-such", staging)))),
        Code::NotFound
    );
    // Publish before stage.
    assert_eq!(
        code(c.call(node().node_publish_volume(publish_request("data", staging, target, false)))),
        Code::FailedPrecondition
    );
    let mut req = publish_request("data", staging, target, false);
    req.target_path.clear();
    assert_eq!(
        code(c.call(node().node_publish_volume(req))),
        Code::InvalidArgument
    );
    let mut req = publish_request("data", staging, target, false);
    req.volume_capability = None;
    assert_eq!(
        code(c.call(node().node_publish_volume(req))),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.call(node().node_publish_volume(publish_request("no-such", staging, target, false)))
        ),
        Code::NotFound
    );
    let mut req = publish_request("data", staging, target, false);
    req.staging_target_path.clear();
    assert_eq!(
        code(c.call(node().node_publish_volume(req))),
        Code::InvalidArgument
    );

    c.call(node().node_stage_volume(stage_request("data", staging)))
        .expect("stage");
    c.call(node().node_stage_volume(stage_request("data", staging)))
        .expect("stage again");
    assert!(is_mounted(staging));
}

/// Stats and node expansion of the volume `data` published at `target`.
fn stats_and_expand(c: &Clients, fx: &Fixture, target: &Path) {
    assert_eq!(code(stats(c, "", target)), Code::InvalidArgument);
    assert_eq!(code(stats(c, "data", Path::new(""))), Code::InvalidArgument);
    assert_eq!(code(stats(c, "no-such", target)), Code::NotFound);
    assert_eq!(
        code(stats(c, "data", &fx.dirs.root().join("nowhere"))),
        Code::NotFound
    );
    assert_eq!(code(stats(c, "data", fx.dirs.root())), Code::NotFound);
    let reply = stats(c, "data", target).expect("stats");
    let bytes = reply
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .expect("bytes");
    assert_eq!(bytes.total, 64 * MIB);
    assert!(bytes.used >= MIB, "one MiB was written: {bytes:?}");
    assert_eq!(bytes.available, bytes.total - bytes.used);
    let inodes = reply
        .usage
        .iter()
        .find(|u| u.unit == Unit::Inodes as i32)
        .expect("inodes");
    assert!(inodes.used >= 3, "the volume, its files: {inodes:?}");
    assert_eq!(reply.volume_condition.map(|v| v.abnormal), Some(false));

    c.call(
        c.controller
            .clone()
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "data".into(),
                capacity_range: Some(exact(128 * MIB)),
                ..ControllerExpandVolumeRequest::default()
            }),
    )
    .expect("controller expand");
    let node_expand = |path: &Path, bytes: i64| {
        c.call(c.node.clone().node_expand_volume(NodeExpandVolumeRequest {
            volume_id: "data".into(),
            volume_path: path.display().to_string(),
            capacity_range: Some(exact(bytes)),
            ..NodeExpandVolumeRequest::default()
        }))
    };
    assert_eq!(
        node_expand(target, 128 * MIB)
            .expect("node expand")
            .capacity_bytes,
        128 * MIB
    );
    assert_eq!(
        code(node_expand(Path::new(""), 128 * MIB)),
        Code::InvalidArgument
    );
    assert_eq!(code(node_expand(target, 1 << 30)), Code::OutOfRange);
    let reply = stats(c, "data", target).expect("stats");
    assert_eq!(reply.usage[0].total, 128 * MIB);
}

#[test]
fn node_publishes_real_bind_mounts_and_cleans_up_after_a_restart() {
    let mut fx = Fixture::start(&[]);
    let root = fx.dirs.root().to_path_buf();
    let staging = root.join("staging/data");
    let rw = root.join("pods/p1/mount");
    let ro = root.join("pods/p2/mount");
    std::fs::create_dir_all(rw.parent().expect("parent")).expect("mkdir pods/p1");
    std::fs::create_dir_all(ro.parent().expect("parent")).expect("mkdir pods/p2");
    let c = fx.clients();
    create(&c, "data", 64 * MIB);
    stage_checks(&c, &staging, &rw);

    // Read-write publish: a file written through the pod's path is in the
    // namespace.
    let node = || c.node.clone();
    c.call(node().node_publish_volume(publish_request("data", &staging, &rw, false)))
        .expect("publish");
    c.call(node().node_publish_volume(publish_request("data", &staging, &rw, false)))
        .expect("publish again");
    let payload: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(rw.join("hello"), &payload).expect("write through the target");
    let in_namespace = fx.dirs.mountpoint().join("csi-volumes/data/hello");
    assert_eq!(
        std::fs::read(&in_namespace).expect("read through the mount"),
        payload
    );
    // Another user (a pod's) writes too.
    let (ok, out) = as_nobody(&format!("echo pod > {}", rw.join("by-nobody").display()));
    assert!(ok, "{out}");
    // The same target read-only: it is published otherwise.
    assert_eq!(
        code(c.call(node().node_publish_volume(publish_request("data", &staging, &rw, true)))),
        Code::AlreadyExists
    );

    // Read-only publish: reads work, writes fail with EROFS.
    c.call(node().node_publish_volume(publish_request("data", &staging, &ro, true)))
        .expect("publish read-only");
    assert_eq!(
        std::fs::read(ro.join("hello")).expect("read read-only"),
        payload
    );
    let err = std::fs::write(ro.join("nope"), b"x").expect_err("a write to a read-only publish");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let mut reader = publish_request("data", &staging, &root.join("pods/p3/mount"), false);
    reader.volume_capability = Some(mount_capability(Mode::MultiNodeReaderOnly));
    std::fs::create_dir_all(root.join("pods/p3")).expect("mkdir pods/p3");
    c.call(node().node_publish_volume(reader))
        .expect("publish in a reader mode");
    let err = std::fs::write(root.join("pods/p3/mount/nope"), b"x")
        .expect_err("a reader mode is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    stats_and_expand(&c, &fx, &rw);

    // A restart of the plugin: the new one cleans up what the old one mounted.
    drop(c);
    assert!(fx.stop().success(), "{}", fx.logs());
    assert!(!fx.socket().exists(), "SIGTERM removes the socket");
    assert!(
        is_mounted(&rw),
        "pods keep their volumes while the plugin restarts"
    );
    fx.restart();
    let c = fx.clients();
    for target in [&rw, &ro, &root.join("pods/p3/mount")] {
        unpublish(&c, "data", target).expect("unpublish");
        assert!(
            !is_mounted(target) && !target.exists(),
            "{} is gone",
            target.display()
        );
        unpublish(&c, "data", target).expect("unpublish again");
    }
    unpublish(&c, "data", &root.join("pods/never/mount")).expect("unpublish what never was");
    // The node's DatenLord mount is never a target.
    assert_eq!(
        code(unpublish(&c, "data", &fx.dirs.mountpoint())),
        Code::InvalidArgument
    );
    assert_eq!(
        code(unstage(&c, "data", &fx.dirs.mountpoint())),
        Code::InvalidArgument
    );
    assert!(is_mounted(&fx.dirs.mountpoint()));
    assert_eq!(code(unpublish(&c, "", &rw)), Code::InvalidArgument);
    assert_eq!(
        code(unpublish(&c, "data", Path::new(""))),
        Code::InvalidArgument
    );
    unstage(&c, "data", &staging).expect("unstage");
    assert!(!is_mounted(&staging));
    unstage(&c, "data", &staging).expect("unstage again");
    assert_eq!(
        code(unstage(&c, "data", Path::new(""))),
        Code::InvalidArgument
    );
    // The data stays in the namespace.
    assert_eq!(
        std::fs::read(&in_namespace).expect("read after unpublish"),
        payload
    );
}

#[test]
fn the_plugin_brings_a_dead_mount_back_and_repairs_stale_binds() {
    let fx = Fixture::start(&[]);
    let c = fx.clients();
    let node = || c.node.clone();
    let staging = fx.dirs.root().join("staging/before");
    let target = fx.dirs.root().join("pods/p1/mount");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir pods/p1");
    create(&c, "before", MIB);
    c.call(node().node_stage_volume(stage_request("before", &staging)))
        .expect("stage");
    c.call(node().node_publish_volume(publish_request("before", &staging, &target, false)))
        .expect("publish");
    // The DatenLord daemon dies: its mount and the binds of it answer ENOTCONN.
    let pid = fx.daemon_pid();
    // SAFETY: a plain kill of the test's daemon.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    support::node::wait_exit(pid, std::time::Duration::from_secs(10)).expect("the daemon died");
    let probe = c
        .call(c.identity.clone().probe(ProbeRequest {}))
        .expect("probe");
    assert_eq!(
        probe.ready,
        Some(false),
        "not ready while the mount is dead"
    );
    // The next request mounts again.
    create(&c, "after", MIB);
    let probe = c
        .call(c.identity.clone().probe(ProbeRequest {}))
        .expect("probe");
    assert_eq!(probe.ready, Some(true), "{}", fx.logs());
    assert_ne!(fx.daemon_pid(), pid, "a new daemon serves the mount");
    // The pod's bind still belongs to the dead daemon: stats say so, and
    // staging and publishing again replace the dead binds.
    let stale = stats(&c, "before", &target).expect("stats of a dead bind");
    assert_eq!(
        stale.volume_condition.map(|v| v.abnormal),
        Some(true),
        "{}",
        fx.logs()
    );
    c.call(node().node_stage_volume(stage_request("before", &staging)))
        .expect("stage again");
    c.call(node().node_publish_volume(publish_request("before", &staging, &target, false)))
        .expect("publish again");
    std::fs::write(target.join("again"), b"alive").expect("write after the repair");
    let healthy = stats(&c, "before", &target).expect("stats");
    assert_eq!(healthy.volume_condition.map(|v| v.abnormal), Some(false));
    unpublish(&c, "before", &target).expect("unpublish");
    unstage(&c, "before", &staging).expect("unstage");
}

#[test]
fn without_a_mount_and_with_no_mount_requests_are_unavailable() {
    let dirs = support::node::NodeDirs::new();
    let socket = dirs.root().join("csi.sock");
    let log = dirs.root().join("csi.log");
    let args: Vec<String> = [
        "--endpoint",
        &format!("unix://{}", socket.display()),
        "--controller",
        "--mountpoint",
        &dirs.mountpoint().display().to_string(),
        "--no-mount",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let plugin = support::csi::Plugin::start(&args, &socket, &log);
    let c = Clients::connect(plugin.socket());
    let probe = c
        .call(c.identity.clone().probe(ProbeRequest {}))
        .expect("probe");
    assert_eq!(probe.ready, Some(false));
    assert_eq!(
        code(
            c.call(
                c.controller
                    .clone()
                    .create_volume(create_request("v", None))
            )
        ),
        Code::Unavailable
    );
    // Only the controller is served.
    assert_eq!(
        code(c.call(c.node.clone().node_get_info(NodeGetInfoRequest {}))),
        Code::Unimplemented
    );
    drop(c);
    assert!(plugin.stop().success());
    assert!(!socket.exists());
}

#[test]
fn nodes_of_one_master_group_share_volumes() {
    use support::masters::{free_addr, wait_for, Group};
    let group = Group::new(1);
    wait_for("a leader", std::time::Duration::from_secs(20), || {
        group.leader(&[1])
    });
    let shared = support::node::NodeDirs::new();
    let store = support::node::formatted_store(&shared.root().join("store"), "64K");
    let masters = group.addrs.join(",");
    let mount = |id: u64| -> Vec<String> {
        let mut args: Vec<String> = [
            "--store",
            &store,
            "--masters",
            &masters,
            "--node-id",
            &id.to_string(),
            "--node-listen",
            &free_addr(),
            // Kernel caches off: each path walk asks the node's copy.
            "-o",
            "negative_timeout=0,entry_timeout=0,attr_timeout=0",
            "--cores",
            "1",
            "--cache-size",
            "0",
            "--memory-size",
            "32M",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(group.tls_args("node", Some(id)));
        args
    };
    let a = Fixture::start_with(
        &["--controller", "--node", "--node-name", "node-a"],
        &mount(11),
    );
    let b = Fixture::start_with(&["--node", "--node-name", "node-b"], &mount(12));
    let ca = a.clients();
    let cb = b.clients();
    // The controller on node a makes the volume; node b publishes it.
    create(&ca, "shared", 16 * MIB);
    let staging = b.dirs.root().join("staging/shared");
    let target = b.dirs.root().join("pods/p1/mount");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir pods/p1");
    let node = || cb.node.clone();
    wait_for(
        "the volume on node b",
        std::time::Duration::from_secs(20),
        || {
            cb.call(node().node_stage_volume(stage_request("shared", &staging)))
                .ok()
        },
    );
    cb.call(node().node_publish_volume(publish_request("shared", &staging, &target, false)))
        .expect("publish on node b");
    // A file written by a pod on node b is read on node a.
    std::fs::write(target.join("from-b"), b"written on node b").expect("write on b");
    let on_a = a.dirs.mountpoint().join("csi-volumes/shared/from-b");
    let text = wait_for(
        "the file on node a",
        std::time::Duration::from_secs(20),
        || std::fs::read(&on_a).ok().filter(|t| !t.is_empty()),
    );
    assert_eq!(text, b"written on node b");
    // Node b sees the capacity node a's controller recorded.
    let reply = stats(&cb, "shared", &target).expect("stats on b");
    assert_eq!(reply.usage[0].total, 16 * MIB, "{}", b.logs());
    unpublish(&cb, "shared", &target).expect("unpublish");
    unstage(&cb, "shared", &staging).expect("unstage");
    delete_volume(&ca, "shared");
}

fn delete_volume(c: &Clients, id: &str) {
    c.call(c.controller.clone().delete_volume(DeleteVolumeRequest {
        volume_id: id.into(),
        ..DeleteVolumeRequest::default()
    }))
    .expect("delete");
}

/// What `sh -c script` prints as user `nobody` (a pod's user): status, output.
fn as_nobody(script: &str) -> (bool, String) {
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c", script])
        .output()
        .expect("runuser");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `df -B1 --output=size,used,avail PATH`: bytes.
fn df(path: &Path) -> (u64, u64, u64) {
    let out = Command::new("df")
        .args(["-B1", "--output=size,used,avail"])
        .arg(path)
        .output()
        .expect("df");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    assert_eq!(numbers.len(), 3, "{text}");
    (numbers[0], numbers[1], numbers[2])
}

#[test]
fn a_volume_holds_its_capacity_and_not_a_byte_more() {
    let fx = Fixture::start(&[]);
    let root = fx.dirs.root().to_path_buf();
    let staging = root.join("staging/q");
    let target = root.join("pods/q/mount");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir pods/q");
    let c = fx.clients();
    create(&c, "q", 64 * MIB);
    c.call(
        c.node
            .clone()
            .node_stage_volume(stage_request("q", &staging)),
    )
    .expect("stage");
    c.call(
        c.node
            .clone()
            .node_publish_volume(publish_request("q", &staging, &target, false)),
    )
    .expect("publish");
    let sixty_four = 64 << 20;
    assert_eq!(df(&target), (sixty_four, 0, sixty_four), "an empty volume");

    // Small files cost what they hold (rounded to 4 KiB), not a block each.
    let (ok, out) = as_nobody(&format!(
        "mkdir {0}/small && for i in $(seq 200); do echo $i > {0}/small/$i || exit 1; done && sync {0}/small/*",
        target.display()
    ));
    assert!(ok, "200 small files in a 64 MiB volume: {out}");
    let (_, used, _) = df(&target);
    assert_eq!(used, 200 * 4096, "200 files of 4 KiB");
    let (ok, out) = as_nobody(&format!("rm -r {}/small", target.display()));
    assert!(ok, "{out}");

    // 64 MiB fit; the 65th MiB is refused with EDQUOT.
    let file = target.join("big");
    let (ok, out) = as_nobody(&format!(
        "dd if=/dev/zero of={} bs=1M count=64 conv=fsync status=none",
        file.display()
    ));
    assert!(ok, "64 MiB in a 64 MiB volume: {out}");
    let (ok, out) = as_nobody(&format!(
        "dd if=/dev/zero of={} bs=1M count=1 oflag=append conv=notrunc,fsync status=none",
        file.display()
    ));
    assert!(!ok, "the 65th MiB was accepted");
    assert!(out.contains("quota"), "EDQUOT, as dd says it: {out}");
    assert_eq!(
        std::fs::metadata(&file).expect("stat").len(),
        64 << 20,
        "the refused write changed nothing"
    );
    assert_eq!(df(&target), (sixty_four, sixty_four, 0), "df shows it full");
    let err = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .expect_err("root is held to the quota too");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    // NodeGetVolumeStats tells the same.
    let reply = stats(&c, "q", &target).expect("stats");
    let bytes = reply
        .usage
        .iter()
        .find(|u| u.unit == Unit::Bytes as i32)
        .expect("bytes");
    assert_eq!(
        (bytes.total, bytes.used, bytes.available),
        (64 * MIB, 64 * MIB, 0)
    );

    // Deleting gives the room back; expanding makes more.
    std::fs::remove_file(&file).expect("rm");
    assert_eq!(df(&target), (sixty_four, 0, sixty_four));
    c.call(
        c.controller
            .clone()
            .controller_expand_volume(ControllerExpandVolumeRequest {
                volume_id: "q".into(),
                capacity_range: Some(exact(128 * MIB)),
                ..ControllerExpandVolumeRequest::default()
            }),
    )
    .expect("expand");
    let (ok, out) = as_nobody(&format!(
        "dd if=/dev/zero of={} bs=1M count=100 status=none",
        file.display()
    ));
    assert!(ok, "100 MiB in a 128 MiB volume: {out}");
    assert_eq!(df(&target).0, 128 << 20);
    // The namespace outside the volume is not limited by it.
    let outside = fx.dirs.mountpoint().join("outside");
    std::fs::write(&outside, vec![1u8; 200 << 20]).expect("200 MiB outside every volume");
    // A file never moves out of its volume: EXDEV, so mv copies.
    let err = std::fs::rename(
        fx.dirs.mountpoint().join("csi-volumes/q/big"),
        fx.dirs.mountpoint().join("big"),
    )
    .expect_err("a rename out of a volume");
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
}
