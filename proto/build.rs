//! Compiles `identity/v1/*.proto` and `identity/events/v1/*.proto` with protox (pure Rust, so `protoc` is not a prerequisite) and
//! generates tonic servers and clients, plus the encoded descriptor set that server reflection
//! serves, and a redacting `Debug` for every message that carries text or bytes
//! (`build/debug_impls.rs`).

use std::{env, fs, path::PathBuf};

#[path = "build/debug_impls.rs"]
mod debug_impls;

/// The packages whose messages get the redacting `Debug`.
const PACKAGES: &[&str] = &["identity.v1", "identity.events.v1"];

const PROTO_FILES: &[&str] = &[
    "identity/v1/user.proto",
    "identity/v1/registration_service.proto",
    "identity/v1/session_service.proto",
    "identity/v1/key_service.proto",
    "identity/v1/user_service.proto",
    "identity/v1/password_reset_service.proto",
    "identity/v1/challenge_service.proto",
    "identity/events/v1/events.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("identity").display()
    );
    println!("cargo:rerun-if-changed=build/debug_impls.rs");

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTO_FILES)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("identity_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let descriptors = compiler.file_descriptor_set();
    let mut redacted_messages = Vec::new();
    for package in PACKAGES {
        let (debug_impls, redacted) = debug_impls::generate(&descriptors.file, package)?;
        fs::write(out_dir.join(format!("{package}.debug.rs")), debug_impls)?;
        redacted_messages.extend(redacted);
    }

    tonic_prost_build::configure()
        // Messages with text or bytes fields get the generated, redacting Debug instead.
        .skip_debug(redacted_messages)
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
