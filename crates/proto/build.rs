//! Compiles `proto/` with a vendored protoc, so a machine with only Rust builds the project.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let protos = [
        "tollgate/keys/v1/common.proto",
        "tollgate/keys/v1/account.proto",
        "tollgate/keys/v1/application.proto",
        "tollgate/keys/v1/group.proto",
        "tollgate/keys/v1/model.proto",
        "tollgate/keys/v1/key.proto",
        "tollgate/keys/v1/audit.proto",
        "tollgate/keys/v1/key_state.proto",
        "tollgate/authz/v1/authz.proto",
        "tollgate/metering/v1/metering.proto",
        "tollgate/bench/v1/bench.proto",
    ];

    // tonic-prost-build prints no rerun lines of its own; without these, every build would
    // recompile everything downstream.
    println!("cargo:rerun-if-changed=build.rs");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto_root.join(proto).display());
    }

    let mut prost_config = prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let descriptor_path = PathBuf::from(std::env::var("OUT_DIR")?).join("tollgate_descriptor.bin");
    // Requests that do not decode are INVALID_ARGUMENT, not tonic's INTERNAL (see codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(prost_config, &protos.map(|p| proto_root.join(p)), std::slice::from_ref(&proto_root))?;
    envoy_descriptors(&manifest_dir)?;
    Ok(())
}

/// The descriptors of Envoy's `Authorization` service and its imports, for reflection (the
/// types and server come from `envoy-types`).
fn envoy_descriptors(manifest_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let third_party = manifest_dir.join("third_party");
    println!("cargo:rerun-if-changed={}", third_party.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptor.bin");
    let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("-I{}", third_party.display()))
        .arg(format!("-I{}", protoc_bin_vendored::include_path()?.display()))
        .arg("envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err("protoc could not build the Envoy descriptors".into());
    }
    Ok(())
}
