//! Shared libraries the sandboxed process needs later, loaded *before* the
//! sandbox closes in, and the Landlock rules derived from the files the
//! dynamic loader really resolved (the Firecracker jailer's rule: open
//! first, then lock).
//!
//! Why: a library that is opened after Landlock is applied is found by the
//! loader's search (`LD_LIBRARY_PATH`, `DT_RUNPATH`, `/etc/ld.so.cache`,
//! the default directories) and then refused with `EACCES` unless a rule
//! happens to cover the directory it lives in. Fixed directory lists miss
//! real layouts (the NVIDIA driver in `/usr/local/nvidia/lib64`, NVIDIA's
//! `.run` installer, `/usr/lib64`, CUDA forward-compatibility libraries in
//! `LD_LIBRARY_PATH`). So [`preload_libraries`] `dlopen`s each library by
//! the name its users ask for, through the normal loader search, keeps the
//! handle for the life of the process (`RTLD_NODELETE`, never `dlclose`d),
//! and then lists every object the loader mapped for it, including what
//! those libraries loaded in turn (`dl_iterate_phdr` before and after). A
//! later `dlopen` of the same soname (cudarc, NVML's wrapper) is answered
//! from the loaded objects without touching the file system, and
//! [`Preloaded::landlock_read_only`] gives read rules on exactly the
//! resolved files, never on a directory, so a library elsewhere stays
//! refused.
//!
//! The rules grant `ReadFile` only, never `Execute`: Landlock checks
//! `Execute` for `execve` (files opened with `FMODE_EXEC`), not for
//! `mmap(PROT_EXEC)` of a file opened for reading, which is how `dlopen`
//! maps code (measured: a library under a read-only rule loads under the
//! enforced ruleset). `execve` itself kills the process (seccomp).
//!
//! The environment: glibc reads `LD_LIBRARY_PATH` once, when the process
//! starts, so the loader honours the value the daemon was started with even
//! after `clean_process` removed the variable; nothing needs to be kept for
//! the loader.
//!
//! Owns: the `dlopen` calls, the list of loaded objects and the read rules
//! for them. Must never: `dlclose` a preloaded library, call into a library
//! (its constructors run, nothing else), or grant a directory.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::driver::{CUDA_DRIVER_LIBRARY, DriverMissing};

/// One library to load before the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibraryRequest {
    /// A soname (`libcuda.so.1`), searched for as `dlopen` searches, or an
    /// absolute path.
    pub name: String,
    /// Whether [`preload_libraries`] fails when it does not load.
    pub required: bool,
}

impl LibraryRequest {
    /// A library that must load.
    pub fn required(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            required: true,
        }
    }

    /// A library that is used when present.
    pub fn optional(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            required: false,
        }
    }
}

/// What became of one [`LibraryRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestedLibrary {
    /// The name asked for.
    pub name: String,
    /// Whether it was required.
    pub required: bool,
    /// The file the loader resolved it to (canonical), when it loaded.
    pub path: Option<PathBuf>,
    /// The loader's reason (`dlerror`), when it did not.
    pub error: Option<String>,
}

/// One file the loader mapped for the requested libraries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct LoadedFile {
    /// The canonical path (symbolic links resolved): what the Landlock rule
    /// names, and what the kernel checks.
    pub path: PathBuf,
    /// The path as the loader opened it (`dl_iterate_phdr`'s name), e.g. a
    /// soname link in a search directory.
    pub loaded_as: PathBuf,
}

/// Libraries loaded before the sandbox, with what the loader resolved. The
/// handles are deliberately leaked: the libraries stay loaded for the life
/// of the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preloaded {
    /// Each request, in order.
    pub libraries: Vec<RequestedLibrary>,
    /// Every file mapped for them: the requested libraries and everything
    /// they loaded in turn that was not loaded before (sorted, no duplicates).
    pub files: Vec<LoadedFile>,
}

impl Preloaded {
    /// The read-only Landlock paths for [`crate::LandlockPolicy::read_only`]:
    /// each resolved file, never its directory.
    pub fn landlock_read_only(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    /// Whether the library asked for as `name` loaded.
    pub fn loaded(&self, name: &str) -> bool {
        self.libraries
            .iter()
            .any(|l| l.name == name && l.path.is_some())
    }

    /// One line per file for the startup log: `libcuda.so.1 ->
    /// /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05`, and one per optional
    /// library that is absent.
    pub fn log_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for lib in &self.libraries {
            match (&lib.path, &lib.error) {
                (Some(path), _) => out.push(format!("{} -> {}", lib.name, path.display())),
                (None, Some(err)) => out.push(format!(
                    "{} not loaded ({}){}",
                    lib.name,
                    err,
                    if lib.required { "" } else { ": optional" }
                )),
                (None, None) => {}
            }
        }
        let requested: BTreeSet<&Path> = self
            .libraries
            .iter()
            .filter_map(|l| l.path.as_deref())
            .collect();
        for file in &self.files {
            if !requested.contains(file.path.as_path()) {
                out.push(format!("  loaded in turn: {}", file.path.display()));
            }
        }
        out
    }
}

/// A required library did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the shared library {library} cannot be loaded ({reason}); install it where the dynamic \
     loader finds it (ld.so.conf.d and ldconfig, or LD_LIBRARY_PATH in the service's environment)"
)]
pub struct LibraryMissing {
    /// The name asked for.
    pub library: String,
    /// The loader's reason (`dlerror`).
    pub reason: String,
    /// What loaded before the failure (kept loaded: the handles are never
    /// closed).
    pub partial: Preloaded,
}

/// Loads each request with `dlopen(name, RTLD_NOW | RTLD_NODELETE)` in
/// order and returns what the loader resolved (module doc). A required
/// library that does not load is an error; optional ones are reported in
/// [`Preloaded::libraries`]. Runs the libraries' constructors (and so must
/// run before any sandbox step that would refuse what they do) but calls
/// nothing in them.
pub fn preload_libraries(requests: &[LibraryRequest]) -> Result<Preloaded, LibraryMissing> {
    let before: BTreeSet<PathBuf> = loaded_objects().into_iter().collect();
    let mut libraries = Vec::new();
    let mut failure = None;
    for req in requests {
        match open(&req.name) {
            Ok(path) => libraries.push(RequestedLibrary {
                name: req.name.clone(),
                required: req.required,
                path: Some(canonical(&path)),
                error: None,
            }),
            Err(reason) => {
                libraries.push(RequestedLibrary {
                    name: req.name.clone(),
                    required: req.required,
                    path: None,
                    error: Some(reason.clone()),
                });
                if req.required && failure.is_none() {
                    failure = Some((req.name.clone(), reason));
                }
            }
        }
    }

    // Everything the loader mapped since `before`: the requested libraries
    // and their dependencies. A requested library that was already loaded
    // (e.g. libm in a test) is still listed: it was asked for.
    let mut files: BTreeSet<LoadedFile> = loaded_objects()
        .into_iter()
        .filter(|p| !before.contains(p))
        .map(|loaded_as| LoadedFile {
            path: canonical(&loaded_as),
            loaded_as,
        })
        .collect();
    for lib in &libraries {
        if let Some(path) = &lib.path
            && !files.iter().any(|f| &f.path == path)
        {
            files.insert(LoadedFile {
                path: path.clone(),
                loaded_as: path.clone(),
            });
        }
    }
    let preloaded = Preloaded {
        libraries,
        files: files.into_iter().collect(),
    };
    match failure {
        None => Ok(preloaded),
        Some((library, reason)) => Err(LibraryMissing {
            library,
            reason,
            partial: preloaded,
        }),
    }
}

/// NVIDIA's `libnvidia-ml.so.1` (NVML: the GPU's name, memory and health).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";
/// The driver's PTX JIT compiler, which `libcuda` loads when it compiles PTX.
pub const PTX_JIT_LIBRARY: &str = "libnvidia-ptxjitcompiler.so.1";
/// NVRTC sonames tried in order (CUDA 13, 12, then the development link);
/// the first that loads is kept. NVRTC then loads its builtins library
/// (`libnvrtc-builtins.so.MAJOR.MINOR`) from its own directory when it
/// compiles, so [`preload_cuda_libraries`] loads those too.
pub const NVRTC_LIBRARIES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// The GPU's libraries: the CUDA driver and NVML (required), the PTX JIT
/// compiler and NVRTC with its builtins (when present). On success the
/// daemon adds [`Preloaded::landlock_read_only`] to its Landlock policy and
/// logs [`Preloaded::log_lines`].
pub fn preload_cuda_libraries() -> Result<Preloaded, DriverMissing> {
    let mut preloaded = preload_libraries(&[
        LibraryRequest::required(CUDA_DRIVER_LIBRARY),
        LibraryRequest::required(NVML_LIBRARY),
        LibraryRequest::optional(PTX_JIT_LIBRARY),
    ])
    .map_err(|e| DriverMissing {
        library: e.library,
        reason: e.reason,
    })?;
    // NVRTC: the first soname that loads; the misses before it are noise.
    let mut misses = Vec::new();
    for name in NVRTC_LIBRARIES {
        let attempt =
            preload_libraries(&[LibraryRequest::optional(*name)]).unwrap_or_else(|e| e.partial);
        if let Some(dir) = attempt.libraries[0].path.as_deref().and_then(Path::parent) {
            // Its builtins, from the directory NVRTC resolved to.
            let builtins: Vec<LibraryRequest> = nvrtc_builtins_in(dir)
                .iter()
                .map(|p| LibraryRequest::optional(p.to_string_lossy().into_owned()))
                .collect();
            preloaded = merge(preloaded, attempt);
            if !builtins.is_empty() {
                let more = preload_libraries(&builtins).unwrap_or_else(|e| e.partial);
                preloaded = merge(preloaded, more);
            }
            return Ok(preloaded);
        }
        misses.extend(attempt.libraries[0].error.clone());
    }
    preloaded.libraries.push(RequestedLibrary {
        name: NVRTC_LIBRARIES.join(" | "),
        required: false,
        path: None,
        error: misses.pop(),
    });
    Ok(preloaded)
}

fn merge(mut a: Preloaded, b: Preloaded) -> Preloaded {
    a.libraries.extend(b.libraries);
    let files: BTreeSet<LoadedFile> = a.files.into_iter().chain(b.files).collect();
    a.files = files.into_iter().collect();
    a
}

/// `libnvrtc-builtins.so.*` files in `dir` (NVRTC `dlopen`s the one of its
/// own version when it compiles).
fn nvrtc_builtins_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so."))
        })
        .collect();
    out.sort();
    out
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// `dlopen(name, RTLD_NOW | RTLD_NODELETE)`; the handle is leaked on
/// purpose. Returns the path the loader resolved (from the link map).
fn open(name: &str) -> Result<PathBuf, String> {
    let c = CString::new(name).map_err(|_| "the name holds a NUL byte".to_owned())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    // Loading runs the library's constructors; the libraries this crate is
    // asked for (the GPU driver's) only set up their own state there.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NODELETE) };
    if handle.is_null() {
        return Err(dl_error());
    }
    // Never dlclose'd: the library stays loaded for the life of the process.
    let mut map: *const LinkMapPrefix = std::ptr::null();
    // SAFETY: `handle` is a live handle from dlopen; RTLD_DI_LINKMAP writes
    // one `struct link_map *` into `map`, which outlives the call.
    let rc = unsafe {
        libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            (&raw mut map).cast::<libc::c_void>(),
        )
    };
    if rc != 0 || map.is_null() {
        return Err(dl_error());
    }
    // SAFETY: `map` points to the loader's link map of a library that is
    // never unloaded (RTLD_NODELETE), so it stays valid; only the public
    // prefix of `struct link_map` (<link.h>) is read.
    let name_ptr = unsafe { (*map).l_name };
    if name_ptr.is_null() {
        return Err("the loader reports no file name for it".to_owned());
    }
    // SAFETY: `l_name` is a NUL-terminated string owned by the loader for
    // the life of the (never unloaded) library.
    let bytes = unsafe { CStr::from_ptr(name_ptr) }.to_bytes();
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// The public prefix of glibc's `struct link_map` (`<link.h>`).
#[repr(C)]
struct LinkMapPrefix {
    l_addr: usize,
    l_name: *const libc::c_char,
}

fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments; it returns NULL or a pointer to a
    // NUL-terminated string valid until the next dl* call on this thread,
    // which is after the copy below.
    let err = unsafe { libc::dlerror() };
    if err.is_null() {
        "no reason given by the dynamic loader".to_owned()
    } else {
        // SAFETY: non-NULL, NUL-terminated, valid until the next dl* call.
        unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Files of every object loaded in this process now (`dl_iterate_phdr`):
/// absolute paths only, so the main program (empty name) and the vDSO
/// (`linux-vdso.so.1`, no file) are left out.
pub fn loaded_objects() -> Vec<PathBuf> {
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Vec<PathBuf>` passed below, alive and
        // not otherwise borrowed during dl_iterate_phdr; `info` is valid for
        // this call (dl_iterate_phdr(3)).
        let (out, info) = unsafe { (&mut *data.cast::<Vec<PathBuf>>(), &*info) };
        if !info.dlpi_name.is_null() {
            // SAFETY: a non-NULL dlpi_name is a NUL-terminated string valid
            // during the callback.
            let bytes = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
            if bytes.first() == Some(&b'/') {
                out.push(PathBuf::from(OsStr::from_bytes(bytes)));
            }
        }
        0
    }
    let mut out: Vec<PathBuf> = Vec::new();
    // SAFETY: the callback matches dl_iterate_phdr's signature and only
    // touches `out` through the pointer passed here, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(collect), (&raw mut out).cast::<libc::c_void>()) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_already_loaded_is_reported_with_its_canonical_file() {
        // libc is loaded in every test process: it resolves to a real file.
        let p = preload_libraries(&[LibraryRequest::required("libc.so.6")]).unwrap();
        let path = p.libraries[0].path.clone().unwrap();
        assert!(path.is_absolute() && path.is_file(), "{path:?}");
        assert_eq!(std::fs::canonicalize(&path).unwrap(), path);
        assert_eq!(p.landlock_read_only(), vec![path.clone()]);
        assert!(p.loaded("libc.so.6"));
        assert!(
            loaded_objects()
                .iter()
                .any(|o| std::fs::canonicalize(o).is_ok_and(|c| c == path))
        );
    }

    #[test]
    fn a_missing_required_library_is_an_error_with_the_loader_reason() {
        let err = preload_libraries(&[
            LibraryRequest::required("libc.so.6"),
            LibraryRequest::required("libmedgemma-absent.so.1"),
        ])
        .unwrap_err();
        assert_eq!(err.library, "libmedgemma-absent.so.1");
        assert!(err.reason.contains("libmedgemma-absent.so.1"), "{err}");
        assert!(err.to_string().contains("ld.so.conf.d"), "{err}");
        // What loaded before the failure is still reported.
        assert!(err.partial.loaded("libc.so.6"));
    }

    #[test]
    fn a_missing_optional_library_is_reported_not_fatal() {
        let p = preload_libraries(&[LibraryRequest::optional("libmedgemma-absent.so.1")]).unwrap();
        assert!(p.files.is_empty());
        assert!(p.libraries[0].error.is_some());
        assert!(p.log_lines()[0].contains("optional"), "{:?}", p.log_lines());
    }

    #[test]
    fn the_cuda_list_loads_or_names_the_missing_driver_library() {
        // CI has no GPU; the GPU machine has one. Either way the outcome
        // names a library from the list.
        match preload_cuda_libraries() {
            Ok(p) => {
                assert!(p.loaded(CUDA_DRIVER_LIBRARY) && p.loaded(NVML_LIBRARY));
                assert!(p.files.iter().all(|f| f.path.is_file()));
            }
            Err(e) => assert!(
                [CUDA_DRIVER_LIBRARY, NVML_LIBRARY].contains(&e.library.as_str()),
                "{e}"
            ),
        }
    }
}
