//! Shared helpers of the end-to-end tests.
#![allow(dead_code)]

pub mod csi;
pub mod fsx;
pub mod masters;
pub mod netns;
pub mod node;
pub mod s3;
pub mod store;
pub mod writer;
