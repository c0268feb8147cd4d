//! Links the unikernel with linker/appliance.ld (static, non-PIE, at 0x1000).
//! Host builds (the lib's unit tests) are left alone.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../linker/appliance.ld");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/../linker/appliance.ld");
        // x86_64-unknown-none links static-pie by default; Xen's PV loader
        // applies no relocations, so ask for a plain static executable.
        println!("cargo:rustc-link-arg-bins=--no-pie");
        println!("cargo:rustc-link-arg-bins=-znorelro");
        println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    }
}
