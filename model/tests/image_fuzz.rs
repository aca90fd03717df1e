//! Hostile image files: mutated and truncated copies of the real PNG, JPEG
//! and DICOM fixtures, and crafted headers that declare huge images, must
//! come back from `image::decode` as a value (usually an error) — never a
//! panic, never an allocation of the declared size.
//!
//! A property test with a fixed seed (reproducible; `IMAGE_FUZZ_CASES`
//! raises the number of cases per file, default 80). Each case applies one
//! to four mutations: flipped bytes, random bytes, a cut, a duplicated or
//! deleted span, an overwritten 16/32-bit field. A panic inside a codec is
//! caught by `decode` and becomes an error; the hook below records where
//! each panic happened, fails the test for any panic in this crate's own
//! code, and logs the third-party sites (dicom-rs's RLE decoder indexes past
//! a short segment on truncated files, for one).

mod support;

use std::sync::Mutex;

use medgemma_model::image::{self, ImageError, Limits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::fixture;

/// Panic locations seen, with the thread (each test runs on its own).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("").to_owned();
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            // A contained codec panic is only recorded (printing its
            // backtrace for each of many cases is slow); any other is shown.
            if !at.contains("/registry/src/") {
                default(info);
            }
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((thread, at));
        }));
    });
}

/// Panic sites recorded on this thread.
fn panics_here() -> Vec<String> {
    let me = std::thread::current().name().unwrap_or("").to_owned();
    PANICS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(t, _)| *t == me)
        .map(|(_, at)| at.clone())
        .collect()
}

/// A panic in a third-party codec (crates.io source) is a codec bug that
/// `decode` must turn into an error; one in this crate's code is ours.
fn check_panics(before: usize, result: &Result<image::Decoded, ImageError>, what: &str) {
    for at in &panics_here()[before..] {
        assert!(
            at.contains("/registry/src/"),
            "{what}: panic in our own code at {at}"
        );
        assert!(
            matches!(result, Err(ImageError::Decode { .. })),
            "{what}: a codec panic ({at}) must come back as a decode error"
        );
    }
}

/// Distinct third-party panic sites met on this thread (codec bugs the
/// guard in `decode` contained), for the log.
fn report_codec_panics(test: &str) {
    let mut sites = panics_here();
    sites.sort();
    sites.dedup();
    for s in sites {
        eprintln!("{test}: codec panic contained by decode(): {s}");
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (dir, files) in [
        (
            "vision_images",
            &[
                "rgb_300x220.png",
                "rgba_64x40.png",
                "grey_97x141.png",
                "photo_420_257x511.jpg",
                "photo_444_640x480.jpg",
            ][..],
        ),
        (
            "vision_dicom",
            &[
                "ct_rescaled.dcm",
                "ct_rle.dcm",
                "mr_window.dcm",
                "cr_monochrome1.dcm",
                "rgb.dcm",
            ][..],
        ),
    ] {
        for f in files {
            let bytes = std::fs::read(fixture(dir).join(f)).unwrap();
            out.push((f.to_string(), bytes));
        }
    }
    out
}

fn mutate(rng: &mut StdRng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        // Mutations near the header find parser bugs faster: half of them
        // land in the first 512 bytes.
        let at = if rng.random_bool(0.5) {
            rng.random_range(0..n.min(512))
        } else {
            rng.random_range(0..n)
        };
        match rng.random_range(0..6) {
            0 => b[at] ^= 1 << rng.random_range(0..8),
            1 => {
                for x in b.iter_mut().skip(at).take(rng.random_range(1..16)) {
                    *x = rng.random();
                }
            }
            2 => b.truncate(at),
            3 => {
                let len = rng.random_range(1..64).min(n - at);
                let span = b[at..at + len].to_vec();
                let to = rng.random_range(0..=b.len());
                b.splice(to..to, span);
            }
            4 => {
                let len = rng.random_range(1..64).min(n - at);
                b.drain(at..at + len);
            }
            _ => {
                let v: u32 = match rng.random_range(0..3) {
                    0 => u32::MAX,
                    1 => 0,
                    _ => rng.random(),
                };
                let w = if rng.random_bool(0.5) { 2 } else { 4 };
                for (i, x) in b.iter_mut().skip(at).take(w).enumerate() {
                    *x = (v >> (8 * i)) as u8;
                }
            }
        }
    }
    b
}

#[test]
fn mutated_files_never_panic() {
    count_panics();
    let cases: usize = std::env::var("IMAGE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    // Tight limits so that a header claiming a large image is refused
    // before decoding, as on the appliance (no multi-GB allocations here).
    let limits = Limits {
        max_bytes: 4 << 20,
        max_side: 2048,
        max_pixels: 1_000_000,
    };
    let mut rng = StdRng::seed_from_u64(0x1a6e_f022);
    let (mut ok, mut err) = (0usize, 0usize);
    for (name, seed) in seeds() {
        assert!(
            image::decode(&seed, &limits).is_ok(),
            "{name} must decode unmutated"
        );
        for case in 0..cases {
            let m = mutate(&mut rng, &seed);
            let before = panics_here().len();
            let r = image::decode(&m, &limits);
            match &r {
                Ok(d) => {
                    ok += 1;
                    assert_eq!(d.image.pixels.len(), d.image.width * d.image.height * 3);
                    assert!(d.image.width as u64 * d.image.height as u64 <= limits.max_pixels);
                }
                Err(_) => err += 1,
            }
            check_panics(before, &r, &format!("{name} case {case}"));
        }
    }
    eprintln!("mutated files: {ok} decoded, {err} refused");
    report_codec_panics("mutated");
    assert!(err > 0 && ok > 0);
}

/// CRC-32 (PNG's chunk checksum), bitwise.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn a_png_declaring_a_huge_image_is_refused_by_its_header() {
    let mut png = std::fs::read(fixture("vision_images").join("rgb_300x220.png")).unwrap();
    // IHDR data at bytes 16..29, its CRC at 29..33.
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    match image::decode(&png, &Limits::default()) {
        Err(ImageError::TooLarge {
            width: 100_000,
            height: 100_000,
            ..
        }) => {}
        other => panic!("expected TooLarge from the header, got {other:?}"),
    }
}

#[test]
fn a_dicom_declaring_a_huge_image_is_refused_before_its_pixels() {
    let mut dcm = std::fs::read(fixture("vision_dicom").join("ct_rescaled.dcm")).unwrap();
    // Explicit VR little endian: (0028,0010) Rows and (0028,0011) Columns, US, length 2.
    for tag in [[0x28u8, 0x00, 0x10, 0x00], [0x28, 0x00, 0x11, 0x00]] {
        let at = dcm
            .windows(6)
            .position(|w| w[..4] == tag && &w[4..6] == b"US")
            .expect("tag present");
        dcm[at + 8..at + 10].copy_from_slice(&0xFFFFu16.to_le_bytes());
    }
    match image::decode(&dcm, &Limits::default()) {
        Err(ImageError::TooLarge {
            width: 65_535,
            height: 65_535,
            ..
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn truncated_files_are_errors_at_every_length() {
    count_panics();
    for (name, seed) in seeds() {
        let step = (seed.len() / 97).max(1);
        for cut in (0..seed.len()).step_by(step) {
            let before = panics_here().len();
            let r = image::decode(&seed[..cut], &Limits::default());
            check_panics(before, &r, &format!("{name} cut at {cut}"));
            // A PNG or JPEG cut short may still decode partially in some
            // codecs; what matters is a value, never a panic.
            if let Ok(d) = r {
                assert_eq!(d.image.pixels.len(), d.image.width * d.image.height * 3);
            }
        }
    }
    report_codec_panics("truncated");
}

#[test]
fn a_dicom_element_longer_than_the_file_is_refused_before_parsing() {
    // Regression: dicom-rs allocates an element's declared length before
    // reading it; a 7 KB file declaring a ~4 GB pixel data element made it
    // allocate gigabytes. Now the length walk refuses the file first.
    let mut dcm = std::fs::read(fixture("vision_dicom").join("ct_rescaled.dcm")).unwrap();
    let at = dcm
        .windows(6)
        .rposition(|w| w[..4] == [0xE0, 0x7F, 0x10, 0x00] && &w[4..6] == b"OW")
        .expect("pixel data element");
    dcm[at + 8..at + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    match image::decode(&dcm, &Limits::default()) {
        Err(ImageError::Decode { why, .. }) => assert!(why.contains("past the end"), "{why}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}
