//! The data-locality scheduler extender (`datenlord scheduler-extender`):
//! kube-scheduler asks it, over HTTP with JSON, which candidate nodes a pod
//! may go to (`filter`) and how well each suits it (`prioritize`).
//!
//! A pod's DatenLord volumes are found from its claims: a claim's bound
//! PersistentVolume of driver [`crate::DRIVER_NAME`] names the volume
//! (its `volumeHandle`), through the Kubernetes API ([`kube`]). What each
//! node caches of those volumes comes from the nodes' health reports to
//! the masters ([`CacheSource`], implemented by the binary), by node name
//! (a node certificate's name is its Kubernetes node's).
//!
//! - **filter** keeps every candidate except a node whose DatenLord daemon
//!   the masters hold dead (a pod there could not use its volumes); a pod
//!   without DatenLord volumes passes everywhere.
//! - **prioritize** scores a node `0..=10` by the bytes of the pod's
//!   volumes it caches, the node caching the most 10, the others in
//!   proportion (rounded up: a node caching anything scores at least 1);
//!   with nothing cached anywhere, or no DatenLord volume, every node
//!   scores 0 (neutral).
//!
//! The extender never stops a pod from being scheduled for want of an
//! answer: when the Kubernetes API or the masters cannot be asked, filter
//! passes every node and prioritize scores them all 0, and it says why in
//! its log. The deciding parts here are plain functions without IO.

pub mod http;
pub mod kube;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Highest score (kube-scheduler's `MaxExtenderPriority`).
pub const MAX_SCORE: i64 = 10;

/// Errors of the extender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The scheduler's request is not an `ExtenderArgs`.
    #[error("not a scheduler extender request: {0}")]
    BadRequest(String),
    /// The Kubernetes API could not be asked, or answered something else
    /// than expected.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// The masters could not be asked.
    #[error("DatenLord masters: {0}")]
    Masters(String),
    /// The extender's configuration is wrong (the message says what to
    /// give).
    #[error("{0}")]
    Config(String),
}

/// A claim a pod mounts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    /// The pod's namespace.
    pub namespace: String,
    /// The PersistentVolumeClaim's name.
    pub name: String,
}

/// What the masters know of one node for a pod's volumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCache {
    /// Whether its DatenLord daemon is live (in the cache registry and
    /// heard by the leader).
    pub live: bool,
    /// Bytes it caches of the volumes asked about.
    pub bytes: u64,
}

/// Where the extender learns what nodes cache: the masters.
pub trait CacheSource: Send + Sync + 'static {
    /// For the DatenLord volumes `volumes` (volume ids, the PVs'
    /// `volumeHandle`s), every node the masters know, by node name. May
    /// block (it is called on a blocking thread).
    fn nodes(&self, volumes: &[String]) -> Result<BTreeMap<String, NodeCache>, Error>;
}

/// A scheduler's `ExtenderArgs`: the pod and its candidate nodes, either as
/// names (`nodeCacheCapable: true`) or as whole Node objects.
#[derive(Debug)]
pub struct Request {
    /// The pod being scheduled.
    pub pod: Value,
    /// The candidates as a NodeList, when sent so.
    pub nodes: Option<Value>,
    /// The candidates as names, when sent so.
    pub node_names: Option<Vec<String>>,
}

/// A field of a JSON object under its Go name or the scheduler's
/// lower-case spelling (Go's decoder takes either).
fn field<'a>(object: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|name| object.get(*name))
        .filter(|v| !v.is_null())
}

impl Request {
    /// Parses the body of a filter or prioritize call.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Error::BadRequest(e.to_string()))?;
        let pod = field(&value, &["Pod", "pod"])
            .cloned()
            .ok_or_else(|| Error::BadRequest("no Pod".into()))?;
        let nodes = field(&value, &["Nodes", "nodes"]).cloned();
        let node_names = match field(&value, &["NodeNames", "nodenames", "nodeNames"]) {
            Some(names) => Some(
                serde_json::from_value(names.clone())
                    .map_err(|e| Error::BadRequest(format!("NodeNames: {e}")))?,
            ),
            None => None,
        };
        if nodes.is_none() && node_names.is_none() {
            return Err(Error::BadRequest("neither Nodes nor NodeNames".into()));
        }
        Ok(Self {
            pod,
            nodes,
            node_names,
        })
    }

    /// The candidate nodes' names, in the order given.
    pub fn candidates(&self) -> Vec<String> {
        if let Some(names) = &self.node_names {
            return names.clone();
        }
        self.node_items()
            .iter()
            .filter_map(node_name)
            .map(str::to_string)
            .collect()
    }

    fn node_items(&self) -> Vec<Value> {
        self.nodes
            .as_ref()
            .and_then(|list| list.get("items"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The claims the pod mounts: its `persistentVolumeClaim` volumes and
    /// the claims Kubernetes makes for its generic ephemeral volumes
    /// (`<pod>-<volume>`), each once.
    pub fn claims(&self) -> Vec<Claim> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = text(self.pod.pointer("/metadata/namespace"));
        let namespace = if namespace.is_empty() {
            "default".to_string()
        } else {
            namespace
        };
        let pod_name = text(self.pod.pointer("/metadata/name"));
        let volumes = self
            .pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut claims = BTreeSet::new();
        for volume in &volumes {
            let name = if let Some(claim) = volume.pointer("/persistentVolumeClaim/claimName") {
                text(Some(claim))
            } else if volume.get("ephemeral").is_some() && !pod_name.is_empty() {
                format!("{pod_name}-{}", text(volume.get("name")))
            } else {
                continue;
            };
            if kube::is_object_name(&name) && kube::is_object_name(&namespace) {
                claims.insert(Claim {
                    namespace: namespace.clone(),
                    name,
                });
            }
        }
        claims.into_iter().collect()
    }

    /// The filter call's answer (`ExtenderFilterResult`): the candidates
    /// that pass, in the form they came in, and why the others failed.
    pub fn filter_result(&self, failed: &BTreeMap<String, String>) -> Value {
        let mut result = serde_json::Map::new();
        if let Some(names) = &self.node_names {
            let kept: Vec<&String> = names.iter().filter(|n| !failed.contains_key(*n)).collect();
            result.insert("NodeNames".into(), serde_json::json!(kept));
        }
        if let Some(list) = &self.nodes {
            let kept: Vec<Value> = self
                .node_items()
                .into_iter()
                .filter(|node| node_name(node).is_some_and(|n| !failed.contains_key(n)))
                .collect();
            let mut list = list.clone();
            if let Some(object) = list.as_object_mut() {
                object.insert("items".into(), Value::Array(kept));
            }
            result.insert("Nodes".into(), list);
        }
        result.insert("FailedNodes".into(), serde_json::json!(failed));
        result.insert("Error".into(), Value::String(String::new()));
        Value::Object(result)
    }
}

fn node_name(node: &Value) -> Option<&str> {
    node.pointer("/metadata/name").and_then(Value::as_str)
}

/// The candidates that fail the filter, with why: those whose DatenLord
/// node the masters hold dead.
pub fn failed_nodes(
    candidates: &[String],
    nodes: &BTreeMap<String, NodeCache>,
) -> BTreeMap<String, String> {
    candidates
        .iter()
        .filter(|name| nodes.get(*name).is_some_and(|node| !node.live))
        .map(|name| {
            (
                name.clone(),
                "the DatenLord node daemon on this node is not live (the masters have not heard it): the pod's DatenLord volumes could not be mounted here".to_string(),
            )
        })
        .collect()
}

/// The prioritize call's scores (`HostPriorityList`), one per candidate in
/// order: `0..=MAX_SCORE` by cached bytes, the most 10.
pub fn scores(candidates: &[String], nodes: &BTreeMap<String, NodeCache>) -> Vec<(String, i64)> {
    let bytes = |name: &String| nodes.get(name).map_or(0, |node| node.bytes);
    let most = candidates.iter().map(bytes).max().unwrap_or(0);
    candidates
        .iter()
        .map(|name| {
            let score = if most == 0 {
                0
            } else {
                let scaled =
                    (u128::from(bytes(name)) * MAX_SCORE as u128).div_ceil(u128::from(most));
                i64::try_from(scaled).unwrap_or(MAX_SCORE).min(MAX_SCORE)
            };
            (name.clone(), score)
        })
        .collect()
}

/// Scores as the scheduler reads them: `[{"Host": …, "Score": …}]`.
pub fn scores_json(scores: &[(String, i64)]) -> Value {
    Value::Array(
        scores
            .iter()
            .map(|(host, score)| serde_json::json!({ "Host": host, "Score": score }))
            .collect(),
    )
}

#[cfg(test)]
mod tests;
