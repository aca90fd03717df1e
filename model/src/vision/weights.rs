//! The vision tensors of a Hugging Face `Gemma3ForConditionalGeneration`
//! safetensors checkpoint (single file or sharded), by canonical name.
//!
//! The text loader (`weights.rs`) skips these tensors; this module reads
//! only them, from the same memory-mapped files: `vision.<rest>` for the
//! SigLIP tower (on disk `vision_tower.vision_model.<rest>` as transformers
//! 4.5x writes it, `vision_tower.<rest>` as 5.x does, either with a leading
//! `model.`) and `projector.<rest>` for `multi_modal_projector.<rest>`
//! (spec model.md §3.2). Each tensor's shape, dtype and byte range are
//! checked before use; every vision tensor in the files must be used
//! ([`VisionWeights::finish`]).
//!
//! Owns: locating and converting vision tensors. Must never: open a path
//! other than the model directory's index and the shards it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::VisionError;

/// On-disk prefixes → canonical prefix; longest first so `vision_model.` is stripped.
const PREFIXES: [(&str, &str); 6] = [
    ("model.vision_tower.vision_model.", "vision."),
    ("vision_tower.vision_model.", "vision."),
    ("model.vision_tower.", "vision."),
    ("vision_tower.", "vision."),
    ("model.multi_modal_projector.", "projector."),
    ("multi_modal_projector.", "projector."),
];

/// The canonical name of a vision or projector tensor, if it is one.
pub(crate) fn canonical(disk: &str) -> Option<String> {
    PREFIXES
        .iter()
        .find_map(|(p, c)| disk.strip_prefix(p).map(|rest| format!("{c}{rest}")))
}

struct Entry {
    shard: usize,
    disk_name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Memory-mapped shards and the vision tensors in them.
pub struct VisionWeights {
    root: PathBuf,
    shards: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
}

impl std::fmt::Debug for VisionWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionWeights")
            .field("root", &self.root)
            .field("tensors", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl VisionWeights {
    /// Opens the safetensors files of the model directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, VisionError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let bad = |why: String| VisionError::BadFile {
                path: index.clone(),
                why,
            };
            let text = std::fs::read_to_string(&index).map_err(|source| VisionError::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("it has no `weight_map` object".into()))?;
            let mut names = BTreeSet::new();
            for file in map.values() {
                let file = file
                    .as_str()
                    .filter(|f| !f.contains('/') && !f.contains('\\') && *f != "..")
                    .ok_or_else(|| bad("a shard is not a plain file name".into()))?;
                names.insert(file.to_owned());
            }
            names.into_iter().map(|f| dir.join(f)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut entries = BTreeMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let map = crate::mmap::map_readonly(&path).map_err(|source| VisionError::Io {
                path: path.clone(),
                source,
            })?;
            let (header_len, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| VisionError::BadFile {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
            let data_start = 8 + header_len;
            for (disk_name, info) in meta.tensors() {
                let Some(name) = canonical(&disk_name) else {
                    continue;
                };
                let (s, e) = info.data_offsets;
                let (start, end) = (data_start + s, data_start + e);
                if end > map.len() || start > end {
                    return Err(VisionError::BadFile {
                        path: path.clone(),
                        why: format!("tensor `{disk_name}` lies beyond the end of the file"),
                    });
                }
                entries.insert(
                    name,
                    Entry {
                        shard: i,
                        disk_name,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start,
                        end,
                    },
                );
            }
            shards.push((path, map));
        }
        Ok(Self {
            root: dir.to_owned(),
            shards,
            entries,
            taken: BTreeSet::new(),
        })
    }

    /// Whether the files hold any vision tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks one tensor (present, shape, dtype, byte length) and returns its bytes.
    fn locate(&self, name: &str, shape: &[usize]) -> Result<(&[u8], StDtype), VisionError> {
        let e = self.entries.get(name).ok_or_else(|| VisionError::Missing {
            path: self.root.clone(),
            tensor: name.to_owned(),
        })?;
        let path = &self.shards[e.shard].0;
        if e.shape != shape {
            return Err(VisionError::Shape {
                path: path.clone(),
                tensor: e.disk_name.clone(),
                found: e.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let elem = match e.dtype {
            StDtype::BF16 | StDtype::F16 => 2,
            StDtype::F32 => 4,
            other => {
                return Err(VisionError::BadFile {
                    path: path.clone(),
                    why: format!(
                        "tensor `{}` is stored as {other:?}; use bf16, f16 or f32",
                        e.disk_name
                    ),
                });
            }
        };
        let bytes = &self.shards[e.shard].1[e.start..e.end];
        if bytes.len() != shape.iter().product::<usize>() * elem {
            return Err(VisionError::BadFile {
                path: path.clone(),
                why: format!("tensor `{}` has the wrong byte length", e.disk_name),
            });
        }
        Ok((bytes, e.dtype))
    }

    /// Every check of [`VisionWeights::load`] without converting data.
    pub fn check(&mut self, name: &str, shape: &[usize]) -> Result<(), VisionError> {
        self.locate(name, shape)?;
        self.taken.insert(name.to_owned());
        Ok(())
    }

    /// Loads `name` (shape `shape` on disk) as host data of `dtype` with shape `as_shape`.
    pub fn load(
        &mut self,
        name: &str,
        shape: &[usize],
        as_shape: &[usize],
        dtype: DType,
    ) -> Result<TensorData, VisionError> {
        let (bytes, disk) = self.locate(name, shape)?;
        let data = convert(bytes, disk, as_shape, dtype);
        self.taken.insert(name.to_owned());
        Ok(data)
    }

    /// Fails if a vision tensor of the files was never asked for.
    pub fn finish(&self) -> Result<(), VisionError> {
        let left: Vec<&String> = self
            .entries
            .keys()
            .filter(|k| !self.taken.contains(*k))
            .collect();
        match left.first() {
            None => Ok(()),
            Some(first) => Err(VisionError::Unexpected {
                path: self.root.clone(),
                first: self.entries[*first].disk_name.clone(),
                count: left.len(),
            }),
        }
    }
}

/// Little-endian bytes of `src` dtype → host data of `dst` (F32 or BF16).
fn convert(bytes: &[u8], src: StDtype, shape: &[usize], dst: DType) -> TensorData {
    let f32s: Vec<f32> = match src {
        StDtype::BF16 if dst == DType::BF16 => {
            let v: Vec<bf16> = bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                .collect();
            return TensorData::new(v, shape.to_vec());
        }
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    match dst {
        DType::BF16 => TensorData::new(
            f32s.into_iter().map(bf16::from_f32).collect::<Vec<_>>(),
            shape.to_vec(),
        ),
        _ => TensorData::new(f32s, shape.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_transformers_spellings_map_to_one_name() {
        for disk in [
            "vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight",
            "vision_tower.encoder.layers.3.mlp.fc1.weight",
            "model.vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight",
            "model.vision_tower.encoder.layers.3.mlp.fc1.weight",
        ] {
            assert_eq!(
                canonical(disk).as_deref(),
                Some("vision.encoder.layers.3.mlp.fc1.weight"),
                "{disk}"
            );
        }
        assert_eq!(
            canonical("multi_modal_projector.mm_soft_emb_norm.weight").as_deref(),
            Some("projector.mm_soft_emb_norm.weight")
        );
        assert_eq!(canonical("language_model.model.norm.weight"), None);
    }
}
