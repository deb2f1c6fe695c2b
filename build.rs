//! Lays out the release binary's code: the functions a running cluster
//! executes (listed in `layout/hot-code.txt` by `bench/code-layout.sh`;
//! `layout/hot-code-static.txt` for a statically linked build) are
//! placed together at the start of it.
//!
//! Why it matters: the kernel maps a program's code into a process in 64 KiB
//! windows around each page it runs (fault-around), and the five processes of
//! a cluster each run about 2 MiB of functions that the linker would
//! otherwise scatter over the whole 13 MB of code: some 8 MiB resident in
//! each. Packed, each process holds little more than what it runs.
//!
//! Only for the release profiles (`release` and those that inherit it) on
//! x86_64 Linux, where rustc links with its own LLD, which reads the list
//! (`--symbol-ordering-file`). A name the binary no longer has is skipped, so
//! a stale list costs memory, never a build. `KVLAB_CODE_LAYOUT=0` turns it
//! off, to measure what it buys.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=layout/hot-code.txt");
    println!("cargo:rerun-if-changed=layout/hot-code-static.txt");
    println!("cargo:rerun-if-env-changed=KVLAB_CODE_LAYOUT");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let lld_target = env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu");
    let wanted = env::var("KVLAB_CODE_LAYOUT").as_deref() != Ok("0");
    // A static build (`-C target-feature=+crt-static`) has other symbol
    // names (the flags are part of each crate's hash) and libc's functions
    // among its own, so it has a list of its own.
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let file = if features.split(',').any(|f| f == "crt-static") {
        "layout/hot-code-static.txt"
    } else {
        "layout/hot-code.txt"
    };
    let list = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).join(file);
    if release && lld_target && wanted && list.exists() {
        println!(
            "cargo:rustc-link-arg-bin=kvlab=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        println!("cargo:rustc-link-arg-bin=kvlab=-Wl,--no-warn-symbol-ordering");
    }
}
