//! raft-rs logs through slog; this drain forwards its records to `tracing`
//! so the whole process has one log stream.

use std::fmt::Write as _;

use slog::{o, Drain, Level, OwnedKVList, Record, KV};

struct TracingDrain;

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let message = record.msg();
        let fields = fields.0;
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{message}{fields}"),
            Level::Warning => tracing::warn!(target: "raft", "{message}{fields}"),
            Level::Info => tracing::info!(target: "raft", "{message}{fields}"),
            Level::Debug => tracing::debug!(target: "raft", "{message}{fields}"),
            Level::Trace => tracing::trace!(target: "raft", "{message}{fields}"),
        }
        Ok(())
    }
}

/// A slog logger for replica `id` that writes to `tracing`.
pub fn logger(id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), o!("raft_id" => id))
}
