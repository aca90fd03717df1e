//! Read-only memory maps of model files: the model crate's only `unsafe`.
//!
//! Owns: mapping a weight file so tensors are read straight from the page
//! cache without a copy of the whole model in RAM. Must never: map a file
//! writable, or hand out anything but bounds-checked slices of the map.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::Mmap;

/// Maps `path` read-only.
pub(crate) fn map_readonly(path: &Path) -> io::Result<Mmap> {
    let file = File::open(path)?;
    // SAFETY: the file is opened read-only and this process never writes to
    // it while mapped. Another process truncating or rewriting a model file
    // under a running engine is outside what we defend against: `medgemmactl
    // setup` pins model files by SHA-256 and the daemon sees the model
    // directory read-only (Landlock); the map is read only through
    // bounds-checked slices.
    unsafe { Mmap::map(&file) }
}
