//! Compiles the proto contract with protox (no system protoc), generates the
//! tonic services, and the canonical proto3 JSON mapping with pbjson.

use protox::prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/transferguard/v1/transferguard.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(protos, ["proto"])?;
    let descriptor = fds.encode_to_vec();
    std::fs::write(out.join("transferguard_descriptor.bin"), &descriptor)?;
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(fds)?;
    pbjson_build::Builder::new().register_descriptors(&descriptor)?.build(&[".transferguard.v1"])?;
    Ok(())
}
