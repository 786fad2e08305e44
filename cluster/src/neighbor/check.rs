//! Cluster-wide cache checks (`datenlord cache inspect --verify --masters
//! …`): every cache node checks the blocks it holds against the store's
//! checksums and drops bad copies ([`datenlord_engine::verify`]), on an
//! administrator's `Verify` frame; the answers come back per node.

use datenlord_engine::VerifyReport;

use super::conn::{Conn, NeighborError};
use super::warm::local_executor;
use super::DataLink;

/// What one node's check gave.
pub type NodeCheck = (u64, Result<VerifyReport, NeighborError>);

/// Has each of `nodes` (id, block service address) check its cache, all at
/// once; one answer per node, in the order given. A node that does not
/// answer within `timeout_ms` counts as failed.
pub fn verify_nodes(
    nodes: &[(u64, String)],
    link: &DataLink,
    block_max: u32,
    timeout_ms: u64,
) -> Result<Vec<NodeCheck>, NeighborError> {
    let executor = local_executor("dl-check")?;
    let checks = nodes.iter().map(|(node, addr)| async move {
        let result = match Conn::open(*node, addr, link, block_max).await {
            Ok(conn) => conn.verify(timeout_ms).await,
            Err(e) => Err(e),
        };
        (*node, result)
    });
    Ok(executor.run(futures::future::join_all(checks)))
}
