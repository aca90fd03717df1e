//! Pillow's 8-bit bilinear resampling, reproduced bit for bit.
//!
//! The Hugging Face Gemma 3 image processor resizes with PIL
//! (`Image.resize(size, resample=BILINEAR)`, spec model.md §5.1), whose
//! bilinear filter is a triangle scaled by the reduction factor (so a
//! downscale averages every source pixel, an antialias), applied in two
//! separable passes on 8-bit values with fixed-point coefficients and a
//! rounding and clamping to 8 bits after each pass. This module follows
//! Pillow's `src/libImaging/Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`,
//! `ImagingResampleVertical_8bpc`, `ImagingResampleInner`) step for step,
//! so the pixels equal PIL's exactly (`tests/image_preprocess.rs`).
//!
//! Owns: resampling of an RGB buffer. Must never: allocate from sizes it
//! was not given by a caller that checked them (the decoder's limits).

use super::RgbImage;

/// Fixed-point precision of the 8-bit coefficients (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The bilinear (triangle) filter and its support of 1.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Per output pixel: the first source index, the number of taps, and the
/// fixed-point weights (`ksize` slots per pixel).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the full box
/// `[0, in_size)` (PIL's default when no box is given).
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    // Pillow passes the box as floats; sizes below 2^24 are exact.
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, slot) in k.iter_mut().enumerate().take(n) {
            let w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            *slot = w;
            ww += w;
        }
        for (x, slot) in k.iter().enumerate().take(n) {
            let w = if ww != 0.0 { slot / ww } else { *slot };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs {
        ksize,
        bounds,
        weights,
    }
}

/// `clip8`: the fixed-point sum back to 8 bits.
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes `src` to `width × height` exactly as PIL's `Image.resize` with
/// `Image.BILINEAR` does for an RGB image. Both sizes must be non-zero.
///
/// Pillow 13 runs the vertical pass first when the image shrinks more
/// vertically than horizontally (found by comparing its output with each
/// order of two one-axis resizes, which are exact: ties and upscales go
/// horizontal first); each pass rounds to 8 bits, so the order shows in the
/// last bit.
pub fn resize_bilinear(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (sw, sh) = (src.width, src.height);
    let vertical_first = sh > height && sh * width > sw * height && sw != width;
    if vertical_first {
        let tmp = resize_passes(src, sw, height);
        return resize_passes(&tmp, width, height);
    }
    resize_passes(src, width, height)
}

/// `ImagingResampleInner`: the horizontal pass (over the rows the vertical
/// pass reads), then the vertical pass; a pass whose size is unchanged is skipped.
fn resize_passes(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (sw, sh) = (src.width, src.height);
    if sw == width && sh == height {
        return src.clone();
    }
    let need_h = sw != width;
    let need_v = sh != height;
    let ch = coeffs(sw, width);
    let cv = coeffs(sh, height);
    // Rows the vertical pass reads (the horizontal pass computes only those).
    let first = cv.bounds.first().map_or(0, |b| b.0);
    let last = cv.bounds.last().map_or(0, |b| b.0 + b.1);

    let (tmp, tw, row0) = if need_h {
        let rows = last - first;
        let mut out = vec![0u8; width * rows * 3];
        for y in 0..rows {
            let line = &src.pixels[(y + first) * sw * 3..(y + first + 1) * sw * 3];
            for (xx, &(xmin, n)) in ch.bounds.iter().enumerate() {
                let k = &ch.weights[xx * ch.ksize..xx * ch.ksize + n];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, w) in k.iter().enumerate() {
                        ss += i64::from(line[(x + xmin) * 3 + c]) * i64::from(*w);
                    }
                    out[(y * width + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (out, width, first)
    } else {
        (src.pixels.clone(), sw, 0)
    };
    if !need_v {
        return RgbImage {
            width: tw,
            height: sh,
            pixels: tmp,
        };
    }
    let mut out = vec![0u8; tw * height * 3];
    for (yy, &(ymin, n)) in cv.bounds.iter().enumerate() {
        let k = &cv.weights[yy * cv.ksize..yy * cv.ksize + n];
        let ymin = ymin - row0;
        for xx in 0..tw {
            for c in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, w) in k.iter().enumerate() {
                    ss += i64::from(tmp[((y + ymin) * tw + xx) * 3 + c]) * i64::from(*w);
                }
                out[(yy * tw + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    RgbImage {
        width: tw,
        height,
        pixels: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant_through_any_resize() {
        let src = RgbImage {
            width: 37,
            height: 5,
            pixels: [10u8, 200, 255].repeat(37 * 5),
        };
        for (w, h) in [(896, 896), (3, 2), (37, 9), (1, 1)] {
            let out = resize_bilinear(&src, w, h);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.pixels.chunks(3).all(|p| p == [10, 200, 255]));
        }
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(1000, 896), (10, 896), (896, 896), (4000, 7)] {
            let c = coeffs(i, o);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let s: i64 = c.weights[xx * c.ksize..xx * c.ksize + n]
                    .iter()
                    .map(|w| i64::from(*w))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                    "{i}->{o} at {xx}"
                );
            }
        }
    }
}
