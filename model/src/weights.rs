//! Weight sources: Hugging Face safetensors (single or sharded) and GGUF.
//!
//! Owns: finding each decoder tensor under its canonical name (the Hugging
//! Face text-model name without prefix, e.g. `layers.0.self_attn.q_proj.weight`),
//! checking its shape, and turning its bytes into host `TensorData` of the
//! compute dtype, one tensor at a time from a memory map (never a full copy of
//! the model in RAM). Vision and projector tensors are skipped; any other
//! unknown, missing or mis-shaped tensor is an error naming file and tensor.
//! For the CPU, [`WeightSource::cpu_matrix`] instead hands out a matrix in
//! its storage format (GGUF blocks, bf16), as a range of the memory map, or
//! quantized to Q8_0 once at load when [`CpuWeights::Q8_0`] asks.
//! Must never: open any path but the files of the model it is given.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensorError, SafeTensors};

use crate::cpu::{CpuError, CpuMatrix, WeightBytes};
use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};
use crate::quant;

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be opened or mapped.
    #[error("cannot read model file {path}: {source}; check that it exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The safetensors header is invalid.
    #[error(
        "model file {path} is not a valid safetensors file ({why}); copy it again from the original release"
    )]
    BadSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        why: String,
    },
    /// The shard index is invalid.
    #[error("shard index {path} is invalid ({why}); copy model.safetensors.index.json again")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A tensor's bytes lie beyond the end of the file.
    #[error(
        "model file {path} is truncated: tensor `{tensor}` lies beyond its end; the copy is incomplete, copy it again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// A required tensor is absent.
    #[error(
        "model {path} lacks tensor `{tensor}`; the checkpoint is incomplete or not a Gemma 3 model"
    )]
    Missing {
        /// The model path.
        path: PathBuf,
        /// Canonical tensor name.
        tensor: String,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error(
        "tensor `{tensor}` in {path} has shape {found:?} but the configuration needs {expected:?}; config.json and weights do not belong together"
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Shape on disk.
        found: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot use.
    #[error(
        "tensor `{tensor}` in {path} is stored as {dtype}, which is not supported (use bf16, f16 or f32)"
    )]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// Tensors that belong to no known part of the model.
    #[error(
        "model {path} holds unexpected tensors (first: `{first}`, {count} in all); it is not a Gemma 3 checkpoint this engine understands"
    )]
    Unexpected {
        /// The model path.
        path: PathBuf,
        /// First unexpected name.
        first: String,
        /// How many.
        count: usize,
    },
    /// The directory holds no weights.
    #[error(
        "no weights found in {path}: expected model.safetensors, model.safetensors.index.json or a .gguf file"
    )]
    NoWeights {
        /// The directory.
        path: PathBuf,
    },
    /// GGUF-level error.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A matrix the CPU kernels cannot hold.
    #[error(transparent)]
    Cpu(#[from] CpuError),
}

/// How weight matrices are kept when the model runs on the CPU (the
/// daemon's `engine.cpu_weights`). The GPU always computes in bf16 from
/// dense tensors and ignores this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuWeights {
    /// As the file stores them, read in place from its memory map: GGUF
    /// blocks stay quantized, bf16 stays bf16 (`engine.cpu_weights = "bf16"`
    /// for a safetensors checkpoint). The products equal f32 ones up to the
    /// order of the sums.
    #[default]
    AsStored,
    /// bf16, f16 and f32 matrices are quantized to Q8_0 once at load
    /// (`engine.cpu_weights = "q8_0"`): 8.5 bits per weight instead of 16,
    /// at the cost of rounding each weight to 8 bits. Measured on the real
    /// 270M written out as a bf16 checkpoint (`cargo run --release --example
    /// cpu_weights_fidelity`): last-position logits move by up to 0.35
    /// against the same checkpoint in f32, and greedy answers follow the
    /// f32 ones for 11 to 32 of 32 tokens (bf16 as stored: 3e-5, all 32),
    /// about what llama.cpp's 8-bit activations cost on that model. Matrices
    /// whose rows are not whole 32-value blocks, and already quantized GGUF
    /// tensors, stay as they are.
    Q8_0,
    /// Every matrix dequantized to an f32 tensor, as before the CPU kernels
    /// existed: the reference, at 2 to 8 times the memory.
    F32,
}

/// Where one safetensors tensor lives.
#[derive(Debug)]
pub struct StEntry {
    shard: usize,
    /// Name as stored on disk.
    disk_name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    /// Absolute byte range in the shard file.
    start: usize,
    end: usize,
}

#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    /// Shared with the CPU matrices that read their bytes in place.
    map: Arc<Mmap>,
}

/// A tensor found by [`WeightSource::locate`], shape and size checked.
enum Located<'a> {
    St {
        bytes: &'a [u8],
        dtype: StDtype,
        /// The shard's map and where `bytes` start in it.
        map: &'a Arc<Mmap>,
        start: usize,
    },
    Gguf {
        file: &'a GgufFile,
        info: &'a TensorInfo,
    },
}

/// A set of weights that yields decoder tensors by canonical name.
#[derive(Debug)]
pub enum WeightSource {
    /// One or more safetensors shards.
    Safetensors {
        /// The model directory (for messages).
        root: PathBuf,
        /// Memory-mapped shard files.
        shards: Vec<Shard>,
        /// Canonical name → location.
        entries: HashMap<String, StEntry>,
        /// Canonical names handed out so far.
        taken: BTreeSet<String>,
        /// How [`WeightSource::cpu_matrix`] keeps matrices.
        cpu: CpuWeights,
    },
    /// A GGUF file (dequantized on load, or kept quantized for the CPU).
    Gguf {
        /// The file.
        path: PathBuf,
        /// The parsed file.
        file: Box<GgufFile>,
        /// Canonical names handed out so far.
        taken: BTreeSet<String>,
        /// How [`WeightSource::cpu_matrix`] keeps matrices.
        cpu: CpuWeights,
    },
}

/// Prefixes under which checkpoints store the text decoder (spec §3.2).
const TEXT_PREFIXES: [&str; 3] = ["language_model.model.", "model.language_model.", "model."];
/// Prefixes of tensors that belong to the vision path (skipped for now).
const VISION_PREFIXES: [&str; 4] = [
    "vision_tower.",
    "multi_modal_projector.",
    "model.vision_tower.",
    "model.multi_modal_projector.",
];

fn map_file(path: &Path) -> Result<Mmap, WeightsError> {
    crate::mmap::map_readonly(path).map_err(|source| WeightsError::Io {
        path: path.to_owned(),
        source,
    })
}

impl WeightSource {
    /// Opens safetensors weights in `dir`: `model.safetensors.index.json`
    /// (sharded) or `model.safetensors`.
    pub fn open_safetensors_dir(dir: &Path) -> Result<Self, WeightsError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| WeightsError::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| WeightsError::BadIndex {
                    path: index.clone(),
                    why: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| WeightsError::BadIndex {
                    path: index.clone(),
                    why: "it has no `weight_map` object".into(),
                })?;
            let mut names = BTreeSet::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| WeightsError::BadIndex {
                    path: index.clone(),
                    why: format!("the shard of `{tensor}` is not a file name"),
                })?;
                // Shards must sit beside the index: no path components.
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(WeightsError::BadIndex {
                        path: index.clone(),
                        why: format!("shard name `{file}` is not a plain file name"),
                    });
                }
                names.insert(file.to_owned());
            }
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(WeightsError::NoWeights {
                path: dir.to_owned(),
            });
        };
        Self::open_safetensors_files(dir, &files)
    }

    /// Opens the given safetensors files as one model.
    pub fn open_safetensors_files(root: &Path, files: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = HashMap::new();
        let mut unexpected = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let map = map_file(path)?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                // The parser reports a cut-short copy only as "incomplete
                // metadata"; name the first tensor whose bytes are missing.
                match (&e, cut_off_tensor(&map)) {
                    (SafeTensorError::MetadataIncompleteBuffer, Some(tensor)) => {
                        WeightsError::Truncated {
                            path: path.clone(),
                            tensor,
                        }
                    }
                    _ => WeightsError::BadSafetensors {
                        path: path.clone(),
                        why: e.to_string(),
                    },
                }
            })?;
            let data_start = 8 + header_len;
            for (disk_name, info) in meta.tensors() {
                if VISION_PREFIXES.iter().any(|p| disk_name.starts_with(p)) {
                    continue;
                }
                let Some(canonical) = TEXT_PREFIXES
                    .iter()
                    .find_map(|p| disk_name.strip_prefix(p))
                    .map(str::to_owned)
                else {
                    // A tied head is allowed to appear; we use the embedding.
                    if disk_name != "lm_head.weight" {
                        unexpected.push(disk_name.clone());
                    }
                    continue;
                };
                let (s, e) = info.data_offsets;
                let (start, end) = (data_start + s, data_start + e);
                if end > map.len() || start > end {
                    return Err(WeightsError::Truncated {
                        path: path.clone(),
                        tensor: disk_name,
                    });
                }
                entries.insert(
                    canonical,
                    StEntry {
                        shard: i,
                        disk_name,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start,
                        end,
                    },
                );
            }
            shards.push(Shard {
                path: path.clone(),
                map: Arc::new(map),
            });
        }
        if let Some(first) = unexpected.first() {
            return Err(WeightsError::Unexpected {
                path: root.to_owned(),
                first: first.clone(),
                count: unexpected.len(),
            });
        }
        Ok(Self::Safetensors {
            root: root.to_owned(),
            shards,
            entries,
            taken: BTreeSet::new(),
            cpu: CpuWeights::default(),
        })
    }

    /// Opens a GGUF file (already parsed by the caller, who also reads its config).
    pub fn from_gguf(path: &Path, file: GgufFile) -> Self {
        Self::Gguf {
            path: path.to_owned(),
            file: Box::new(file),
            taken: BTreeSet::new(),
            cpu: CpuWeights::default(),
        }
    }

    /// Sets how [`WeightSource::cpu_matrix`] keeps matrices (default
    /// [`CpuWeights::AsStored`]).
    pub fn set_cpu_weights(&mut self, mode: CpuWeights) {
        match self {
            Self::Safetensors { cpu, .. } | Self::Gguf { cpu, .. } => *cpu = mode,
        }
    }

    /// How [`WeightSource::cpu_matrix`] keeps matrices.
    pub fn cpu_weights(&self) -> CpuWeights {
        match self {
            Self::Safetensors { cpu, .. } | Self::Gguf { cpu, .. } => *cpu,
        }
    }

    /// Loads the matrix `name` (`[out, in]`, checked against `shape`) for
    /// the CPU kernels as [`WeightSource::cpu_weights`] says, or `None` when
    /// it is to be a dense f32 tensor ([`CpuWeights::F32`]): the caller then
    /// uses [`WeightSource::load`].
    pub fn cpu_matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<CpuMatrix>, WeightsError> {
        let mode = self.cpu_weights();
        if mode == CpuWeights::F32 {
            return Ok(None);
        }
        let [rows, cols] = shape;
        let (ty, bytes) = match self.locate(name, &shape)? {
            Located::St {
                bytes,
                dtype,
                map,
                start,
            } => {
                let ty = match dtype {
                    StDtype::BF16 => GgmlType::BF16,
                    StDtype::F16 => GgmlType::F16,
                    _ => GgmlType::F32,
                };
                let mapped = WeightBytes::mapped(map, start, bytes.len());
                (ty, mapped.ok_or_else(|| self.truncated(name))?)
            }
            Located::Gguf { file, info } => (info.ty, file.tensor_weight_bytes(info)?),
        };
        let element = matches!(ty, GgmlType::BF16 | GgmlType::F16 | GgmlType::F32);
        let (ty, bytes) = if mode == CpuWeights::Q8_0 && element && cols.is_multiple_of(32) {
            let q = to_q8_0(ty, bytes.as_slice(), cols)
                .map_err(|source| self.quant_error(name, source))?;
            (GgmlType::Q8_0, WeightBytes::Owned(q.into()))
        } else {
            (ty, bytes)
        };
        let matrix = CpuMatrix::new(name, ty, rows, cols, bytes)?;
        self.take(name);
        Ok(Some(matrix))
    }

    fn truncated(&self, name: &str) -> WeightsError {
        WeightsError::Truncated {
            path: self.path().to_owned(),
            tensor: name.to_owned(),
        }
    }

    fn quant_error(&self, name: &str, source: quant::QuantError) -> WeightsError {
        WeightsError::Gguf(GgufError::Dequantize {
            path: self.path().to_owned(),
            tensor: name.to_owned(),
            source,
        })
    }

    /// The path that names this model in messages.
    pub fn path(&self) -> &Path {
        match self {
            Self::Safetensors { root, .. } => root,
            Self::Gguf { path, .. } => path,
        }
    }

    /// Loads one tensor by canonical name, checks `expected` shape, and converts to `dtype` (F32 or BF16).
    ///
    /// `norm` marks a Gemma RMSNorm weight: llama.cpp stores those with the `+1`
    /// already added, so GGUF values are shifted back to the Hugging Face form.
    pub fn load(
        &mut self,
        name: &str,
        expected: &[usize],
        dtype: DType,
        norm: bool,
    ) -> Result<TensorData, WeightsError> {
        let data = match self.locate(name, expected)? {
            Located::St {
                bytes, dtype: disk, ..
            } => convert(bytes, disk, expected, dtype),
            Located::Gguf { file, info } => {
                let mut values = file.dequantize(info)?;
                if norm {
                    values.iter_mut().for_each(|v| *v -= 1.0);
                }
                from_f32(values, expected, dtype)
            }
        };
        self.take(name);
        Ok(data)
    }

    /// Runs every check of [`WeightSource::load`] on one tensor (present,
    /// shape, dtype or quantization supported, bytes inside the file) without
    /// reading or converting its data: `medgemmactl setup` validates a model
    /// this way in seconds.
    pub fn check(&mut self, name: &str, expected: &[usize]) -> Result<(), WeightsError> {
        if let Located::Gguf { file, info } = self.locate(name, expected)? {
            if !info.ty.can_dequantize() {
                return Err(GgufError::UnsupportedType {
                    path: file.path().to_owned(),
                    tensor: info.name.clone(),
                    ty: info.ty,
                }
                .into());
            }
            file.tensor_bytes(info)?;
        }
        self.take(name);
        Ok(())
    }

    fn take(&mut self, name: &str) {
        match self {
            Self::Safetensors { taken, .. } | Self::Gguf { taken, .. } => {
                taken.insert(name.to_owned());
            }
        }
    }

    /// Finds a tensor and checks its shape, dtype and byte length.
    fn locate(&self, name: &str, expected: &[usize]) -> Result<Located<'_>, WeightsError> {
        match self {
            Self::Safetensors {
                root,
                shards,
                entries,
                ..
            } => {
                let entry = entries.get(name).ok_or_else(|| WeightsError::Missing {
                    path: root.clone(),
                    tensor: name.to_owned(),
                })?;
                let shard = &shards[entry.shard];
                if entry.shape != expected {
                    return Err(WeightsError::Shape {
                        path: shard.path.clone(),
                        tensor: entry.disk_name.clone(),
                        found: entry.shape.clone(),
                        expected: expected.to_vec(),
                    });
                }
                let bytes = &shard.map[entry.start..entry.end];
                let n: usize = expected.iter().product();
                let elem = match entry.dtype {
                    StDtype::BF16 | StDtype::F16 => 2,
                    StDtype::F32 => 4,
                    other => {
                        return Err(WeightsError::Dtype {
                            path: shard.path.clone(),
                            tensor: entry.disk_name.clone(),
                            dtype: format!("{other:?}"),
                        });
                    }
                };
                if bytes.len() != n * elem {
                    return Err(WeightsError::BadSafetensors {
                        path: shard.path.clone(),
                        why: format!(
                            "tensor `{}` has {} bytes for {n} elements",
                            entry.disk_name,
                            bytes.len()
                        ),
                    });
                }
                Ok(Located::St {
                    bytes,
                    dtype: entry.dtype,
                    map: &shard.map,
                    start: entry.start,
                })
            }
            Self::Gguf { path, file, .. } => {
                let gguf_name = gguf_name(name).ok_or_else(|| WeightsError::Missing {
                    path: path.clone(),
                    tensor: name.to_owned(),
                })?;
                let info = file
                    .tensor(&gguf_name)
                    .ok_or_else(|| WeightsError::Missing {
                        path: path.clone(),
                        tensor: gguf_name.clone(),
                    })?;
                let shape = info.shape();
                if shape != expected {
                    return Err(WeightsError::Shape {
                        path: path.clone(),
                        tensor: gguf_name,
                        found: shape,
                        expected: expected.to_vec(),
                    });
                }
                Ok(Located::Gguf { file, info })
            }
        }
    }

    /// Fails if the source holds decoder tensors nobody asked for.
    pub fn finish(&self) -> Result<(), WeightsError> {
        let (path, leftover): (PathBuf, Vec<String>) = match self {
            Self::Safetensors {
                root,
                entries,
                taken,
                ..
            } => (
                root.clone(),
                entries
                    .keys()
                    .filter(|k| !taken.contains(*k))
                    .cloned()
                    .collect(),
            ),
            Self::Gguf {
                path, file, taken, ..
            } => {
                let wanted: BTreeMap<String, ()> = taken
                    .iter()
                    .filter_map(|n| gguf_name(n))
                    .map(|n| (n, ()))
                    .collect();
                (
                    path.clone(),
                    file.tensors()
                        .iter()
                        .map(|t| t.name.clone())
                        // llama.cpp may store RoPE frequency factors; Gemma 3 has none.
                        .filter(|n| !wanted.contains_key(n) && n != "rope_freqs.weight")
                        .collect(),
                )
            }
        };
        let mut leftover = leftover;
        leftover.sort();
        match leftover.first() {
            None => Ok(()),
            Some(first) => Err(WeightsError::Unexpected {
                path,
                first: first.clone(),
                count: leftover.len(),
            }),
        }
    }
}

/// Rows of `cols` values of element type `ty` (`cols` a multiple of 32)
/// quantized to Q8_0, row by row in parallel: no f32 copy of the whole
/// matrix is ever made.
fn to_q8_0(ty: GgmlType, src: &[u8], cols: usize) -> Result<Vec<u8>, quant::QuantError> {
    use rayon::prelude::*;
    let in_row = ty.byte_size(cols).unwrap_or(0).max(1);
    let out_row = cols / 32 * 34;
    let rows = src.len() / in_row;
    let mut out = vec![0u8; rows * out_row];
    out.par_chunks_mut(out_row.max(1))
        .zip(src.par_chunks(in_row))
        .try_for_each_init(
            || vec![0.0f32; cols],
            |values, (q, row)| {
                quant::dequantize_into(ty, row, values)?;
                quant::quantize_q8_0(values, q);
                Ok(())
            },
        )?;
    Ok(out)
}

/// In a safetensors file whose header is valid but whose data section is too
/// short, the tensor (lowest offset first) whose bytes run past the end.
fn cut_off_tensor(map: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(map.get(..8)?.try_into().ok()?)).ok()?;
    let end = n.checked_add(8)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(map.get(8..end)?).ok()?;
    let available = map.len() - end;
    header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(name, info)| {
            let offsets = info.get("data_offsets")?.as_array()?;
            let start = offsets.first()?.as_u64()?;
            let stop = offsets.get(1)?.as_u64()?;
            (stop > available as u64).then(|| (start, name.clone()))
        })
        .min()
        .map(|(_, name)| name)
}

/// Canonical (Hugging Face) name → llama.cpp GGUF name.
fn gguf_name(canonical: &str) -> Option<String> {
    if canonical == "embed_tokens.weight" {
        return Some("token_embd.weight".into());
    }
    if canonical == "norm.weight" {
        return Some("output_norm.weight".into());
    }
    let rest = canonical.strip_prefix("layers.")?;
    let (idx, part) = rest.split_once('.')?;
    let mapped = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{idx}.{mapped}"))
}

fn from_f32(values: Vec<f32>, shape: &[usize], dtype: DType) -> TensorData {
    match dtype {
        DType::BF16 => TensorData::new(
            values.into_iter().map(bf16::from_f32).collect::<Vec<_>>(),
            shape.to_vec(),
        ),
        _ => TensorData::new(values, shape.to_vec()),
    }
}

/// Little-endian on-disk bytes of `src` dtype → host data of `dst` dtype.
fn convert(bytes: &[u8], src: StDtype, shape: &[usize], dst: DType) -> TensorData {
    let u16s = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    match (src, dst) {
        (StDtype::BF16, DType::BF16) => TensorData::new(
            u16s().map(bf16::from_bits).collect::<Vec<_>>(),
            shape.to_vec(),
        ),
        (StDtype::BF16, _) => TensorData::new(
            u16s()
                .map(|b| bf16::from_bits(b).to_f32())
                .collect::<Vec<_>>(),
            shape.to_vec(),
        ),
        (StDtype::F16, DType::BF16) => TensorData::new(
            u16s()
                .map(|b| bf16::from_f32(f16::from_bits(b).to_f32()))
                .collect::<Vec<_>>(),
            shape.to_vec(),
        ),
        (StDtype::F16, _) => TensorData::new(
            u16s()
                .map(|b| f16::from_bits(b).to_f32())
                .collect::<Vec<_>>(),
            shape.to_vec(),
        ),
        (_, dst) => {
            let f32s: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            from_f32(f32s, shape, dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_cover_every_layer_tensor() {
        assert_eq!(
            gguf_name("layers.3.mlp.down_proj.weight").as_deref(),
            Some("blk.3.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(gguf_name("layers.3.unknown.weight"), None);
    }

    #[test]
    fn bf16_bytes_convert_exactly() {
        let vals = [1.0f32, -2.5, 3.140625];
        let bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let d = convert(&bytes, StDtype::BF16, &[3], DType::F32);
        assert_eq!(d.try_to_vec::<f32>().unwrap(), vals.to_vec());
    }
}
