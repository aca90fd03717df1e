//! CUDA kernels compiled to PTX on the CPU, with no GPU and no driver: the
//! check that NVIDIA's libdevice (shipped with the package, found through
//! `CUDA_PATH`) links into a kernel, for `backend::cuda_kernel_support`.
//!
//! The tests also compile the prefill attention kernel as a GPU launches
//! it (plane sums, which CubeCL's CPU runtime never compiles).
//!
//! Owns: the offline compilation (cubecl's LLVM/PTX compiler, the one the
//! CUDA runtime uses) of a probe kernel. Must never: touch a CUDA device.

use std::ffi::CStr;
use std::sync::Arc;

use cubecl::ir::features::Features;
use cubecl::ir::nvidia::SmArch;
use cubecl::ir::{DeviceIdentity, HardwareProperties, MemoryDeviceProperties};
use cubecl::prelude::*;
use cubecl::{Compiler, CubeKernel};
use cubecl_llvm::nvptx::ptx_version::PtxVersion;
use cubecl_llvm::{LlvmTarget, PlironArtifact, PlironCompiler, PlironOptions};

/// Hopper (H100/H200), the appliance's reference GPU.
const PROBE_ARCH: u32 = 90;
/// CUDA 13.0 (driver 580), the newest PTX LLVM 22 emits (shared spec burn.md).
const PROBE_DRIVER: i32 = 13000;

/// `exp` and `tanh`: both are libdevice calls on NVPTX (`__nv_expf`,
/// `__nv_tanhf`), the functions GELU and softmax need.
#[cube(launch)]
fn libdevice_probe_kernel(input: &[f32], output: &mut [f32]) {
    if ABSOLUTE_POS < input.len() {
        output[ABSOLUTE_POS] = input[ABSOLUTE_POS].exp() + input[ABSOLUTE_POS].tanh();
    }
}

/// Device properties of a plane-32 GPU, enough for compiling without one.
pub(crate) fn offline_properties() -> Arc<DeviceProperties> {
    let hardware = HardwareProperties {
        load_width: 128,
        vector_register_count: None,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 32,
        max_shared_memory_size: 48 * 1024,
        max_cube_count: (u32::MAX, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: None,
        num_tensor_cores: None,
        min_tensor_cores_dim: None,
        num_cpu_cores: None,
        last_level_cache_size: None,
        max_vector_size: VectorSize::MAX,
        cube_mma_reserved_shared_memory: 0,
    };
    Arc::new(DeviceProperties::new(
        Features::default(),
        MemoryDeviceProperties::new(u64::MAX, 256),
        hardware,
        cubecl::profile::TimingMethod::Device,
        DeviceIdentity {
            name: "offline".to_string(),
            fingerprint: "offline".to_string(),
            physical: None,
        },
    ))
}

/// What a kernel is compiled for without a device: [`offline_properties`]
/// and the default target.
#[cfg(test)]
pub(crate) fn offline() -> (Arc<DeviceProperties>, Arc<TargetProperties>) {
    (offline_properties(), Arc::new(TargetProperties::default()))
}

/// A kernel's tensor parameter as a launch compiles it: its own buffer.
#[cfg(test)]
pub(crate) fn tensor_arg() -> TensorCompilationArg {
    TensorCompilationArg {
        meta: TensorMetaCompilationArg { len: (), rank: () },
        buffer: BufferCompilationArg { inplace: None },
    }
}

/// A launch's settings for cubes of `dim`.
#[cfg(test)]
pub(crate) fn settings(dim: CubeDim) -> KernelSettings {
    KernelSettings::new(*dim, ExecutionMode::Checked, AddressType::U32)
}

/// bf16, the GPU's compute dtype.
#[cfg(test)]
pub(crate) fn bf16() -> Result<ElemType, String> {
    super::float_elem(burn::tensor::DType::BF16).ok_or_else(|| "no bf16 element".to_string())
}

/// Compiles `kernel` to PTX for sm_`arch` with cubecl's NVPTX compiler.
pub(crate) fn ptx_of(kernel: impl CubeKernel, arch: u32) -> Result<String, String> {
    let mut compiler = PlironCompiler {
        target: LlvmTarget::Nvptx,
    };
    let options = PlironOptions {
        sm_arch: Some(SmArch::new(arch, true)),
        ptx_version: PtxVersion::for_driver(PROBE_DRIVER),
        ..Default::default()
    };
    match compiler.compile(kernel.define(), &options) {
        Ok(PlironArtifact::NvptxCode(module)) => {
            // SAFETY: cubecl NUL-terminates the PTX it hands to the driver
            // (`NvptxModule::ptx`), and the module outlives the borrow.
            let ptx = unsafe { CStr::from_ptr(module.ptx.as_ptr()) };
            Ok(ptx.to_string_lossy().into_owned())
        }
        Ok(_) => Err("the NVPTX target produced no PTX".to_string()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// Compiles the probe kernel (exp, tanh) to PTX for sm_90 with libdevice
/// from `$CUDA_PATH`; returns the PTX. The library's bytes stay in cubecl's
/// per-process cache afterwards, keyed by that path.
pub(crate) fn libdevice_probe() -> Result<String, String> {
    let settings = KernelSettings::new(
        *CubeDim::new_1d(64),
        ExecutionMode::Checked,
        AddressType::U32,
    );
    let kernel = libdevice_probe_kernel::LibdeviceProbeKernel::new(
        settings,
        offline_properties(),
        Arc::new(TargetProperties::default()),
        BufferCompilationArg { inplace: None },
        BufferCompilationArg { inplace: None },
    );
    let ptx = ptx_of(kernel, PROBE_ARCH)?;
    // Linked libdevice leaves no external math function to resolve.
    if ptx.contains(".extern .func") {
        return Err("the PTX still calls an external function".to_string());
    }
    Ok(ptx)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;
    use crate::backend::{CUDA_PATH_VAR, LIBDEVICE_REL, cuda_kernel_support};

    /// The folder with the libdevice the package ships, staged by
    /// `scripts/setup-llvm-cuda.sh` (it prints `MEDGEMMA_CUDA_SUPPORT=...`).
    fn shipped_support_dir() -> PathBuf {
        let dir = std::env::var_os("MEDGEMMA_CUDA_SUPPORT")
            .map(PathBuf::from)
            .expect(
                "set MEDGEMMA_CUDA_SUPPORT to the folder scripts/setup-llvm-cuda.sh prepared \
             (it holds nvvm/libdevice/libdevice.10.bc from NVIDIA's nvidia-nvvm wheel)",
            );
        assert!(
            dir.join(LIBDEVICE_REL).is_file(),
            "no {LIBDEVICE_REL} under {}: run scripts/setup-llvm-cuda.sh",
            dir.display()
        );
        dir
    }

    /// Runs [`probe_in_child`] in a fresh process whose only `CUDA_PATH` is
    /// `cuda_path` (environment writes are not thread safe, so never here).
    fn probe_with(cuda_path: &std::path::Path) -> String {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kernels::ptx::tests::probe_in_child"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CUDA_PATH_VAR, cuda_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "child failed: {text}");
        text
    }

    /// A kernel's offline compilation for sm_N: its PTX.
    type Compile = fn(u32) -> Result<String, String>;

    #[test]
    #[ignore = "run by the libdevice tests in a child process with its own CUDA_PATH"]
    // Its stdout is the parent test's input.
    #[allow(clippy::print_stdout)]
    fn probe_in_child() {
        let dir = PathBuf::from(std::env::var_os(CUDA_PATH_VAR).unwrap());
        match libdevice_probe() {
            Ok(ptx) => println!(
                "PROBE OK {} bytes of PTX, sm_90: {}, ex2.approx (inlined __nv_expf): {}",
                ptx.len(),
                ptx.contains(".target sm_90"),
                ptx.contains("ex2.approx"),
            ),
            Err(e) => println!("PROBE ERR {e}"),
        }
        match cuda_kernel_support(&dir) {
            Ok(()) => println!("SUPPORT OK"),
            Err(e) => println!("SUPPORT ERR {e}"),
        }
        let kernels: [(&str, Compile); 12] = [
            ("argmax", super::super::argmax::ptx),
            ("geglu", super::super::geglu::ptx),
            ("rms_norm", super::super::norm::ptx),
            ("add_rms_norm", super::super::norm::add_ptx),
            ("skinny_matmul", super::super::skinny::ptx),
            ("skinny_many", super::super::skinny::many_ptx),
            ("skinny_geglu", super::super::skinny_geglu::ptx),
            ("skinny_tiled", super::super::skinny::tiled_ptx),
            ("qk_norm_rope", super::super::qk_rope::ptx),
            ("decode_attention", super::super::decode_attention::ptx),
            ("batch_attention", super::super::batch_attention::ptx),
            (
                "batch_attention_32",
                super::super::batch_attention::ptx_full,
            ),
        ];
        for (name, ptx) in kernels {
            match ptx(PROBE_ARCH) {
                Ok(ptx) => println!(
                    "KERNEL {name} OK {} bytes, sm_90: {}",
                    ptx.len(),
                    ptx.contains(".target sm_90")
                ),
                Err(e) => println!("KERNEL {name} ERR {e}"),
            }
        }
        for per_step in [1, crate::kernels::KEYS_PER_STEP] {
            match crate::kernels::prefill_attention::ptx(per_step, PROBE_ARCH) {
                Ok(ptx) => println!(
                    "PREFILL {per_step} OK {} bytes, sm_90: {}, shuffles: {}",
                    ptx.len(),
                    ptx.contains(".target sm_90"),
                    ptx.matches("shfl.sync").count(),
                ),
                Err(e) => println!("PREFILL {per_step} ERR {e}"),
            }
        }
    }

    #[test]
    fn an_empty_cuda_path_cannot_compile_exp_and_says_so() {
        let empty = tempfile::tempdir().unwrap();
        let out = probe_with(empty.path());
        assert!(out.contains("PROBE ERR"), "{out}");
        assert!(out.contains("libdevice.10.bc was not found"), "{out}");
        assert!(out.contains("SUPPORT ERR"), "{out}");
    }

    #[test]
    fn the_shipped_libdevice_links_exp_and_tanh_for_sm_90() {
        let out = probe_with(&shipped_support_dir());
        assert!(out.contains("PROBE OK"), "{out}");
        assert!(out.contains("sm_90: true"), "{out}");
        assert!(out.contains("inlined __nv_expf): true"), "{out}");
        assert!(out.contains("SUPPORT OK"), "{out}");
    }

    /// Every decode kernel, as a GPU launches it for the 4B in bf16 (plane
    /// sums where it takes them), compiles for sm_90: CubeCL's CPU runtime,
    /// where the kernel tests run, compiles none of them this way, and a
    /// kernel the card cannot compile would cost the one GPU call.
    #[test]
    fn every_decode_kernel_compiles_for_sm_90() {
        let out = probe_with(&shipped_support_dir());
        for name in [
            "argmax",
            "geglu",
            "rms_norm",
            "add_rms_norm",
            "skinny_matmul",
            "skinny_many",
            "skinny_geglu",
            "skinny_tiled",
            "qk_norm_rope",
            "decode_attention",
            "batch_attention",
            "batch_attention_32",
        ] {
            let want = format!("KERNEL {name} OK");
            let line = out.lines().find(|l| l.starts_with(&want));
            let line = line.unwrap_or_else(|| panic!("no {want:?} in {out}"));
            assert!(line.ends_with("sm_90: true"), "{line}");
        }
    }

    /// The prefill attention kernel, as the 4B's bf16 chunks launch it on a
    /// plane-32 GPU, compiles for sm_90 (the CPU runtime the kernel tests
    /// run on has one-unit planes and never compiles a plane sum), and
    /// folding `KEYS_PER_STEP` keys puts that many plane sums in one step:
    /// 5 shuffles per 32-lane sum, for each of the 2 query heads per KV head.
    #[test]
    fn the_prefill_kernel_compiles_for_sm_90_with_a_steps_plane_sums_together() {
        let out = probe_with(&shipped_support_dir());
        let per_step = crate::kernels::KEYS_PER_STEP;
        for (n, shuffles) in [(1, 5 * 2), (per_step, 5 * 2 * per_step)] {
            let want = format!("PREFILL {n} OK");
            let line = out.lines().find(|l| l.starts_with(&want));
            let line = line.unwrap_or_else(|| panic!("no {want:?} in {out}"));
            assert!(line.contains("sm_90: true"), "{line}");
            assert!(line.ends_with(&format!("shuffles: {shuffles}")), "{line}");
        }
    }
}
