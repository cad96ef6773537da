//! Embeds libtorch's directory as an rpath so that `dfp` runs without LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Where the `cuda` feature looks for libtorch_cuda.so when the rpath does not find it.
        println!("cargo:rustc-env=DFP_LIBTORCH_LIB={dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
