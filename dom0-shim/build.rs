// libxenctrl is Xen's stable-enough C interface for domain control; it comes
// from Debian's libxen-dev and is linked dynamically (dom0 has the library).
fn main() {
    println!("cargo:rustc-link-lib=dylib=xenctrl");
    println!("cargo:rerun-if-changed=build.rs");
}
