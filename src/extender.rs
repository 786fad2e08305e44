//! `datenlord scheduler-extender`: kube-scheduler's data-locality
//! extender (`datenlord_csi::extender`), with the masters as the source of
//! what every node caches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use datenlord_cluster::master::{ClientError, MetaClient, Query, QueryAnswer};
use datenlord_cluster::meta::{Creds, Ino, ROOT_INO};
use datenlord_csi::extender::http::Extender;
use datenlord_csi::extender::kube::{Kube, KubeConfig};
use datenlord_csi::extender::{CacheSource, Error, NodeCache};
use tracing::info;

use crate::MastersArgs;

/// How long one question to the masters may take (the scheduler waits 5 s
/// for the whole answer).
const MASTERS_DEADLINE_MS: u64 = 2_000;

#[derive(Debug, clap::Args)]
pub(crate) struct ExtenderArgs {
    /// Where the scheduler reaches the extender (HTTP; the scheduler's
    /// `urlPrefix`).
    #[arg(long, default_value = "0.0.0.0:8888", value_name = "HOST:PORT")]
    listen: String,
    #[command(flatten)]
    cluster: MastersArgs,
    /// The directory of the namespace that holds the CSI volumes (the CSI
    /// driver's `--volumes-dir`).
    #[arg(
        long = "volumes-dir",
        default_value = "csi-volumes",
        value_name = "NAME"
    )]
    volumes_dir: String,
    /// The Kubernetes API server's URL (default: the in-cluster address
    /// Kubernetes gives every pod).
    #[arg(long = "kube-api", value_name = "URL")]
    kube_api: Option<String>,
    /// A bearer token file for the API (default in a pod: the service
    /// account's).
    #[arg(long = "kube-token-file", value_name = "FILE")]
    kube_token_file: Option<PathBuf>,
    /// The CA bundle of the API server's certificate (default in a pod:
    /// the service account's).
    #[arg(long = "kube-ca-file", value_name = "FILE")]
    kube_ca_file: Option<PathBuf>,
}

/// What the masters know of the nodes' caches.
struct Masters {
    client: Mutex<MetaClient>,
    volumes_dir: String,
}

impl Masters {
    /// The root directory of volume `id`; `None` when there is none.
    fn root_of(client: &mut MetaClient, dir: &str, id: &str) -> Result<Option<Ino>, Error> {
        let mut ino = ROOT_INO;
        for name in [dir, id] {
            let query = Query::Lookup {
                parent: ino,
                name: name.as_bytes().to_vec(),
                creds: Creds::root(),
            };
            match client.query(&query) {
                Ok(QueryAnswer::Attr(attr)) => ino = attr.ino,
                Ok(other) => {
                    return Err(Error::Masters(format!("{other:?} to a lookup")));
                }
                Err(ClientError::Meta { errno, .. }) if errno == libc::ENOENT => return Ok(None),
                Err(e) => return Err(Error::Masters(e.to_string())),
            }
        }
        Ok(Some(ino))
    }
}

impl CacheSource for Masters {
    fn nodes(&self, volumes: &[String]) -> Result<BTreeMap<String, NodeCache>, Error> {
        let mut client = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        let mut roots = Vec::new();
        for id in volumes {
            roots.extend(Self::root_of(&mut client, &self.volumes_dir, id)?);
        }
        let live: BTreeMap<u64, bool> = match client
            .query(&Query::CacheNodes)
            .map_err(|e| Error::Masters(e.to_string()))?
        {
            QueryAnswer::CacheNodes { nodes, .. } => nodes.iter().map(|n| (n.id, n.live)).collect(),
            other => return Err(Error::Masters(format!("{other:?} for the cache registry"))),
        };
        let reports = client.health().map_err(|e| Error::Masters(e.to_string()))?;
        Ok(reports
            .into_iter()
            .filter(|entry| !entry.name.is_empty())
            .map(|entry| {
                let bytes = entry
                    .health
                    .volumes
                    .iter()
                    .filter(|v| roots.contains(&Ino(v.root)))
                    .fold(0u64, |sum, v| sum.saturating_add(v.bytes));
                let node = NodeCache {
                    live: live.get(&entry.id).copied().unwrap_or(false),
                    bytes,
                };
                (entry.name, node)
            })
            .collect())
    }
}

pub(crate) fn run(args: &ExtenderArgs) -> anyhow::Result<ExitCode> {
    datenlord_csi::volume::VolumeName::parse(&args.volumes_dir)
        .map_err(|why| anyhow::anyhow!("--volumes-dir: {why}"))?;
    let security = args.cluster.tls.security()?;
    let kube = Kube::new(&KubeConfig {
        api: args.kube_api.clone(),
        token_file: args.kube_token_file.clone(),
        ca_file: args.kube_ca_file.clone(),
    })?;
    let masters = Masters {
        client: Mutex::new(MetaClient::with_deadline(
            args.cluster.masters.clone(),
            Duration::from_millis(MASTERS_DEADLINE_MS),
            &security,
        )),
        volumes_dir: args.volumes_dir.clone(),
    };
    let extender = Arc::new(Extender::new(kube, Arc::new(masters)));
    let stopped = crate::csi::stop_signal("the scheduler extender")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the extender's runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on --listen {}", args.listen))?;
        info!(
            listen = %listener.local_addr().map_or_else(|_| args.listen.clone(), |a| a.to_string()),
            masters = ?args.cluster.masters,
            "serving the scheduler extender (POST /filter, POST /prioritize)"
        );
        datenlord_csi::extender::http::serve(listener, extender, stopped)
            .await
            .context("serving the scheduler extender")
    })?;
    info!("the scheduler extender stopped");
    Ok(ExitCode::SUCCESS)
}
