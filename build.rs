//! Compiles bpf/flowtel.bpf.c and generates its skeleton into OUT_DIR.
//!
//! CO-RE needs a vmlinux.h only for type names: offsets are relocated against the running
//! kernel's BTF at load time. x86_64 and aarch64 use the vendored bpf/vmlinux/<arch>/vmlinux.h;
//! other architectures get one generated from the build host's BTF with bpftool.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use libbpf_cargo::SkeletonBuilder;

const SOURCE: &str = "bpf/flowtel.bpf.c";
const HEADERS: &[&str] = &["bpf/flowtel.h"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");

    let vmlinux_dir = vmlinux_include_dir(&manifest_dir, &out_dir, &arch);
    let target_arch_define = match arch.as_str() {
        "x86_64" => "x86",
        "aarch64" => "arm64",
        other => other,
    };

    SkeletonBuilder::new()
        .source(manifest_dir.join(SOURCE))
        .clang_args([
            format!("-I{}", vmlinux_dir.display()),
            format!("-I{}", manifest_dir.join("bpf").display()),
            format!("-D__TARGET_ARCH_{target_arch_define}"),
            // v3: 32-bit atomic adds for the histogram buckets
            "-mcpu=v3".to_string(),
            "-Wall".to_string(),
        ])
        .build_and_generate(out_dir.join("flowtel.skel.rs"))
        .unwrap_or_else(|e| panic!("building {SOURCE} failed (clang, libelf-dev and zlib1g-dev installed?): {e:#}"));

    println!("cargo:rerun-if-changed={SOURCE}");
    for header in HEADERS {
        println!("cargo:rerun-if-changed={header}");
    }
    println!("cargo:rerun-if-changed={}", vmlinux_dir.join("vmlinux.h").display());
}

fn vmlinux_include_dir(manifest_dir: &Path, out_dir: &Path, arch: &str) -> PathBuf {
    let vendored = manifest_dir.join("bpf/vmlinux").join(arch);
    if vendored.join("vmlinux.h").exists() {
        return vendored;
    }
    let generated = out_dir.join("vmlinux");
    std::fs::create_dir_all(&generated).expect("create OUT_DIR/vmlinux");
    let output = Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"])
        .output()
        .unwrap_or_else(|e| panic!("no vendored vmlinux.h for {arch} and bpftool could not run ({e}): install bpftool on a {arch} build host"));
    assert!(
        output.status.success(),
        "bpftool btf dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(generated.join("vmlinux.h"), output.stdout).expect("write generated vmlinux.h");
    println!("cargo:warning=no vendored vmlinux.h for {arch}: generated one from this host's /sys/kernel/btf/vmlinux");
    generated
}
