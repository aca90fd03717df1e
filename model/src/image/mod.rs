//! Image inputs: decoding PNG, JPEG and single-frame DICOM into 8-bit RGB,
//! and preprocessing into the encoder's pixel values (spec model.md §5.1).
//!
//! The pipeline is the Hugging Face Gemma 3 image processor's (PIL
//! backend, `Gemma3ImageProcessorPil`): convert to RGB, resize to
//! 896 × 896 ignoring the aspect ratio with PIL's bilinear filter
//! ([`resize::resize_bilinear`], bit-exact), rescale by 1/255, normalise
//! with mean 0.5 and std 0.5 to [−1, 1], channels first. DICOM slices are
//! windowed first ([`dicom`]): CT with the model card's three Hounsfield
//! windows as R, G and B, other modalities with their stored window.
//!
//! Every input is hostile until decoded: the byte size, the declared width
//! and height and the pixel count are checked against [`Limits`] before any
//! pixel buffer is allocated, and a malformed file is an [`ImageError`],
//! never a panic (`tests/image_fuzz.rs` mutates real files to check it).
//!
//! Owns: decoding, limits, windowing, resizing and normalisation. Must
//! never: write an image anywhere, log it, or put any of its content (pixel
//! values, DICOM attributes such as names or ids) into an error or a
//! `Debug` output: errors carry sizes, formats and codec messages only.

pub mod dicom;
pub mod resize;

use std::fmt;
use std::io::Cursor;

pub use resize::resize_bilinear;

/// Side of the square the encoder reads (SigLIP at 896, spec §5.1).
pub const IMAGE_SIZE: usize = 896;

/// Bounds on what an image may be before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded file, in bytes.
    pub max_bytes: usize,
    /// Largest width or height, in pixels.
    pub max_side: u32,
    /// Largest width × height.
    pub max_pixels: u64,
}

impl Default for Limits {
    /// 32 MiB files, 16 384 pixels a side, 40 megapixels: a digital
    /// radiograph (about 3 000 × 3 000), a CT slice (512 × 512) or a
    /// dermatology photo (a 24-megapixel camera) fits; the decoded buffer
    /// stays under 40 M × 8 bytes (16-bit RGBA) = 320 MB.
    fn default() -> Self {
        Self {
            max_bytes: 32 << 20,
            max_side: 16_384,
            max_pixels: 40_000_000,
        }
    }
}

/// The container an image arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// PNG.
    Png,
    /// JPEG (JFIF/EXIF baseline or progressive).
    Jpeg,
    /// A DICOM Part 10 file.
    Dicom,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Png => "PNG",
            Self::Jpeg => "JPEG",
            Self::Dicom => "DICOM",
        })
    }
}

/// Why an image was refused. Messages name sizes and formats, never content.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Empty input.
    #[error("the image is empty; send a PNG, JPEG or DICOM file")]
    Empty,
    /// Larger than [`Limits::max_bytes`].
    #[error(
        "the image file has {bytes} bytes, more than the limit of {limit}; send a smaller file"
    )]
    TooManyBytes {
        /// File size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a format we read.
    #[error("the file is not a PNG, JPEG or DICOM image; convert it to PNG or JPEG")]
    UnknownFormat,
    /// Declared size outside the limits.
    #[error(
        "the {format} image is {width} × {height} pixels, more than the limit ({max_side} a side, {max_pixels} in all); downscale it first"
    )]
    TooLarge {
        /// Container.
        format: ImageFormat,
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
        /// The side limit.
        max_side: u32,
        /// The pixel-count limit.
        max_pixels: u64,
    },
    /// Zero width or height.
    #[error("the {format} image declares a width or height of zero; the file is damaged")]
    ZeroSize {
        /// Container.
        format: ImageFormat,
    },
    /// The codec refused the file.
    #[error(
        "the {format} image could not be decoded ({why}); the file is damaged or uses an unsupported variant"
    )]
    Decode {
        /// Container.
        format: ImageFormat,
        /// The codec's message (no pixel data or attribute values).
        why: String,
    },
    /// A DICOM object this engine does not read.
    #[error("the DICOM file is not supported: {why}")]
    UnsupportedDicom {
        /// What is unsupported, from a fixed list of reasons.
        why: String,
    },
}

/// An 8-bit RGB image, rows top to bottom, `[r, g, b]` per pixel.
///
/// `Debug` prints only the size: the pixels are patient data.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width × height × 3` bytes.
    pub pixels: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RgbImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// How a DICOM slice was turned into RGB (safe to show: no attribute values
/// but the modality code and the window numbers).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Windowing {
    /// Not a DICOM file: the pixels as stored.
    None,
    /// CT: the model card's three Hounsfield windows as R, G, B.
    CtRecipe,
    /// The window stored in the file (centre, width), grey in all three channels.
    Stored {
        /// Window centre.
        center: f64,
        /// Window width.
        width: f64,
    },
    /// No stored window: the value range of the slice, grey.
    MinMax,
    /// Colour DICOM: the pixels as stored.
    Color,
}

/// A decoded image and where it came from.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The pixels.
    pub image: RgbImage,
    /// Its container.
    pub format: ImageFormat,
    /// How a DICOM slice was windowed (`None` for PNG and JPEG).
    pub windowing: Windowing,
    /// DICOM modality code (`CT`, `MR`, `CR`, `DX`, …), when there is one.
    pub modality: Option<String>,
}

/// Pixel values for the encoder: `[3, size, size]`, channels first, in [−1, 1].
///
/// `Debug` prints only the size: the values are patient data.
#[derive(Clone, PartialEq)]
pub struct PixelValues {
    /// Side of the square.
    pub size: usize,
    /// `3 × size × size` values, channel planes R, G, B.
    pub data: Vec<f32>,
}

impl fmt::Debug for PixelValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PixelValues")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The container of `bytes`, from its magic numbers.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.get(128..132) == Some(b"DICM") {
        Some(ImageFormat::Dicom)
    } else {
        None
    }
}

/// Checks a declared size against `limits`.
pub(crate) fn check_size(
    format: ImageFormat,
    width: u64,
    height: u64,
    limits: &Limits,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { format });
    }
    let side = u64::from(limits.max_side);
    if width > side || height > side || width.saturating_mul(height) > limits.max_pixels {
        return Err(ImageError::TooLarge {
            format,
            width,
            height,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

/// Decodes a PNG, JPEG or single-frame DICOM file into 8-bit RGB.
///
/// # Errors
/// [`ImageError`]: over the limits, unknown or damaged file, unsupported
/// DICOM variant. Never panics on any input.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            bytes: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes).ok_or(ImageError::UnknownFormat)?;
    // The codecs are written not to panic, but they are large and parse
    // hostile bytes: a panic in one of them is turned into an error for this
    // image instead of taking down the request's thread.
    let run = || match format {
        ImageFormat::Dicom => dicom::decode(bytes, limits),
        _ => decode_raster(bytes, format, limits).map(|image| Decoded {
            image,
            format,
            windowing: Windowing::None,
            modality: None,
        }),
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
        Err(ImageError::Decode {
            format,
            why: "the decoder failed on this file".into(),
        })
    })
}

/// PNG or JPEG through the `image` crate, size checked from the header first.
fn decode_raster(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<RgbImage, ImageError> {
    let codec = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    let err = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => ImageError::TooLarge {
            format,
            width: 0,
            height: 0,
            max_side: limits.max_side,
            max_pixels: limits.max_pixels,
        },
        other => ImageError::Decode {
            format,
            why: other.to_string(),
        },
    };
    let header = image::ImageReader::with_format(Cursor::new(bytes), codec);
    let (w, h) = header.into_dimensions().map_err(err)?;
    check_size(format, u64::from(w), u64::from(h), limits)?;
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), codec);
    let mut codec_limits = image::Limits::default();
    codec_limits.max_image_width = Some(limits.max_side);
    codec_limits.max_image_height = Some(limits.max_side);
    // 16-bit RGBA is the widest layout either codec produces.
    codec_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 20));
    reader.limits(codec_limits);
    let img = reader.decode().map_err(err)?;
    // transformers' `convert_to_rgb`: an image with transparency (an alpha
    // channel, or a tRNS chunk the codec expands to one) is composited onto
    // white; otherwise PIL's convert("RGB"): grey replicated, palette
    // expanded. 16-bit samples are scaled to 8 bits (PIL would clip 16-bit
    // grey at 255; scaling keeps the image).
    let (width, height) = (img.width() as usize, img.height() as usize);
    let pixels = if img.color().has_alpha() {
        img.into_rgba8()
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| {
                let a = p[3];
                [
                    over_white(p[0], a),
                    over_white(p[1], a),
                    over_white(p[2], a),
                ]
            })
            .collect()
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// One channel of `PIL.Image.alpha_composite(white, image)`, in Pillow's
/// integer arithmetic (`AlphaComposite.c`, 7 bits of precision): over an
/// opaque background the coefficients are exactly `a·128` and `(255 − a)·128`.
fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const PRECISION_BITS: u32 = 7;
    let shift_div_255 = |v: u32| ((v >> 8) + v) >> 8;
    let (c, a) = (u32::from(c), u32::from(a));
    let coef1 = a << PRECISION_BITS;
    let coef2 = (255 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2;
    (shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
}

/// Resizes to `size × size` (PIL bilinear) and normalises to `[3, size, size]`
/// in [−1, 1]: `(v / 255 − 0.5) / 0.5`, as the HF processor computes it
/// (rescale in f64, then f32).
pub fn to_pixel_values(image: &RgbImage, size: usize) -> PixelValues {
    let resized = resize_bilinear(image, size, size);
    let plane = size * size;
    let mut data = vec![0f32; 3 * plane];
    // One table for the 256 levels: the same arithmetic as the reference.
    let table: Vec<f32> = (0..=255u8)
        .map(|v| ((f64::from(v) * (1.0 / 255.0)) as f32 - 0.5) / 0.5)
        .collect();
    for (i, px) in resized.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = table[usize::from(px[c])];
        }
    }
    PixelValues { size, data }
}

/// Decodes `bytes` and preprocesses it for the encoder at [`IMAGE_SIZE`].
///
/// # Errors
/// As [`decode`].
pub fn preprocess(bytes: &[u8], limits: &Limits) -> Result<PixelValues, ImageError> {
    let decoded = decode(bytes, limits)?;
    Ok(to_pixel_values(&decoded.image, IMAGE_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_knows_the_three_containers() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some(ImageFormat::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        let mut d = vec![0u8; 132];
        d[128..132].copy_from_slice(b"DICM");
        assert_eq!(sniff(&d), Some(ImageFormat::Dicom));
        assert_eq!(sniff(b"GIF89a"), None);
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let l = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&[0u8; 11], &l),
            Err(ImageError::TooManyBytes {
                bytes: 11,
                limit: 10
            })
        ));
        assert!(matches!(decode(&[], &l), Err(ImageError::Empty)));
        let l = Limits::default();
        assert!(matches!(
            check_size(ImageFormat::Png, 16_385, 1, &l),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(matches!(
            check_size(ImageFormat::Png, 10_000, 10_000, &l),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(check_size(ImageFormat::Png, 3000, 3000, &l).is_ok());
    }

    #[test]
    fn normalisation_maps_0_and_255_to_minus_one_and_one() {
        let img = RgbImage {
            width: 1,
            height: 1,
            pixels: vec![0, 255, 128],
        };
        let p = to_pixel_values(&img, 2);
        assert_eq!(p.data.len(), 12);
        assert_eq!(&p.data[0..4], &[-1.0; 4]);
        assert_eq!(&p.data[4..8], &[1.0; 4]);
        assert!((p.data[8] - (128.0 / 255.0 * 2.0 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn transparency_is_composited_onto_white() {
        assert_eq!(over_white(10, 255), 10);
        assert_eq!(over_white(10, 0), 255);
        // Half-transparent black over white: PIL gives 127 or 128.
        let mid = over_white(0, 128);
        assert!((127..=128).contains(&mid), "{mid}");
    }

    #[test]
    fn debug_never_prints_pixels() {
        let img = RgbImage {
            width: 1,
            height: 1,
            pixels: vec![123, 45, 67],
        };
        let s = format!("{img:?}");
        assert!(!s.contains("123"), "{s}");
    }
}
