//! Compiles `identity/v1/*.proto` with protox (pure Rust, so `protoc` is not a prerequisite) and
//! generates tonic servers and clients, plus the encoded descriptor set that server reflection
//! serves.

use std::{env, fs, path::PathBuf};

const PROTO_FILES: &[&str] = &[
    "identity/v1/user.proto",
    "identity/v1/registration_service.proto",
    "identity/v1/session_service.proto",
    "identity/v1/key_service.proto",
    "identity/v1/user_service.proto",
    "identity/v1/password_reset_service.proto",
];

/// Messages whose generated `Debug` would print a secret.
const SECRET_BEARING: &[&str] = &[
    ".identity.v1.RegisterRequest",
    ".identity.v1.VerifyEmailRequest",
    ".identity.v1.VerifyEmailRequest.proof",
    ".identity.v1.EmailCode",
    ".identity.v1.LoginRequest",
    ".identity.v1.LoginResponse",
    ".identity.v1.RefreshSessionRequest",
    ".identity.v1.RefreshSessionResponse",
    ".identity.v1.RevokeSessionRequest",
    ".identity.v1.ResetPasswordRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("identity").display()
    );

    let mut compiler = protox::Compiler::new([&proto_root])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTO_FILES)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("identity_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        // Messages that carry a password, token or code get a hand-written, redacting Debug.
        .skip_debug(SECRET_BEARING)
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
