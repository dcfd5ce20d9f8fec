//! Compiles proto/baton/v1 (API, with tonic services) and proto/baton/journal/v1
//! (persisted records, messages only) and writes a descriptor set for gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        root.join("baton/v1/sessions.proto"),
        root.join("baton/v1/gates.proto"),
        root.join("baton/v1/inspect.proto"),
        root.join("baton/v1/admin.proto"),
        root.join("baton/v1/flows.proto"),
        root.join("baton/journal/v1/journal.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("baton_descriptor.bin"))
        .compile_protos(&files, &[root])?;
    Ok(())
}
