//! The controller service: volumes are made, listed, grown and deleted
//! as directories of the namespace (see `store`).

use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::capability::{self, required};
use crate::error::{Error, Result};
use crate::inflight::InFlight;
use crate::namespace::{self, Namespace};
use crate::proto::controller_server::Controller;
use crate::proto::controller_service_capability::rpc::Type as RpcType;
use crate::proto::controller_service_capability::{Rpc, Type as CapabilityType};
use crate::proto::validate_volume_capabilities_response::Confirmed;
use crate::proto::{
    list_volumes_response, ControllerExpandVolumeRequest, ControllerExpandVolumeResponse,
    ControllerGetCapabilitiesRequest, ControllerGetCapabilitiesResponse,
    ControllerGetVolumeRequest, ControllerGetVolumeResponse, ControllerPublishVolumeRequest,
    ControllerPublishVolumeResponse, ControllerServiceCapability, ControllerUnpublishVolumeRequest,
    ControllerUnpublishVolumeResponse, CreateSnapshotRequest, CreateSnapshotResponse,
    CreateVolumeRequest, CreateVolumeResponse, DeleteSnapshotRequest, DeleteSnapshotResponse,
    DeleteVolumeRequest, DeleteVolumeResponse, GetCapacityRequest, GetCapacityResponse,
    ListSnapshotsRequest, ListSnapshotsResponse, ListVolumesRequest, ListVolumesResponse,
    ValidateVolumeCapabilitiesRequest, ValidateVolumeCapabilitiesResponse, Volume,
};
use crate::store::VolumeStore;
use crate::volume::{bytes_i64, Capacity, VolumeName};

/// StorageClass parameters the provisioner adds itself (with
/// `--extra-create-metadata`): accepted and ignored.
const PROVISIONER_PARAMETER_PREFIX: &str = "csi.storage.k8s.io/";

/// The controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    namespace: Arc<Namespace>,
    store: VolumeStore,
    in_flight: Arc<InFlight>,
}

/// INVALID_ARGUMENT for a StorageClass parameter this driver does not know
/// (it has none yet).
pub fn check_parameters<S: std::hash::BuildHasher>(
    parameters: &HashMap<String, String, S>,
) -> Result<()> {
    let mut unknown: Vec<&str> = parameters
        .keys()
        .map(String::as_str)
        .filter(|k| !k.starts_with(PROVISIONER_PARAMETER_PREFIX))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(Error::InvalidArgument(format!(
        "unknown parameters {unknown:?}: this driver takes no StorageClass parameters yet"
    )))
}

/// The name of an existing volume's id: NOT_FOUND when the id cannot be
/// one of this driver's volumes.
pub fn existing_name(volume_id: &str) -> Result<VolumeName> {
    VolumeName::parse(required("volume_id", volume_id)?)
        .map_err(|why| Error::NotFound(format!("no volume {volume_id:?} ({why})")))
}

fn volume(name: &VolumeName, bytes: u64) -> Volume {
    Volume {
        capacity_bytes: bytes_i64(bytes),
        volume_id: name.as_str().to_string(),
        // Reachable from every node that mounts the namespace: no
        // accessible_topology.
        ..Volume::default()
    }
}

/// Runs blocking file system work off the gRPC tasks.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> std::result::Result<Response<T>, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(reply)) => Ok(Response::new(reply)),
        Ok(Err(e)) => {
            tracing::info!(code = ?e.code(), error = %e, "request refused");
            Err(e.into())
        }
        Err(e) => Err(Status::internal(format!(
            "the request's worker failed: {e}"
        ))),
    }
}

impl ControllerService {
    /// The controller of the volumes in `volumes_dir` of `namespace`.
    pub fn new(namespace: Arc<Namespace>, volumes_dir: &str) -> Self {
        let store = VolumeStore::new(namespace.mountpoint(), volumes_dir);
        Self {
            state: Arc::new(State {
                namespace,
                store,
                in_flight: Arc::default(),
            }),
        }
    }
}

impl State {
    fn create(&self, req: &CreateVolumeRequest) -> Result<CreateVolumeResponse> {
        let name =
            VolumeName::parse(required("name", &req.name)?).map_err(Error::InvalidArgument)?;
        capability::check_all(&req.volume_capabilities)?;
        let range = Capacity::from_range(req.capacity_range.as_ref())?;
        if req.volume_content_source.is_some() {
            return Err(Error::InvalidArgument(
                "volume_content_source: volumes from snapshots or other volumes are not supported yet".into(),
            ));
        }
        check_parameters(&req.parameters)?;
        let _op = self.in_flight.begin(name.as_str())?;
        self.namespace.ensure()?;
        self.store.prepare()?;
        // A second round only when another controller made the volume
        // between our look and our rename.
        for _ in 0..2 {
            if let Some(bytes) = self.store.capacity(&name)? {
                if !range.admits(bytes) {
                    return Err(Error::AlreadyExists(format!(
                        "volume {name} exists with {bytes} bytes, outside the requested range"
                    )));
                }
                return Ok(CreateVolumeResponse {
                    volume: Some(volume(&name, bytes)),
                });
            }
            let bytes = range.for_new_volume();
            if self.store.create(&name, bytes)? {
                tracing::info!(volume = %name, bytes, "created volume");
                return Ok(CreateVolumeResponse {
                    volume: Some(volume(&name, bytes)),
                });
            }
        }
        Err(Error::Aborted(format!(
            "volume {name} is being created elsewhere: retry"
        )))
    }

    fn delete(&self, req: &DeleteVolumeRequest) -> Result<DeleteVolumeResponse> {
        let id = required("volume_id", &req.volume_id)?;
        // An id that cannot name a volume names none: deleted already.
        let Ok(name) = VolumeName::parse(id) else {
            return Ok(DeleteVolumeResponse {});
        };
        let _op = self.in_flight.begin(name.as_str())?;
        self.namespace.ensure()?;
        if self.store.delete(&name)? {
            tracing::info!(volume = %name, "deleted volume");
        }
        Ok(DeleteVolumeResponse {})
    }

    fn validate(
        &self,
        req: &ValidateVolumeCapabilitiesRequest,
    ) -> Result<ValidateVolumeCapabilitiesResponse> {
        let name = existing_name(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument(
                "volume_capabilities is required".into(),
            ));
        }
        self.namespace.ensure()?;
        if self.store.capacity(&name)?.is_none() {
            return Err(Error::NotFound(format!("no volume {name}")));
        }
        let why_not = req
            .volume_capabilities
            .iter()
            .find_map(capability::unsupported)
            .or_else(|| {
                check_parameters(&req.parameters)
                    .err()
                    .map(|e| e.to_string())
            });
        Ok(match why_not {
            Some(message) => ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message,
            },
            None => ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: req.volume_context.clone(),
                    volume_capabilities: req.volume_capabilities.clone(),
                    parameters: req.parameters.clone(),
                }),
                message: String::new(),
            },
        })
    }

    fn list(&self, req: &ListVolumesRequest) -> Result<ListVolumesResponse> {
        self.namespace.ensure()?;
        let names = self.store.list()?;
        let (range, next_token) = crate::page::page(&names, &req.starting_token, req.max_entries)?;
        let mut entries = Vec::with_capacity(range.len());
        for name in &names[range] {
            match self.store.capacity(name) {
                Ok(Some(bytes)) => entries.push(list_volumes_response::Entry {
                    volume: Some(volume(name, bytes)),
                    status: None,
                }),
                // Deleted since the listing: not on the page.
                Ok(None) => {}
                // A directory the driver did not make is no volume; it
                // must not break every later listing.
                Err(Error::FailedPrecondition(why)) => {
                    tracing::warn!(volume = %name, %why, "not listed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    fn capacity(&self, req: &GetCapacityRequest) -> Result<GetCapacityResponse> {
        if req
            .volume_capabilities
            .iter()
            .any(|c| capability::unsupported(c).is_some())
            || check_parameters(&req.parameters).is_err()
        {
            return Ok(GetCapacityResponse {
                available_capacity: 0,
            });
        }
        self.namespace.ensure()?;
        let mountpoint = self.namespace.mountpoint();
        let stat = namespace::statvfs(mountpoint)
            .map_err(Error::io(format!("statvfs {}", mountpoint.display())))?;
        Ok(GetCapacityResponse {
            available_capacity: bytes_i64(stat.f_bavail.saturating_mul(stat.f_frsize)),
        })
    }

    fn expand(
        &self,
        req: &ControllerExpandVolumeRequest,
    ) -> Result<ControllerExpandVolumeResponse> {
        let name = existing_name(&req.volume_id)?;
        let range = Capacity::from_range(req.capacity_range.as_ref())?;
        if !range.is_given() {
            return Err(Error::InvalidArgument("capacity_range is required".into()));
        }
        if let Some(c) = &req.volume_capability {
            capability::check("volume_capability", Some(c))?;
        }
        let _op = self.in_flight.begin(name.as_str())?;
        self.namespace.ensure()?;
        let current = self
            .store
            .capacity(&name)?
            .ok_or_else(|| Error::NotFound(format!("no volume {name}")))?;
        let bytes = range.expanded(current)?;
        if bytes != current {
            self.store.set_capacity(&name, bytes)?;
            tracing::info!(volume = %name, from = current, to = bytes, "expanded volume");
        }
        // The capacity is the namespace's: no node has anything to do.
        Ok(ControllerExpandVolumeResponse {
            capacity_bytes: bytes_i64(bytes),
            node_expansion_required: false,
        })
    }
}

fn rpc(kind: RpcType) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(CapabilityType::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> std::result::Result<Response<CreateVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.create(request.get_ref())).await
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> std::result::Result<Response<DeleteVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.delete(request.get_ref())).await
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<ControllerPublishVolumeRequest>,
    ) -> std::result::Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "a DatenLord volume needs no attaching: every node mounts the namespace",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<ControllerUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "a DatenLord volume needs no attaching: every node mounts the namespace",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.validate(request.get_ref())).await
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> std::result::Result<Response<ListVolumesResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.list(request.get_ref())).await
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> std::result::Result<Response<GetCapacityResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.capacity(request.get_ref())).await
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![
                rpc(RpcType::CreateDeleteVolume),
                rpc(RpcType::ListVolumes),
                rpc(RpcType::GetCapacity),
                rpc(RpcType::ExpandVolume),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        _request: Request<CreateSnapshotRequest>,
    ) -> std::result::Result<Response<CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<DeleteSnapshotRequest>,
    ) -> std::result::Result<Response<DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
    }

    async fn list_snapshots(
        &self,
        _request: Request<ListSnapshotsRequest>,
    ) -> std::result::Result<Response<ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not supported yet"))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<ControllerExpandVolumeResponse>, Status> {
        let state = Arc::clone(&self.state);
        blocking(move || state.expand(request.get_ref())).await
    }

    async fn controller_get_volume(
        &self,
        _request: Request<ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerGetVolume is not supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_provisioners_own_parameters_are_accepted() {
        let mut parameters = HashMap::new();
        assert!(check_parameters(&parameters).is_ok());
        parameters.insert("csi.storage.k8s.io/pvc/name".to_string(), "x".to_string());
        assert!(check_parameters(&parameters).is_ok());
        parameters.insert("replicas".to_string(), "3".to_string());
        assert!(matches!(
            check_parameters(&parameters),
            Err(Error::InvalidArgument(m)) if m.contains("replicas")
        ));
    }

    #[test]
    fn ids_that_cannot_be_volumes_are_not_found_and_empty_ids_invalid() {
        assert!(matches!(existing_name(""), Err(Error::InvalidArgument(_))));
        assert!(matches!(existing_name("../etc"), Err(Error::NotFound(_))));
        assert_eq!(
            existing_name("pvc-1").ok().map(|n| n.to_string()),
            Some("pvc-1".into())
        );
    }
}
