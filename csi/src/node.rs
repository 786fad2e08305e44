//! The node service. A volume is staged as a bind mount of its directory
//! on the node's DatenLord mount at the staging path, and published as a
//! bind mount of the staging path at the pod's target path (read-only
//! when asked). Whether a path is staged or published is read from the
//! mount table, so every call is idempotent and a restarted plugin
//! unpublishes and unstages what an earlier one mounted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::bind;
use crate::capability::{self, required, required_path};
use crate::controller::{blocking, existing_name};
use crate::error::{Error, Result};
use crate::inflight::InFlight;
use crate::mountinfo::{self, MountEntry, DATENLORD_FS_TYPE};
use crate::namespace::{self, Namespace};
use crate::proto::node_server::Node;
use crate::proto::node_service_capability::rpc::Type as RpcType;
use crate::proto::node_service_capability::{Rpc, Type as CapabilityType};
use crate::proto::volume_usage::Unit;
use crate::proto::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse, Topology, VolumeCondition, VolumeUsage,
};
use crate::store::VolumeStore;
use crate::volume::{bytes_i64, Capacity, VolumeName};

/// The topology key whose value is the node's name.
pub const TOPOLOGY_NODE_KEY: &str = "topology.csi.datenlord.io/node";

/// The most mounts stacked on one path that an unpublish takes away.
const MAX_STACKED_MOUNTS: usize = 16;

/// The node service.
#[derive(Debug, Clone)]
pub struct NodeService {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    node_name: String,
    namespace: Arc<Namespace>,
    store: VolumeStore,
    in_flight: Arc<InFlight>,
}

/// `path` as the mount table shows it: its parent without symbolic
/// links (the path itself may be a dead mount that cannot be resolved).
fn mount_path(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map_or_else(|_| path.to_path_buf(), |parent| parent.join(name)),
        _ => path.to_path_buf(),
    }
}

/// What is mounted at `path` now (the topmost mount).
fn mounted_at(path: &Path) -> Result<Option<MountEntry>> {
    let entries = mountinfo::read().map_err(Error::io("reading /proc/self/mountinfo"))?;
    Ok(mountinfo::top_at(&entries, path).cloned())
}

/// Takes every DatenLord mount off `path` (detaching one whose daemon is
/// gone); refuses to touch a mount of another file system.
fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..MAX_STACKED_MOUNTS {
        let Some(top) = mounted_at(path)? else {
            return Ok(());
        };
        if top.fs_type != DATENLORD_FS_TYPE {
            return Err(Error::FailedPrecondition(format!(
                "{} holds a {} mount, not a DatenLord volume: not unmounting it",
                path.display(),
                top.fs_type
            )));
        }
        let dead = matches!(namespace::statvfs(path), Err(e) if namespace::is_dead_mount(&e));
        match bind::unmount(path, dead) {
            // EINVAL: unmounted meanwhile.
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(Error::io(format!("unmounting {}", path.display()))(e)),
        }
    }
    Err(Error::FailedPrecondition(format!(
        "more than {MAX_STACKED_MOUNTS} mounts are stacked on {}",
        path.display()
    )))
}

/// What a bind mount of the volume at `path` needs: none there (mount),
/// the right one there (done), or a dead one of an earlier connection
/// (detach it and mount).
enum Present {
    Nothing,
    Done,
    Stale,
}

/// Whether `path` already shows the volume `root` of the live mount
/// `main` (read-only or not as `read_only` says, when given).
fn present(
    path: &Path,
    root: &Path,
    main: &MountEntry,
    read_only: Option<bool>,
) -> Result<Present> {
    let Some(entry) = mounted_at(path)? else {
        return Ok(Present::Nothing);
    };
    if !entry.shows(root) {
        return Err(Error::AlreadyExists(format!(
            "{} holds another mount ({} of {})",
            path.display(),
            entry.fs_type,
            entry.root.display()
        )));
    }
    if entry.device != main.device {
        return Ok(Present::Stale);
    }
    match read_only {
        Some(ro) if ro != entry.read_only => Err(Error::AlreadyExists(format!(
            "the volume is published at {} {}",
            path.display(),
            if entry.read_only {
                "read-only"
            } else {
                "read-write"
            }
        ))),
        _ => Ok(Present::Done),
    }
}

impl NodeService {
    /// The node service of node `node_name` for the volumes in
    /// `volumes_dir` of `namespace`.
    pub fn new(node_name: String, namespace: Arc<Namespace>, volumes_dir: &str) -> Self {
        let store = VolumeStore::new(namespace.mountpoint(), volumes_dir);
        Self {
            state: Arc::new(State {
                node_name,
                namespace,
                store,
                in_flight: Arc::default(),
            }),
        }
    }
}

impl State {
    /// A path of the request, as the mount table shows it; never the
    /// node's DatenLord mount or a path in it (an unpublish of the mount
    /// point would take the namespace from every pod of the node).
    fn request_path(&self, field: &str, value: &str) -> Result<PathBuf> {
        let path = mount_path(&required_path(field, value)?);
        if path.starts_with(self.namespace.mountpoint()) {
            return Err(Error::InvalidArgument(format!(
                "{field} {} is in the node's DatenLord mount {}",
                path.display(),
                self.namespace.mountpoint().display()
            )));
        }
        Ok(path)
    }

    /// The volume's name and the root its bind mounts show, once the
    /// namespace is mounted and the volume exists; and the mount.
    fn volume(&self, volume_id: &str) -> Result<(VolumeName, PathBuf, MountEntry, u64)> {
        let name = existing_name(volume_id)?;
        let main = self.namespace.ensure()?;
        let bytes = self
            .store
            .capacity(&name)?
            .ok_or_else(|| Error::NotFound(format!("no volume {name}")))?;
        let root = self.store.path_in_namespace(&name);
        Ok((name, root, main, bytes))
    }

    fn stage(&self, req: &NodeStageVolumeRequest) -> Result<NodeStageVolumeResponse> {
        required("volume_id", &req.volume_id)?;
        let staging = self.request_path("staging_target_path", &req.staging_target_path)?;
        capability::check("volume_capability", req.volume_capability.as_ref())?;
        let _op = self.in_flight.begin(&req.volume_id)?;
        let (name, root, main, _) = self.volume(&req.volume_id)?;
        match present(&staging, &root, &main, None)? {
            Present::Done => return Ok(NodeStageVolumeResponse {}),
            Present::Stale => unmount_all(&staging)?,
            Present::Nothing => {}
        }
        std::fs::create_dir_all(&staging)
            .map_err(Error::io(format!("mkdir {}", staging.display())))?;
        bind::bind(&self.store.path(&name), &staging, false).map_err(Error::io(format!(
            "bind mounting volume {name} at {}",
            staging.display()
        )))?;
        tracing::info!(volume = %name, path = %staging.display(), "staged");
        Ok(NodeStageVolumeResponse {})
    }

    fn unstage(&self, req: &NodeUnstageVolumeRequest) -> Result<NodeUnstageVolumeResponse> {
        required("volume_id", &req.volume_id)?;
        let staging = self.request_path("staging_target_path", &req.staging_target_path)?;
        let _op = self.in_flight.begin(&req.volume_id)?;
        unmount_all(&staging)?;
        tracing::info!(volume = %req.volume_id, path = %staging.display(), "unstaged");
        Ok(NodeUnstageVolumeResponse {})
    }

    fn publish(&self, req: &NodePublishVolumeRequest) -> Result<NodePublishVolumeResponse> {
        required("volume_id", &req.volume_id)?;
        let staging = self.request_path("staging_target_path", &req.staging_target_path)?;
        let target = self.request_path("target_path", &req.target_path)?;
        capability::check("volume_capability", req.volume_capability.as_ref())?;
        let read_only = req.readonly || capability::read_only_mode(req.volume_capability.as_ref());
        let _op = self.in_flight.begin(&req.volume_id)?;
        let (name, root, main, _) = self.volume(&req.volume_id)?;
        if !matches!(present(&staging, &root, &main, None), Ok(Present::Done)) {
            return Err(Error::FailedPrecondition(format!(
                "volume {name} is not staged at {}: NodeStageVolume first",
                staging.display()
            )));
        }
        match present(&target, &root, &main, Some(read_only))? {
            Present::Done => return Ok(NodePublishVolumeResponse {}),
            Present::Stale => unmount_all(&target)?,
            Present::Nothing => {}
        }
        std::fs::create_dir_all(&target)
            .map_err(Error::io(format!("mkdir {}", target.display())))?;
        bind::bind(&staging, &target, read_only).map_err(Error::io(format!(
            "bind mounting {} at {}",
            staging.display(),
            target.display()
        )))?;
        tracing::info!(volume = %name, path = %target.display(), read_only, "published");
        Ok(NodePublishVolumeResponse {})
    }

    fn unpublish(&self, req: &NodeUnpublishVolumeRequest) -> Result<NodeUnpublishVolumeResponse> {
        required("volume_id", &req.volume_id)?;
        let target = self.request_path("target_path", &req.target_path)?;
        let _op = self.in_flight.begin(&req.volume_id)?;
        unmount_all(&target)?;
        // The plugin made the target directory; it takes it away.
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("rmdir {}", target.display()))(e)),
        }
        tracing::info!(volume = %req.volume_id, path = %target.display(), "unpublished");
        Ok(NodeUnpublishVolumeResponse {})
    }

    fn stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        required("volume_id", &req.volume_id)?;
        let path = self.request_path("volume_path", &req.volume_path)?;
        let (name, root, main, bytes) = self.volume(&req.volume_id)?;
        let entry = mounted_at(&path)?
            .filter(|e| e.shows(&root))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "volume {name} is neither staged nor published at {}",
                    path.display()
                ))
            })?;
        let stat = match namespace::statvfs(&path) {
            Ok(stat) if entry.device == main.device => stat,
            Ok(_) => return Ok(abnormal("the mount belongs to a DatenLord daemon that is gone: publish the volume again")),
            Err(e) if namespace::is_dead_mount(&e) => return Ok(abnormal("the DatenLord daemon behind the mount is gone (ENOTCONN): publish the volume again")),
            Err(e) => return Err(Error::io(format!("statvfs {}", path.display()))(e)),
        };
        // Inside the volume, statvfs answers the directory quota's limit
        // and use (fs counts them as files change: no walk).
        let frsize = stat.f_frsize;
        let total = stat.f_blocks.saturating_mul(frsize);
        let free = stat.f_bavail.saturating_mul(frsize);
        let used = total.saturating_sub(stat.f_bfree.saturating_mul(frsize));
        if total != bytes {
            tracing::warn!(volume = %name, statvfs_bytes = total, capacity = bytes, "the volume's statvfs size is not its capacity: is its quota attribute set?");
        }
        Ok(NodeGetVolumeStatsResponse {
            usage: vec![
                VolumeUsage {
                    available: bytes_i64(free),
                    total: bytes_i64(total),
                    used: bytes_i64(used),
                    unit: Unit::Bytes as i32,
                },
                VolumeUsage {
                    available: bytes_i64(stat.f_favail),
                    total: bytes_i64(stat.f_files),
                    used: bytes_i64(stat.f_files.saturating_sub(stat.f_ffree)),
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(VolumeCondition {
                abnormal: false,
                message: String::new(),
            }),
        })
    }

    fn expand(&self, req: &NodeExpandVolumeRequest) -> Result<NodeExpandVolumeResponse> {
        required("volume_id", &req.volume_id)?;
        let path = self.request_path("volume_path", &req.volume_path)?;
        let range = Capacity::from_range(req.capacity_range.as_ref())?;
        let (name, root, _, bytes) = self.volume(&req.volume_id)?;
        if !mounted_at(&path)?.is_some_and(|e| e.shows(&root)) {
            return Err(Error::NotFound(format!(
                "volume {name} is neither staged nor published at {}",
                path.display()
            )));
        }
        // The controller records the capacity; the node has nothing to grow.
        if range.required_bytes > bytes {
            return Err(Error::OutOfRange(format!(
                "volume {name} has {bytes} bytes: expand it through the controller first"
            )));
        }
        Ok(NodeExpandVolumeResponse {
            capacity_bytes: bytes_i64(bytes),
        })
    }
}

fn abnormal(message: &str) -> NodeGetVolumeStatsResponse {
    NodeGetVolumeStatsResponse {
        usage: Vec::new(),
        volume_condition: Some(VolumeCondition {
            abnormal: true,
            message: message.into(),
        }),
    }
}

fn rpc(kind: RpcType) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(CapabilityType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> std::result::Result<Response<NodeStageVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.stage(request.get_ref())).await
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> std::result::Result<Response<NodeUnstageVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.unstage(request.get_ref())).await
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> std::result::Result<Response<NodePublishVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.publish(request.get_ref())).await
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.unpublish(request.get_ref())).await
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> std::result::Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.stats(request.get_ref())).await
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> std::result::Result<Response<NodeExpandVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.expand(request.get_ref())).await
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc(RpcType::StageUnstageVolume),
                rpc(RpcType::GetVolumeStats),
                rpc(RpcType::ExpandVolume),
                rpc(RpcType::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> std::result::Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.state.node_name.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology {
                segments: HashMap::from([(
                    TOPOLOGY_NODE_KEY.to_string(),
                    self.state.node_name.clone(),
                )]),
            }),
        }))
    }
}
