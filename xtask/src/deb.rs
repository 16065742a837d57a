//! `cargo xtask deb`: the Debian package, `target/debian/gateway_<version>_amd64.deb`,
//! made with cargo-deb from the release build (`[package.metadata.deb]` in
//! gateway/Cargo.toml says what goes in it).

/// Packs the release binary built by [`crate::build::gateway`].
pub fn run() -> anyhow::Result<()> {
    let dir = tests::util::workspace_root().join("target/debian");
    let deb = tests::debian::build_deb(&dir, false)?;
    println!("{}", deb.display());
    Ok(())
}
