//! A validating reader for GGUF model files (versions 2 and 3), over a
//! read-only memory map.
//!
//! Owns: parsing the GGUF header (magic, version, metadata key/values, tensor
//! infos), checking every count, length, type and byte range against the file
//! before trusting it, and handing out each tensor's on-disk bytes or its
//! dequantized `f32` values (through [`crate::quant`]).
//!
//! Must never: write to the file, panic or index out of bounds on a hostile or
//! truncated file, allocate from a count the file size cannot back, or open
//! any path but the one it is given.
//!
//! Format reference: ggml's `docs/gguf.md` and `ggml/src/gguf.cpp` (the same
//! checks llama.cpp makes when loading). All integers are little-endian
//! (big-endian GGUF files are rejected through their version field).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::cpu::WeightBytes;
use crate::quant::{self, QuantError};

pub use crate::quant::GgmlType;

/// `"GGUF"` read as bytes.
const MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `GGML_MAX_DIMS`: tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are allowed by the format; real files nest at most once.
/// A bound keeps a hostile file from recursing deeply.
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value. Integers keep their on-disk width.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer that is not negative, widened to `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A floating-point value (`F64` is rounded to `f32`).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A floating-point value, widened to `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

/// One tensor's description from the GGUF header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` (ggml's `ne[0]`) is the innermost,
    /// contiguous one.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (the GGUF dims reversed), so a linear weight reads
    /// `[out, in]` as in PyTorch.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// Number of elements (saturating; [`GgufFile::open`] has checked that it
    /// fits for every tensor it returns).
    pub fn n_elements(&self) -> usize {
        self.dims.iter().fold(1usize, |acc, &d| {
            acc.saturating_mul(usize::try_from(d).unwrap_or(usize::MAX))
        })
    }

    /// Bytes of data, or `None` for an unknown type or an overflowing size.
    pub fn byte_size(&self) -> Option<usize> {
        self.ty.byte_size(self.n_elements())
    }
}

/// What went wrong reading a GGUF file (including rebuilding its embedded
/// tokenizer in [`crate::gguf_tokenizer`]). Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error(
        "cannot open or map GGUF file {path}: {source}; check that the path exists and is readable"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a GGUF file (it starts with bytes {found:02x?}, not \"GGUF\"); \
         pass a .gguf model file"
    )]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error(
        "{path} is GGUF version {version}, but only versions 2 and 3 (little-endian) are \
         supported; re-convert the model with a current llama.cpp"
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{path} ends (at byte {file_len}) in the middle of {context}, which needs {needed} bytes \
         at offset {offset}; the file is truncated or corrupt, download it again"
    )]
    Truncated {
        path: PathBuf,
        context: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error(
        "{path} declares {count} {what}, more than its {file_len} bytes could hold; \
         the file is corrupt, download it again"
    )]
    CountTooLarge {
        path: PathBuf,
        what: &'static str,
        count: u64,
        file_len: u64,
    },
    #[error("{path} has a non-UTF-8 string in {context} at offset {offset}; the file is corrupt")]
    InvalidUtf8 {
        path: PathBuf,
        context: String,
        offset: u64,
    },
    #[error(
        "{path}: metadata key `{key}` has unknown value type id {type_id}; \
         the file is corrupt or newer than this reader"
    )]
    UnknownValueType {
        path: PathBuf,
        key: String,
        type_id: u32,
    },
    #[error(
        "{path}: metadata key `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}; the file is corrupt"
    )]
    NestingTooDeep { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}` appears twice; the file is corrupt")]
    DuplicateKey { path: PathBuf, key: String },
    #[error(
        "{path}: `general.alignment` is {value}, but it must be a power of two that fits \
         in 32 bits; the file is corrupt"
    )]
    BadAlignment { path: PathBuf, value: String },
    #[error("{path}: tensor `{tensor}` appears twice; the file is corrupt")]
    DuplicateTensor { path: PathBuf, tensor: String },
    #[error(
        "{path}: tensor `{tensor}` has {n_dims} dimensions, more than ggml's maximum of \
         {MAX_DIMS}; the file is corrupt"
    )]
    TooManyDims {
        path: PathBuf,
        tensor: String,
        n_dims: u32,
    },
    #[error(
        "{path}: tensor `{tensor}` has dimensions {dims:?} whose size overflows or does not \
         fit type {ty} (the innermost dimension must be a multiple of the block size); \
         the file is corrupt"
    )]
    BadDims {
        path: PathBuf,
        tensor: String,
        dims: Vec<u64>,
        ty: GgmlType,
    },
    #[error(
        "{path}: tensor `{tensor}` has type id {type_id}, which this reader does not know; \
         re-quantize the model to a standard type (Q8_0, Q4_K, Q6_K, F16, ...)"
    )]
    UnknownTensorType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
    },
    #[error(
        "{path}: tensor `{tensor}` data offset {offset} is not a multiple of the file's \
         alignment {alignment}; the file is corrupt"
    )]
    MisalignedTensor {
        path: PathBuf,
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "{path}: tensor `{tensor}` needs bytes {start}..{end}, but the file has only \
         {file_len} bytes; the file is truncated, download it again"
    )]
    TensorOutOfBounds {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error(
        "{path}: tensor `{tensor}` has type {ty}, which this engine cannot dequantize; \
         use a GGUF quantized to F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K"
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("{path}: cannot dequantize tensor `{tensor}`: {source}")]
    Dequantize {
        path: PathBuf,
        tensor: String,
        #[source]
        source: QuantError,
    },
    #[error(
        "{path}: required metadata key `{key}` is missing; this file is not a model this engine can load"
    )]
    MissingKey { path: PathBuf, key: String },
    #[error(
        "{path}: metadata key `{key}` is a {found}, expected {expected}; \
         the file was written by an incompatible converter"
    )]
    WrongKeyType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path} has no tensor named `{tensor}`; check the model architecture")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error(
        "{path}: tokenizer model is `{model}`, but only `llama` (SentencePiece BPE) vocabularies \
         can be rebuilt; use the model's tokenizer.json instead"
    )]
    UnsupportedTokenizerModel { path: PathBuf, model: String },
    #[error(
        "{path}: `{key}` has {len} entries but `tokenizer.ggml.tokens` has {expected}; \
         the file is corrupt"
    )]
    VocabLengthMismatch {
        path: PathBuf,
        key: &'static str,
        len: usize,
        expected: usize,
    },
    #[error(
        "{path}: vocabulary piece {piece:?} appears as id {first} and id {second}; \
         the file is corrupt"
    )]
    DuplicatePiece {
        path: PathBuf,
        piece: String,
        first: u32,
        second: u32,
    },
    #[error("{path}: `{key}` is {id}, outside the {vocab}-piece vocabulary; the file is corrupt")]
    TokenIdOutOfRange {
        path: PathBuf,
        key: &'static str,
        id: u64,
        vocab: usize,
    },
    #[error(
        "{path}: the vocabulary has {len} pieces, more than 32-bit token ids can address; \
         the file is corrupt"
    )]
    VocabTooLarge { path: PathBuf, len: usize },
    #[error(
        "{path}: could not assemble a tokenizer from the GGUF vocabulary: {source}; \
         pass the model's tokenizer.json instead"
    )]
    TokenizerBuild {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
}

/// An open GGUF file: the parsed header plus a read-only map of the file.
pub struct GgufFile {
    path: PathBuf,
    /// Shared with the CPU matrices that read their blocks in place.
    map: Arc<Mmap>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("file_len", &self.map.len())
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

impl GgufFile {
    /// Opens, maps and validates `path`: after this returns, every tensor's
    /// type is known and its bytes lie inside the file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let map = crate::mmap::map_readonly(path).map_err(io)?;
        let header = Parser::new(path, &map).parse()?;
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            by_name: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// File offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// `general.architecture`, e.g. `"gemma3"`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.meta_str("general.architecture")
    }

    /// A required metadata value.
    pub fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    /// A required non-negative integer of any width.
    pub fn meta_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "non-negative integer", v))
    }

    /// A required float (`float32` or `float64`).
    pub fn meta_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| self.wrong_type(key, "float", v))
    }

    pub fn meta_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong_type(key, "bool", v))
    }

    pub fn meta_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "string", v))
    }

    pub fn meta_array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| self.wrong_type(key, "array", v))
    }

    /// The error for a metadata value of the wrong type (public so callers
    /// that inspect array elements report the same way).
    pub fn wrong_type(&self, key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
        GgufError::WrongKeyType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: found.type_name(),
        }
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Like [`GgufFile::tensor`], but a missing tensor is an error naming it.
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_owned(),
        })
    }

    /// The tensor's bytes as a range of the shared map, for a matrix kept
    /// as stored (the CPU kernels read it in place).
    pub fn tensor_weight_bytes(&self, t: &TensorInfo) -> Result<WeightBytes, GgufError> {
        let range = self.tensor_range(t)?;
        WeightBytes::mapped(&self.map, range.start, range.len())
            .ok_or_else(|| self.out_of_bounds(t, Some(range.start as u64), Some(range.end as u64)))
    }

    /// The tensor's raw on-disk bytes (ggml block layout, little-endian).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let range = self.tensor_range(t)?;
        self.map
            .get(range.clone())
            .ok_or_else(|| self.out_of_bounds(t, Some(range.start as u64), Some(range.end as u64)))
    }

    /// Where the tensor's bytes lie in the file, checked against its length.
    fn tensor_range(&self, t: &TensorInfo) -> Result<std::ops::Range<usize>, GgufError> {
        // Recomputed with checked arithmetic: `t` may not come from this file.
        let size = tensor_size(&self.path, t)?;
        let file_len = self.map.len() as u64;
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            // Both fit in usize: they are at most the mapped length.
            (Some(start), Some(end)) if end <= file_len => Ok(start as usize..end as usize),
            _ => Err(self.out_of_bounds(t, start, end)),
        }
    }

    fn out_of_bounds(&self, t: &TensorInfo, start: Option<u64>, end: Option<u64>) -> GgufError {
        GgufError::TensorOutOfBounds {
            path: self.path.clone(),
            tensor: t.name.clone(),
            start: start.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            file_len: self.map.len() as u64,
        }
    }

    /// The tensor's values as `f32`, row-major with shape [`TensorInfo::shape`].
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        if !t.ty.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: t.name.clone(),
                ty: t.ty,
            });
        }
        let bytes = self.tensor_bytes(t)?;
        quant::dequantize(t.ty, bytes, t.n_elements()).map_err(|source| GgufError::Dequantize {
            path: self.path.clone(),
            tensor: t.name.clone(),
            source,
        })
    }
}

/// Byte size of `t`'s data, or the error saying why it has none.
fn tensor_size(path: &Path, t: &TensorInfo) -> Result<u64, GgufError> {
    let Some((block, _)) = t.ty.block_layout() else {
        return Err(GgufError::UnknownTensorType {
            path: path.to_path_buf(),
            tensor: t.name.clone(),
            type_id: t.ty.id(),
        });
    };
    let bad_dims = || GgufError::BadDims {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        dims: t.dims.clone(),
        ty: t.ty,
    };
    // ggml requires whole blocks along the innermost dimension (gguf.cpp).
    if t.dims
        .first()
        .is_some_and(|&ne0| !ne0.is_multiple_of(block as u64))
    {
        return Err(bad_dims());
    }
    let n = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(bad_dims)?;
    t.ty.byte_size(n).map(|s| s as u64).ok_or_else(bad_dims)
}

/// The parsed header.
struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

/// Value type ids of the GGUF metadata format.
mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Minimum encoded size of one value of a type, used to bound array counts.
fn min_value_size(type_id: u32) -> Option<u64> {
    use value_type::*;
    Some(match type_id {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 => 8,
        STRING => 8,    // u64 length
        ARRAY => 4 + 8, // element type + count
        _ => return None,
    })
}

/// A cursor over the mapped bytes that reports errors with file context.
struct Parser<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, data: &'a [u8]) -> Self {
        Self { path, data, pos: 0 }
    }

    fn file_len(&self) -> u64 {
        self.data.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, context: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                context: context(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.file_len(),
            });
        }
        // n <= remaining, so it fits in usize and the slice is in bounds.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn array<const N: usize>(
        &mut self,
        context: &dyn Fn() -> String,
    ) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, context)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, context: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(context).map(u32::from_le_bytes)
    }

    fn u64(&mut self, context: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(context).map(u64::from_le_bytes)
    }

    /// A count of items each at least `min_size` bytes long, checked against
    /// the bytes left so that no allocation exceeds what the file can back.
    fn count(
        &mut self,
        what: &'static str,
        min_size: u64,
        context: &dyn Fn() -> String,
    ) -> Result<u64, GgufError> {
        let count = self.u64(context)?;
        if count > self.remaining() / min_size.max(1) {
            return Err(GgufError::CountTooLarge {
                path: self.path.to_path_buf(),
                what,
                count,
                file_len: self.file_len(),
            });
        }
        Ok(count)
    }

    fn string(&mut self, context: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(context)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, context)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                path: self.path.to_path_buf(),
                context: context(),
                offset,
            }),
        }
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<MetaValue, GgufError> {
        use value_type::*;
        let ctx = || format!("the value of metadata key `{key}`");
        Ok(match type_id {
            U8 => MetaValue::U8(u8::from_le_bytes(self.array(&ctx)?)),
            I8 => MetaValue::I8(i8::from_le_bytes(self.array(&ctx)?)),
            U16 => MetaValue::U16(u16::from_le_bytes(self.array(&ctx)?)),
            I16 => MetaValue::I16(i16::from_le_bytes(self.array(&ctx)?)),
            U32 => MetaValue::U32(u32::from_le_bytes(self.array(&ctx)?)),
            I32 => MetaValue::I32(i32::from_le_bytes(self.array(&ctx)?)),
            U64 => MetaValue::U64(u64::from_le_bytes(self.array(&ctx)?)),
            I64 => MetaValue::I64(i64::from_le_bytes(self.array(&ctx)?)),
            F32 => MetaValue::F32(f32::from_le_bytes(self.array(&ctx)?)),
            F64 => MetaValue::F64(f64::from_le_bytes(self.array(&ctx)?)),
            // gguf.cpp reads a bool as one byte; any non-zero value is true.
            BOOL => MetaValue::Bool(self.array::<1>(&ctx)?[0] != 0),
            STRING => MetaValue::String(self.string(&ctx)?),
            ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        path: self.path.to_path_buf(),
                        key: key.to_owned(),
                    });
                }
                let elem_type = self.u32(&ctx)?;
                let Some(min_size) = min_value_size(elem_type) else {
                    return Err(self.unknown_value_type(key, elem_type));
                };
                let n = self.count("array elements", min_size, &ctx)?;
                // n <= remaining bytes, so it fits in usize.
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            other => return Err(self.unknown_value_type(key, other)),
        })
    }

    fn unknown_value_type(&self, key: &str, type_id: u32) -> GgufError {
        GgufError::UnknownValueType {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            type_id,
        }
    }

    fn parse(mut self) -> Result<Header, GgufError> {
        let path = self.path.to_path_buf();
        let magic: [u8; 4] =
            self.array(&|| "the GGUF magic".to_owned())
                .map_err(|_| GgufError::BadMagic {
                    path: path.clone(),
                    found: self.data.iter().take(4).copied().collect(),
                })?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path,
                found: magic.to_vec(),
            });
        }
        let version = self.u32(&|| "the GGUF version".to_owned())?;
        // Version 1 used 32-bit counts; 2 and 3 share this layout (3 only
        // added big-endian files, whose version field reads as 0x0300_0000 here).
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { path, version });
        }
        // A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type)
        // + 8 (offset) bytes; a key/value at least 8 (key length) + 4 (type) + 1.
        let n_tensors = self.count("tensors", 24, &|| "the tensor count".to_owned())?;
        let n_kv = self.count("metadata entries", 13, &|| "the metadata count".to_owned())?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self.string(&|| format!("metadata key #{i}"))?;
            let type_id = self.u32(&|| format!("the type of metadata key `{key}`"))?;
            let value = self.value(&key, type_id, 0)?;
            if metadata.contains_key(&key) {
                return Err(GgufError::DuplicateKey { path, key });
            }
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= u64::from(u32::MAX) => a,
                _ => {
                    return Err(GgufError::BadAlignment {
                        path,
                        value: format!("{v:?}"),
                    });
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = self.string(&|| format!("the name of tensor #{i}"))?;
            let ctx = || format!("the info of tensor `{name}`");
            let n_dims = self.u32(&ctx)?;
            if n_dims > MAX_DIMS {
                return Err(GgufError::TooManyDims {
                    path,
                    tensor: name,
                    n_dims,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64(&ctx)?);
            }
            let type_id = self.u32(&ctx)?;
            let offset = self.u64(&ctx)?;
            let info = TensorInfo {
                name,
                dims,
                ty: GgmlType::from_id(type_id),
                offset,
            };
            if names.insert(info.name.clone(), i).is_some() {
                return Err(GgufError::DuplicateTensor {
                    path,
                    tensor: info.name,
                });
            }
            tensors.push(info);
        }

        // The data section starts at the next multiple of the alignment.
        let header_end = self.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = self.file_len();
        for t in &tensors {
            let size = tensor_size(&path, t)?;
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedTensor {
                    path,
                    tensor: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(size));
            if !matches!(end, Some(end) if end <= file_len) {
                return Err(GgufError::TensorOutOfBounds {
                    path,
                    tensor: t.name.clone(),
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                });
            }
        }

        Ok(Header {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }
}
