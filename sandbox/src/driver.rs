//! The GPU driver, seen from before the sandbox closes in: does the NVIDIA
//! driver library load at all, and the two environment variables the CUDA
//! driver reads at `cuInit`.
//!
//! Touching a CUDA device in Burn without a driver panics on a background
//! thread ("Unable to dynamically load the cuda shared library",
//! shared/spec/burn.md), which no caller can catch; so the daemon asks
//! [`probe_cuda_driver`] first and runs on the CPU when it says no.
//!
//! Owns: the `dlopen` of `libcuda.so.1` and setting environment variables
//! while single-threaded. Must never: initialise CUDA (`cuInit` starts
//! threads and opens device nodes; that belongs to the engine thread).

use std::ffi::{CStr, CString, OsStr};

use crate::SandboxError;
use crate::process::require_single_thread;

/// The driver library's soname (the CUDA driver API; cudarc opens the same one).
pub const CUDA_DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Why the CUDA driver library cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the NVIDIA driver library {library} cannot be loaded ({reason}); install the NVIDIA driver, or run on the CPU"
)]
pub struct DriverMissing {
    /// The library that was asked for.
    pub library: String,
    /// The dynamic loader's explanation (`dlerror`).
    pub reason: String,
}

/// Checks that the CUDA driver library loads (`dlopen(libcuda.so.1,
/// RTLD_NOW)`). The library stays loaded: cudarc's later `dlopen` of the same
/// soname then reuses it instead of reading files under Landlock. Its
/// constructors start no thread (`cuInit` does, and is not called here).
pub fn probe_cuda_driver() -> Result<(), DriverMissing> {
    probe_library(CUDA_DRIVER_LIBRARY)
}

/// [`probe_cuda_driver`] for any soname (tests use a library that is absent).
pub fn probe_library(soname: &str) -> Result<(), DriverMissing> {
    let missing = |reason: String| DriverMissing {
        library: soname.to_owned(),
        reason,
    };
    let name = CString::new(soname).map_err(|_| missing("the name holds a NUL byte".to_owned()))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // dlopen has no other preconditions. Loading runs the library's
    // constructors, which for the NVIDIA driver only set up its own state.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if !handle.is_null() {
        // Deliberately never dlclose'd (see above).
        return Ok(());
    }
    // SAFETY: dlerror takes no arguments; it returns NULL or a pointer to a
    // NUL-terminated string valid until the next dl* call on this thread,
    // which is after the copy below.
    let err = unsafe { libc::dlerror() };
    let reason = if err.is_null() {
        "no reason given by the dynamic loader".to_owned()
    } else {
        // SAFETY: non-NULL, NUL-terminated, valid until the next dl* call (see above).
        unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned()
    };
    Err(missing(reason))
}

/// Sets an environment variable for the CUDA driver (`CUDA_CACHE_PATH`,
/// `CUDA_DEVICE_ORDER`) before any thread exists: environment writes are not
/// thread safe (and `unsafe` in edition 2024), so this refuses with
/// [`SandboxError::NotSingleThreaded`] once another thread runs.
pub fn set_env_single_threaded(name: &str, value: impl AsRef<OsStr>) -> Result<(), SandboxError> {
    require_single_thread("set_env_single_threaded")?;
    // SAFETY: require_single_thread() saw one thread and nothing here starts
    // one, so no other thread reads or writes the environment concurrently.
    unsafe { std::env::set_var(name, value) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_library_is_reported_with_the_loader_reason() {
        let err = probe_library("libmedgemma-no-such-driver.so.1").unwrap_err();
        assert_eq!(err.library, "libmedgemma-no-such-driver.so.1");
        assert!(
            err.reason.contains("libmedgemma-no-such-driver.so.1"),
            "{}",
            err.reason
        );
        assert!(err.to_string().contains("install the NVIDIA driver"));
    }

    #[test]
    fn a_present_library_loads() {
        // glibc's math library is on every machine that runs these tests.
        probe_library("libm.so.6").unwrap();
    }

    #[test]
    fn this_machine_has_a_driver_or_says_why_not() {
        // No assertion on the outcome (CI has no GPU, the GPU machine has
        // one); the error must name the library.
        if let Err(e) = probe_cuda_driver() {
            assert_eq!(e.library, CUDA_DRIVER_LIBRARY);
        }
    }
}
