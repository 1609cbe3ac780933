//! Rebuilds the crate when a migration is added or edited: `embed_migrations!` (db/mod.rs)
//! compiles `migrations/` into the binary, and cargo does not otherwise notice a new folder.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
