//! Compiles `souk/**/v1/*.proto` with protox (pure Rust: no protoc to install) and hands the
//! descriptor set to tonic-prost-build; the same descriptor set is written out for reflection.
use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "souk/encoder/v1/encoder.proto",
    "souk/kg/v1/kg.proto",
    "souk/ranker/v1/ranker.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["."])?;
    std::fs::write(
        out_dir.join("souk_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
