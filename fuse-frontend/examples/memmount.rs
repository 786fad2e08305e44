//! Mounts an in-memory DatenLord volume (embedded master in a temporary
//! directory, memory-only engine, `MemoryStore` as the store) until it is
//! unmounted from outside: `cargo run -p datenlord-fuse --example memmount
//! -- /mnt/x [-o options]`, then `umount /mnt/x`. For trying the mount by
//! hand; `datenlord mount` is the real entry point.

use std::sync::Arc;

use datenlord_cluster::master::Master;
use datenlord_engine::{Engine, EngineConfig, MemoryStore};
use datenlord_fs::{Fs, FsConfig, MemorySink, MetaLink};
use datenlord_fuse::{mount, parse_mount_options, MountOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let mountpoint = args
        .next()
        .ok_or("usage: memmount MOUNTPOINT [-o OPTIONS]")?;
    let parsed = match (args.next().as_deref(), args.next()) {
        (Some("-o"), Some(text)) => parse_mount_options(&text)?,
        (None, _) => parse_mount_options("")?,
        _ => return Err("usage: memmount MOUNTPOINT [-o OPTIONS]".into()),
    };
    let dir = tempfile::tempdir()?;
    let master = Master::embedded(&dir.path().join("meta"), None)?;
    let store = MemoryStore::new();
    let config = EngineConfig {
        cores: Some(1),
        memory_bytes: 512 << 20,
        hugepages: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(&config, Arc::clone(&store))?;
    let fs_config = FsConfig {
        atime: parsed.atime.unwrap_or_default(),
        ..FsConfig::default()
    };
    let fs = Fs::new(
        fs_config,
        MetaLink::from_master(&master),
        engine.handle(),
        MemorySink::new(store),
    )?;
    let mut opts = MountOptions::new(&mountpoint);
    parsed.apply(&mut opts);
    let mounted = mount(fs, &opts)?;
    eprintln!("mounted on {mountpoint}; unmount with `umount {mountpoint}`");
    mounted.wait()?;
    engine.shutdown()?;
    master.stop()?;
    Ok(())
}
