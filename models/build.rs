//! With the `cuda` feature: compiles the custom ops' CUDA kernels (src/ops/kernels/*.cu) to
//! PTX with nvcc, into OUT_DIR, where ops/cuda.rs embeds them. Compiling here, not at run
//! time, makes a kernel's compile error a build error on any machine with nvcc (no GPU
//! needed: scripts/fetch-cuda.sh installs one). Without the feature this does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// PTX for compute capability 9.0 (Hopper): the driver JIT-compiles it for newer GPUs too.
/// PTX from nvcc 13.0 needs a driver that runs CUDA 13.0 (580 or newer).
const PTX_ARCH: &str = "compute_90";

const KERNEL_DIR: &str = "src/ops/kernels";

fn main() -> Result<(), String> {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    println!("cargo::rerun-if-changed={KERNEL_DIR}");
    for var in ["NVCC", "CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let nvcc = nvcc();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(KERNEL_DIR)
        .map_err(|e| format!("{KERNEL_DIR}: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    for source in &sources {
        println!("cargo::rerun-if-changed={}", source.display());
        compile(&nvcc, source, &out_dir)?;
    }
    Ok(())
}

/// nvcc from $NVCC, else a toolkit root's bin/, else PATH.
fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return PathBuf::from(path);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let candidate = Path::new(&root).join("bin").join("nvcc");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn compile(nvcc: &Path, source: &Path, out_dir: &Path) -> Result<(), String> {
    let stem = source
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: not a UTF-8 file name", source.display()))?;
    let ptx = out_dir.join(format!("{stem}.ptx"));
    let output = Command::new(nvcc)
        .args(["--ptx", "-std=c++17", "-O3", "--expt-relaxed-constexpr"])
        .arg(format!("-arch={PTX_ARCH}"))
        .arg("-I")
        .arg(KERNEL_DIR)
        .arg(source)
        .arg("-o")
        .arg(&ptx)
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); the `cuda` feature needs nvcc: run scripts/fetch-cuda.sh \
                 and `eval \"$(scripts/fetch-cuda.sh --env)\"`, or set NVCC / CUDA_ROOT",
                nvcc.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed on {}:\n{}{}",
            source.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
