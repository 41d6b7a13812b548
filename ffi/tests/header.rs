//! include/mixed.h is what cbindgen makes of src/lib.rs: a stale header fails here.
//! `MIXED_BLESS=1 cargo test -p mixed-ffi --test header` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn the_header_is_current() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .unwrap();
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = format!("{dir}/include/mixed.h");
    if std::env::var_os("MIXED_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
    }
    let current = std::fs::read(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "ffi/include/mixed.h is stale: run MIXED_BLESS=1 cargo test -p mixed-ffi --test header"
    );
}
