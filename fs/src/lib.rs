//! POSIX file system semantics over metadata (cluster) and blocks (engine).
