//! Compiles `proto/custody/v1/*.proto` with protox (pure Rust, no system
//! protoc) and generates the prost messages and tonic services.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let dir = root.join("custody/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds_bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("custody_descriptor.bin"), fds_bytes)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Segment bytes as `Bytes`: a slice of the received buffer on the
        // way in, of the caller's buffer on the way out, not a copy each.
        .bytes(".custody.v1.PutSegmentRequest.chunk")
        .bytes(".custody.v1.ReadSegmentResponse.data")
        .bytes(".custody.v1.ExportClipResponse.data")
        .compile_fds(fds)?;
    Ok(())
}
