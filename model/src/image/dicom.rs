//! Single-frame DICOM slices (CT, MR, CR/DX, …) into 8-bit RGB.
//!
//! Read with dicom-rs (`dicom-object`, `dicom-pixeldata`; pure-Rust codecs:
//! native, deflate, RLE, JPEG). The modality LUT (rescale slope and
//! intercept) is applied first, so CT values are Hounsfield units. Then:
//!
//! - **CT**: MedGemma 1.5's recipe (model card, Google's
//!   `high_dimensional_ct_hugging_face` notebook): three windows as the
//!   channels, R −1024..1024 HU, G −135..215 HU, B 0..80 HU; each value
//!   clipped to its window, `(v − lo) / (hi − lo) · 255` in f32, rounded half
//!   to even (`np.round`) to 8 bits.
//! - **other monochrome** (MR, CR, DX, …): the first window stored in the
//!   file, with the DICOM linear VOI function (PS3.3 C.11.2.1.2.1) mapped
//!   to 0..255; without a stored window, the slice's own value range.
//!   `MONOCHROME1` is inverted so that bright is dense, as on a viewer.
//!   The grey value fills all three channels.
//! - **RGB**: the pixels as stored.
//!
//! Owns: the DICOM-specific part of [`super::decode`]. Must never: return
//! or log an attribute value other than the modality code and window
//! numbers (a DICOM file carries the patient's name, ids and dates).

use dicom_dictionary_std::tags;
use dicom_object::{OpenFileOptions, file::ReadPreamble};
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder};

use super::{Decoded, ImageError, ImageFormat, Limits, RgbImage, Windowing, check_size};

/// The model card's CT windows in Hounsfield units: R wide, G soft tissue, B brain.
pub const CT_WINDOWS: [(f32, f32); 3] = [(-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0)];

fn unsupported(why: &str) -> ImageError {
    ImageError::UnsupportedDicom { why: why.into() }
}

fn damaged(why: impl std::fmt::Display) -> ImageError {
    ImageError::Decode {
        format: ImageFormat::Dicom,
        why: why.to_string(),
    }
}

/// Decodes a DICOM Part 10 file (128-byte preamble, `DICM`) already sniffed.
pub(super) fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    let body = bytes.get(128..).ok_or_else(|| damaged("file too short"))?;
    check_lengths(body)?;
    let obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| damaged(dicom_reason(&e.to_string())))?;

    let uint = |tag| -> Option<u64> { obj.get(tag).and_then(|e| e.to_int::<u64>().ok()) };
    let rows =
        uint(tags::ROWS).ok_or_else(|| unsupported("it has no Rows attribute (no image)"))?;
    let cols =
        uint(tags::COLUMNS).ok_or_else(|| unsupported("it has no Columns attribute (no image)"))?;
    check_size(ImageFormat::Dicom, cols, rows, limits)?;
    let frames = uint(tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if frames != 1 {
        return Err(unsupported(
            "it holds several frames; send each slice as its own file",
        ));
    }
    let samples = uint(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 && samples != 3 {
        return Err(unsupported("samples per pixel must be 1 or 3"));
    }
    let bits = uint(tags::BITS_ALLOCATED).unwrap_or(0);
    if !matches!(bits, 8 | 16 | 32) {
        return Err(unsupported("bits allocated must be 8, 16 or 32"));
    }
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(unsupported("it has no pixel data"));
    }
    let modality = obj
        .get(tags::MODALITY)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| s.len() <= 16 && s.chars().all(|c| c.is_ascii_alphanumeric()));

    let pixels = obj
        .decode_pixel_data()
        .map_err(|e| damaged(dicom_reason(&e.to_string())))?;
    let (w, h) = (pixels.columns() as usize, pixels.rows() as usize);
    if (w as u64, h as u64) != (cols, rows) {
        return Err(damaged("the decoded size differs from the declared one"));
    }
    let n = w * h;
    let photometric = pixels.photometric_interpretation().clone();
    let (rgb, windowing) = match photometric {
        PhotometricInterpretation::Rgb if pixels.samples_per_pixel() == 3 => {
            if pixels.bits_allocated() != 8 {
                return Err(unsupported("colour images must have 8 bits per sample"));
            }
            let v: Vec<u8> = pixels.to_vec_frame(0).map_err(damaged)?;
            if v.len() != n * 3 {
                return Err(damaged("pixel data shorter than the image"));
            }
            (v, Windowing::Color)
        }
        PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2
            if pixels.samples_per_pixel() == 1 =>
        {
            // Modality LUT applied (rescale slope/intercept): HU for CT.
            let values: Vec<f32> = pixels.to_vec_frame(0).map_err(damaged)?;
            if values.len() != n {
                return Err(damaged("pixel data shorter than the image"));
            }
            if modality.as_deref() == Some("CT") {
                (ct_recipe(&values), Windowing::CtRecipe)
            } else {
                let stored = pixels
                    .window()
                    .ok()
                    .flatten()
                    .and_then(|w| w.first().copied())
                    .filter(|w| w.width.is_finite() && w.center.is_finite() && w.width >= 1.0);
                let invert = photometric == PhotometricInterpretation::Monochrome1;
                match stored {
                    Some(win) => (
                        grey_to_rgb(&voi_linear(&values, win.center, win.width), invert),
                        Windowing::Stored {
                            center: win.center,
                            width: win.width,
                        },
                    ),
                    None => (grey_to_rgb(&min_max(&values), invert), Windowing::MinMax),
                }
            }
        }
        _ => {
            return Err(unsupported(
                "only MONOCHROME1, MONOCHROME2 and RGB images are read",
            ));
        }
    };
    Ok(Decoded {
        image: RgbImage {
            width: w,
            height: h,
            pixels: rgb,
        },
        format: ImageFormat::Dicom,
        windowing,
        modality,
    })
}

/// Walks every element header of the file (meta group, then the data set,
/// into sequences, items and encapsulated fragments) and refuses the file
/// if a defined length runs past its end.
///
/// Why: dicom-rs allocates each value's declared length before reading it,
/// so a 7 KB file declaring a 4 GB element made it allocate (and zero)
/// gigabytes (`tests/image_fuzz.rs` found it). After this check every
/// allocation the parser makes is bounded by the file size. Big-endian and
/// deflated transfer syntaxes (retired / rare, and a deflate stream could
/// expand without bound) are refused here too.
fn check_lengths(body: &[u8]) -> Result<(), ImageError> {
    // VRs with a 2-byte length in explicit VR; every other (OB, SQ, UN, …,
    // and any unknown VR, read as UN) has 2 reserved bytes and a 4-byte length.
    const SHORT_LENGTH_VRS: [&[u8; 2]; 21] = [
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    ];
    let short = || damaged("an element header runs past the end of the file");
    let u16_at = |p: usize| -> Result<u32, ImageError> {
        let b = body.get(p..p + 2).ok_or_else(short)?;
        Ok(u32::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |p: usize| -> Result<u32, ImageError> {
        let b = body.get(p..p + 4).ok_or_else(short)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if body.get(..4) != Some(b"DICM") {
        return Err(damaged("the DICM marker is missing"));
    }
    // (header size, value length, value offset) of the element at `p`.
    let element = |p: usize, explicit: bool| -> Result<(u32, u32, usize), ImageError> {
        let group = u16_at(p)?;
        if group == 0xFFFE || !explicit {
            // Items and delimiters, or implicit VR: tag + 4-byte length.
            return Ok((group, u32_at(p + 4)?, p + 8));
        }
        let vr = body.get(p + 4..p + 6).ok_or_else(short)?;
        if SHORT_LENGTH_VRS.iter().any(|v| v[..] == *vr) {
            Ok((group, u16_at(p + 6)?, p + 8))
        } else {
            Ok((group, u32_at(p + 8)?, p + 12))
        }
    };
    let mut p = 4;
    let mut syntax: Option<String> = None;
    // File meta group (0002,xxxx): always explicit VR little endian.
    while p + 2 <= body.len() && u16_at(p)? == 0x0002 {
        let elem = u16_at(p + 2)?;
        let (_, len, value) = element(p, true)?;
        let end = value
            .checked_add(len as usize)
            .filter(|e| *e <= body.len())
            .ok_or_else(|| damaged("an element's length runs past the end of the file"))?;
        if elem == 0x0010 {
            let uid = String::from_utf8_lossy(&body[value..end]);
            syntax = Some(uid.trim_end_matches(['\0', ' ']).to_owned());
        }
        p = end;
    }
    let explicit = match syntax.as_deref() {
        Some("1.2.840.10008.1.2") => false,
        Some("1.2.840.10008.1.2.2") => {
            return Err(unsupported("big-endian transfer syntax (retired)"));
        }
        Some("1.2.840.10008.1.2.1.99") => {
            return Err(unsupported(
                "deflated transfer syntax; send it uncompressed or JPEG/RLE",
            ));
        }
        Some(_) => true,
        None => return Err(damaged("the file meta group names no transfer syntax")),
    };
    while p < body.len() {
        let (_, len, value) = element(p, explicit)?;
        if len == u32::MAX {
            // Undefined length (a sequence, an item or encapsulated pixel
            // data): its contents are elements or items; walk into them.
            p = value;
            continue;
        }
        p = value
            .checked_add(len as usize)
            .filter(|e| *e <= body.len())
            .ok_or_else(|| damaged("an element's length runs past the end of the file"))?;
    }
    Ok(())
}

/// The first sentence of a dicom-rs error, cut short: the parsers' messages
/// name tags and lengths, but keep them brief.
fn dicom_reason(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("");
    first.chars().take(160).collect()
}

/// `np.round(clip(v, lo, hi) − lo) / (hi − lo) · 255)` in f32, as the notebook.
fn window_u8(v: f32, lo: f32, hi: f32) -> u8 {
    let x = (v.clamp(lo, hi) - lo) / (hi - lo) * 255.0;
    x.round_ties_even().clamp(0.0, 255.0) as u8
}

/// The CT recipe: one Hounsfield window per channel.
pub fn ct_recipe(hu: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hu.len() * 3);
    for &v in hu {
        for (lo, hi) in CT_WINDOWS {
            out.push(window_u8(v, lo, hi));
        }
    }
    out
}

/// DICOM linear VOI function (PS3.3 C.11.2.1.2.1) onto 0..255, in f64.
pub fn voi_linear(values: &[f32], center: f64, width: f64) -> Vec<u8> {
    let (c, w) = (center - 0.5, width - 1.0);
    values
        .iter()
        .map(|&v| {
            let x = f64::from(v);
            if x <= c - w / 2.0 {
                0
            } else if x > c + w / 2.0 {
                255
            } else {
                (((x - c) / w + 0.5) * 255.0)
                    .round_ties_even()
                    .clamp(0.0, 255.0) as u8
            }
        })
        .collect()
}

/// The slice's own range onto 0..255 (constant slices are black).
fn min_max(values: &[f32]) -> Vec<u8> {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    // No finite value leaves (∞, −∞); a constant slice has hi == lo.
    if hi <= lo {
        return vec![0; values.len()];
    }
    values.iter().map(|&v| window_u8(v, lo, hi)).collect()
}

fn grey_to_rgb(grey: &[u8], invert: bool) -> Vec<u8> {
    grey.iter()
        .flat_map(|&g| {
            let g = if invert { 255 - g } else { g };
            [g, g, g]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_windows_clip_and_scale_like_the_notebook() {
        // −1024 HU is black in every window, 1024 white in all but… all.
        assert_eq!(ct_recipe(&[-1024.0]), vec![0, 0, 0]);
        assert_eq!(ct_recipe(&[3000.0]), vec![255, 255, 255]);
        // 40 HU: R (1064/2048·255 = 132.48 → 132), G (175/350·255 = 127.5 → 128 half-even),
        // B (40/80·255 = 127.5 → 128).
        assert_eq!(ct_recipe(&[40.0]), vec![132, 128, 128]);
    }

    #[test]
    fn voi_linear_follows_the_standard() {
        // Centre 100, width 201: 0 at or below −0.5, 255 above 199.5.
        let v = voi_linear(&[-1.0, 0.0, 99.5, 200.0], 100.0, 201.0);
        assert_eq!(v[0], 0);
        assert_eq!(v[3], 255);
        assert_eq!(v[2], 128); // ((99.5 − 99.5)/200 + 0.5)·255 = 127.5 → 128
    }
}
