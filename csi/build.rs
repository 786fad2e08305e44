//! Generates the CSI gRPC services and clients from `proto/csi.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    // protox resolves the spec's imports of the well-known types
    // (descriptor, timestamp, wrappers) from its own copies.
    let descriptors = protox::compile(["csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
