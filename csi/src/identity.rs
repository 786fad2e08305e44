//! The identity service: who the plugin is, what it can do, and whether
//! it is ready (its DatenLord mount answers).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::namespace::Namespace;
use crate::proto::identity_server::Identity;
use crate::proto::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use crate::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};

/// The driver's name (the CSIDriver object's and the StorageClass's
/// `provisioner`).
pub const DRIVER_NAME: &str = "csi.datenlord.io";

/// The identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    namespace: Arc<Namespace>,
    controller: bool,
}

impl IdentityService {
    /// The identity of a plugin that serves the controller service or not.
    pub fn new(namespace: Arc<Namespace>, controller: bool) -> Self {
        Self {
            namespace,
            controller,
        }
    }
}

fn service(kind: service::Type) -> PluginCapability {
    PluginCapability {
        r#type: Some(Type::Service(Service {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: std::collections::HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = vec![
            // Nodes say their name as topology (NodeGetInfo); volumes are
            // reachable from every node.
            service(service::Type::VolumeAccessibilityConstraints),
            // A capacity is the namespace's record: it grows while used.
            PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                    r#type: volume_expansion::Type::Online as i32,
                })),
            },
        ];
        if self.controller {
            capabilities.insert(0, service(service::Type::ControllerService));
        }
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        let namespace = Arc::clone(&self.namespace);
        let ready = tokio::task::spawn_blocking(move || namespace.live().is_some())
            .await
            .unwrap_or(false);
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
