//! With the `cuda` feature, compiles `kernels/fused.cu` to PTX for the fused engine
//! (`src/fused.rs`). The PTX is embedded in the binary and loaded by the driver at run time.
//! Needs `nvcc` (`$NVCC`, `$CUDA_HOME/bin/nvcc` or on `PATH`) and `CUDA_COMPUTE_CAP` (e.g. 90
//! for H100/H200), the same settings candle's own kernels are built with
//! (`scripts/build-cuda.sh`). Without the feature nothing is compiled.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels/fused.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CUDA_HOME")
                .map(|home| PathBuf::from(home).join("bin").join("nvcc"))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") else {
        panic!("the cuda feature needs CUDA_COMPUTE_CAP (e.g. 90); see scripts/build-cuda.sh");
    };
    let cap = cap.trim().replace('.', "");
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        panic!("cargo did not set OUT_DIR");
    };
    let ptx = out_dir.join("fused.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("kernels/fused.cu")
        .arg("-o")
        .arg(&ptx)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{} failed on kernels/fused.cu: {s}", nvcc.display()),
        Err(e) => panic!("cannot run {}: {e}", nvcc.display()),
    }
}
