//! Where tensors live: the one place that names Burn backends.
//!
//! The CPU path is Burn's pure-Rust `flex` backend in f32 (bf16 is emulated
//! and slow there; spec burn.md). The `cuda` feature adds burn-cuda, which
//! computes in bf16 (norms, softmax and RoPE angles stay f32 in the model
//! code). Whether a GPU is usable, and which, is decided by the caller
//! (the daemon's `gpu` module) before `cuda_device` is ever called:
//! touching a CUDA device without a driver panics on a background thread.
//!
//! Kernels on CUDA are compiled at run time by cubecl's LLVM/PTX path, which
//! links NVIDIA's libdevice (`libdevice.10.bc`) into every kernel that calls
//! exp, tanh, erf, sin or cos. The package ships that one file (NVIDIA's CUDA
//! EULA lists it as redistributable, `packaging/debian/copyright`) under
//! [`cuda_support_dir`]; the daemon points `CUDA_PATH` there before the
//! sandbox and asks [`cuda_kernel_support`] whether kernels will compile.
//! No CUDA toolkit is needed at run time.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device};

/// The CPU device (Burn `flex`).
pub fn cpu_device() -> Device {
    Device::flex()
}

/// Compute dtype for a device: f32 on the CPU.
pub fn cpu_dtype() -> DType {
    DType::F32
}

/// Whether this build has the CUDA backend (the `cuda` feature).
pub const CUDA_BUILD: bool = cfg!(feature = "cuda");

/// Compute dtype on CUDA: bf16 (the checkpoint's own dtype; fp16 overflows
/// on Gemma 3, spec model.md §2.9).
pub fn cuda_dtype() -> DType {
    DType::BF16
}

/// The CUDA device with this ordinal. Only call it once the driver is known
/// to load (`medgemma_sandbox::probe_cuda_driver`). Ordinals follow
/// `CUDA_DEVICE_ORDER`; the daemon sets `PCI_BUS_ID` so that they match
/// `nvidia-smi` and NVML.
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> Device {
    Device::cuda(ordinal)
}

/// Points cubecl's cache root at `dir` instead of the default search from
/// the working directory, which under the sandbox is not writable, and turns
/// on its compilation cache: compiled kernels (PTX, keyed by kernel, build of
/// this binary, GPU architecture and PTX version) and autotune results go to
/// one database file, [`cubecl_cache_file`], so a restart of the same binary
/// loads its kernels instead of compiling them again. Must run before the
/// first CUDA tensor; returns `false` when cubecl's configuration was already
/// fixed (then nothing changed). CubeCL's CPU runtime keeps its compiled
/// kernels in memory only; the file serves CUDA.
#[cfg(feature = "cuda")]
pub fn set_cubecl_cache_dir(dir: &std::path::Path) -> bool {
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut config = CubeClRuntimeConfig::default();
    config.environment.path = CacheConfig::Directory(dir.to_path_buf());
    config.compilation.cache = true;
    CubeClRuntimeConfig::try_set(config)
}

/// The database file cubecl's caches use in this process (under the root
/// [`set_cubecl_cache_dir`] set), for logs and checks.
#[cfg(feature = "cuda")]
pub fn cubecl_cache_file() -> PathBuf {
    cubecl::environment::path()
}

/// Whether this build's own CubeCL kernels run on CubeCL devices
/// (`src/kernels/`): false without the `cuda` feature, or with
/// `MEDGEMMA_PLAIN_BURN=1` (then the plain Burn ops run, for comparison).
pub fn own_kernels() -> bool {
    #[cfg(feature = "kernels")]
    return crate::kernels::enabled();
    #[cfg(not(feature = "kernels"))]
    false
}

/// The environment variable cubecl's PTX compiler reads to find
/// `nvvm/libdevice/libdevice.10.bc` (it falls back to guessing
/// `/usr/local/cuda` and friends when unset, which the daemon never relies on).
pub const CUDA_PATH_VAR: &str = "CUDA_PATH";

/// Where libdevice lies inside [`cuda_support_dir`] (the toolkit's own layout,
/// which is what cubecl searches under `CUDA_PATH`).
pub const LIBDEVICE_REL: &str = "nvvm/libdevice/libdevice.10.bc";

/// The folder the package installs the CUDA kernel support into, found from
/// the running executable: `<bin>/../lib/medgemma/cuda`, i.e.
/// `/usr/lib/medgemma/cuda` for `/usr/bin/medgemmad`, and the same relative
/// place in a folder of prepared binaries (`scripts/gpu-check.sh`). `None`
/// when the executable's path cannot be read.
pub fn cuda_support_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("lib/medgemma/cuda"))
}

/// [`cuda_kernel_support`] for the folder this installation ships
/// ([`cuda_support_dir`]); `Ok` is the libdevice file, which the daemon adds
/// to its Landlock read rules. What `medgemmad` (before the sandbox),
/// `medgemmactl doctor` and `setup` ask, so all three give the same sentence.
pub fn shipped_cuda_kernel_support() -> Result<PathBuf, String> {
    let dir = cuda_support_dir().ok_or_else(|| {
        "the path of this executable cannot be read, so the CUDA kernel support folder beside it (../lib/medgemma/cuda) cannot be found: run the installed binary".to_string()
    })?;
    cuda_kernel_support(&dir).map(|()| dir.join(LIBDEVICE_REL))
}

/// Whether CUDA kernels that need libdevice can be compiled with `dir` as
/// the kernel support folder; `Err` is one sentence saying what is missing.
///
/// Checks that `dir/nvvm/libdevice/libdevice.10.bc` is a readable LLVM
/// bitcode file. In a build with the `cuda` feature, when `CUDA_PATH` names
/// `dir` (the daemon sets it, single-threaded, before calling this), it also
/// compiles a probe kernel that calls `exp` to PTX for sm_90 on the CPU (no
/// GPU involved): that proves LLVM links this libdevice, and leaves the file's
/// bytes in the compiler's per-process cache, so kernels compiled later inside
/// the sandbox do not open it again. Call it before the sandbox.
pub fn cuda_kernel_support(dir: &Path) -> Result<(), String> {
    let file = dir.join(LIBDEVICE_REL);
    let bytes = std::fs::read(&file).map_err(|e| {
        format!(
            "NVIDIA's libdevice ({}) cannot be read ({e}): reinstall the medgemma package, which ships it, or run on the CPU",
            file.display()
        )
    })?;
    // Raw bitcode starts with "BC" 0xC0DE; a bitcode wrapper with 0x0B17C0DE.
    let raw = bytes.starts_with(&[0x42, 0x43, 0xC0, 0xDE]);
    let wrapped = bytes.starts_with(&[0xDE, 0xC0, 0x17, 0x0B]);
    if !raw && !wrapped {
        return Err(format!(
            "{} is not LLVM bitcode (libdevice.10.bc from NVIDIA's CUDA toolkit): reinstall the medgemma package",
            file.display()
        ));
    }
    #[cfg(feature = "cuda")]
    if std::env::var_os(CUDA_PATH_VAR).is_some_and(|v| Path::new(&v) == dir) {
        crate::kernels::ptx::libdevice_probe().map_err(|e| {
            format!(
                "{} did not link into a CUDA kernel ({e}): reinstall the medgemma package, or run on the CPU",
                file.display()
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_libdevice_is_one_sentence() {
        let dir = tempfile::tempdir().unwrap();
        let err = cuda_kernel_support(dir.path()).unwrap_err();
        assert!(err.contains("libdevice.10.bc"), "{err}");
        assert!(err.contains("reinstall the medgemma package"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_file_that_is_not_bitcode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(LIBDEVICE_REL);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"not bitcode at all").unwrap();
        let err = cuda_kernel_support(dir.path()).unwrap_err();
        assert!(err.contains("is not LLVM bitcode"), "{err}");
    }

    /// Both halves of the test below: `MEDGEMMA_CACHE_PROBE` = `write` or
    /// `read`, in a fresh process (cubecl's configuration is set once per
    /// process), with the cache root in `MEDGEMMA_CACHE_PROBE_DIR`.
    #[cfg(feature = "cuda")]
    fn kernel_cache_probe(role: &str, dir: &Path) {
        use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        use cubecl_environment::persistence::{CacheOption, Namespace, Store, StoreOptions};
        assert!(
            set_cubecl_cache_dir(dir),
            "the configuration was not set yet"
        );
        assert!(CubeClRuntimeConfig::get().compilation.cache);
        assert!(
            cubecl_cache_file().starts_with(dir),
            "{:?}",
            cubecl_cache_file()
        );
        // The options cubecl-server's `compilation_store` opens the CUDA PTX
        // store with, in a namespace of our own.
        let mut store: Store<String, Vec<u8>> = Store::new(
            StoreOptions::new()
                .storage(Namespace::scoped("medgemma-test", "probe"))
                .cache(CacheOption::Lazy),
        );
        let key = "kernel".to_string();
        match role {
            "write" => store.insert(key, b"compiled once".to_vec()).unwrap(),
            "read" => {
                let got = store.remove(&key).expect("the first process's entry");
                assert_eq!(got, b"compiled once");
            }
            other => panic!("unknown role {other}"),
        }
    }

    #[test]
    #[cfg(feature = "cuda")]
    fn a_second_process_finds_what_the_first_cached_under_the_cache_dir() {
        if let (Some(role), Some(dir)) = (
            std::env::var_os("MEDGEMMA_CACHE_PROBE"),
            std::env::var_os("MEDGEMMA_CACHE_PROBE_DIR"),
        ) {
            return kernel_cache_probe(role.to_str().unwrap(), Path::new(&dir));
        }
        let dir = tempfile::tempdir().unwrap();
        let run = |role: &str| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "backend::tests::a_second_process_finds_what_the_first_cached_under_the_cache_dir",
                    "--nocapture",
                ])
                .env("MEDGEMMA_CACHE_PROBE", role)
                .env("MEDGEMMA_CACHE_PROBE_DIR", dir.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{role}: {text}");
            assert!(text.contains("1 passed"), "{role} ran the probe: {text}");
        };
        run("write");
        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.iter().any(|f| f.ends_with(".db")), "{files:?}");
        run("read");
    }

    #[test]
    fn the_support_folder_is_beside_the_executable() {
        // /usr/bin/medgemmad -> /usr/lib/medgemma/cuda; a test binary lives in
        // target/<profile>/deps, so its folder is target/<profile>/lib/...
        let exe = std::env::current_exe().unwrap();
        let dir = cuda_support_dir().unwrap();
        assert_eq!(
            dir.parent().unwrap(),
            exe.parent().unwrap().parent().unwrap().join("lib/medgemma")
        );
        assert!(dir.ends_with("lib/medgemma/cuda"));
    }
}
