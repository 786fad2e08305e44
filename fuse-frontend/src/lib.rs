//! FUSE frontend: adapts the kernel FUSE protocol to `datenlord-fs`.
