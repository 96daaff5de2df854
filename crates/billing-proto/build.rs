//! Compiles `proto/` with protox (pure Rust), so no system `protoc` is needed.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let files = ["billing/v1/billing.proto"];
    let descriptors = protox::compile(files, [proto_root])?;

    // Reflection needs the encoded descriptor set at run time.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("billing_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;

    println!("cargo:rerun-if-changed={proto_root}");
    Ok(())
}
