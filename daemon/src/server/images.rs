//! Images sent with a question, as `data:` URLs (the UI's `images` and the
//! OpenAI API's `image_url` parts): decoded (PNG, JPEG, single-frame DICOM)
//! within size limits and resized to the vision tower's input, in memory.
//!
//! Owns: the accepted forms and limits, and the digests that stand for the
//! images in the audit record. Must never: fetch a URL (there is no
//! network), write an image anywhere, or describe an image's content in an
//! error or the log (errors give sizes and formats only).

use std::sync::Arc;

use base64::Engine as _;
use hyper::StatusCode;
use medgemma_model::image::{self, Limits, RgbImage};
use ring::digest;

use super::http::ApiError;

/// Images one message may carry.
pub const MAX_IMAGES_PER_MESSAGE: usize = 4;
/// Images one conversation or API request may carry in all.
pub const MAX_IMAGES_PER_CONVERSATION: usize = 16;
/// Largest image file, in bytes (after base64).
pub const MAX_IMAGE_BYTES: usize = 20 << 20;

/// An image received with a request.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its pixels at the tower's input size.
    pub image: Arc<RgbImage>,
    /// SHA-256 of the file as sent (for the audit digest).
    pub sha256: [u8; 32],
}

fn invalid(index: usize, why: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "image_invalid",
        format!("Image {} cannot be used: {why}.", index + 1),
    )
}

/// Checks the count against the limits (`earlier`: images already in the
/// conversation).
pub fn check_count(new: usize, earlier: usize) -> Result<(), ApiError> {
    if new > MAX_IMAGES_PER_MESSAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_images",
            format!(
                "A message may carry at most {MAX_IMAGES_PER_MESSAGE} images; this one has {new}. Send fewer at a time."
            ),
        ));
    }
    if new + earlier > MAX_IMAGES_PER_CONVERSATION {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_images",
            format!(
                "A conversation may hold at most {MAX_IMAGES_PER_CONVERSATION} images; start a new conversation for more."
            ),
        ));
    }
    Ok(())
}

/// The refusal for images sent to a model that reads text only.
pub fn not_supported() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "images_not_supported",
        "The configured model reads text only; send the question without images. An administrator can configure MedGemma 1.5 4B IT's model directory, which reads images.",
    )
}

/// The bytes of a `data:` URL (`data:<type>;base64,<data>`); any other URL
/// is refused: this appliance never fetches anything.
fn data_url_bytes(url: &str, index: usize) -> Result<Vec<u8>, ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(invalid(
            index,
            "only data: URLs are accepted (this appliance has no network and never fetches an address); attach the file itself",
        ));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(invalid(index, "the data: URL has no comma before its data"));
    };
    if !meta.ends_with(";base64") {
        return Err(invalid(index, "the data: URL must be base64-encoded"));
    }
    // base64 is 4 characters for 3 bytes.
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "image_too_large",
            format!(
                "Image {} is larger than {} MiB; send a smaller export of it.",
                index + 1,
                MAX_IMAGE_BYTES >> 20
            ),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| invalid(index, "its base64 data is malformed"))
}

/// Decodes the image `index` of a request from its `data:` URL and resizes
/// it to `size × size` (the tower's input; the engine's preprocessing then
/// leaves it as it is).
pub fn decode(url: &str, index: usize, size: usize) -> Result<Received, ApiError> {
    let bytes = data_url_bytes(url, index)?;
    let limits = Limits {
        max_bytes: MAX_IMAGE_BYTES,
        ..Limits::default()
    };
    let decoded = image::decode(&bytes, &limits).map_err(|e| invalid(index, e))?;
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
    Ok(Received {
        image: Arc::new(image::resize_bilinear(&decoded.image, size, size)),
        sha256,
    })
}

/// Decodes every URL off the async workers (a large JPEG takes a while).
pub async fn decode_all(urls: Vec<String>, size: usize) -> Result<Vec<Received>, ApiError> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    tokio::task::spawn_blocking(move || {
        urls.iter()
            .enumerate()
            .map(|(i, u)| decode(u, i, size))
            .collect()
    })
    .await
    .map_err(|_| invalid(0, "decoding stopped unexpectedly"))?
}

/// What the audited input digest covers for the images: their SHA-256, in
/// order, after the text (U+001E separated, as the messages are).
pub fn digest_suffix(images: &[Received]) -> String {
    images
        .iter()
        .map(|r| {
            let hex: String = r.sha256.iter().map(|b| format!("{b:02x}")).collect();
            format!("\u{1e}image:sha256:{hex}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real image files of the vision fixtures.
    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/vision_images")
            .join(name);
        std::fs::read(p).expect("fixture image")
    }

    fn url(mime: &str, bytes: &[u8]) -> String {
        format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    #[test]
    fn a_png_and_a_jpeg_decode_to_the_tower_size_with_their_digest() {
        for (mime, name) in [
            ("image/png", "rgb_300x220.png"),
            ("image/jpeg", "photo_444_640x480.jpg"),
        ] {
            let bytes = fixture(name);
            let r = decode(&url(mime, &bytes), 0, 56).unwrap();
            assert_eq!((r.image.width, r.image.height), (56, 56), "{name}");
            let want = digest::digest(&digest::SHA256, &bytes);
            assert_eq!(&r.sha256[..], want.as_ref(), "{name}");
        }
    }

    #[test]
    fn resizing_to_the_same_size_changes_nothing() {
        // The engine resizes again to the same size: it must be the identity.
        let bytes = fixture("rgb_300x220.png");
        let r = decode(&url("image/png", &bytes), 0, 64).unwrap();
        let again = image::resize_bilinear(&r.image, 64, 64);
        assert!(again.pixels == r.image.pixels);
    }

    #[test]
    fn other_urls_and_bad_data_are_sentences_without_content() {
        let e = decode("https://example.org/x.png", 1, 56).unwrap_err();
        assert_eq!(e.code, "image_invalid");
        assert!(e.message.contains("Image 2") && e.message.contains("never fetches"));
        let e = decode("data:image/png,abc", 0, 56).unwrap_err();
        assert!(e.message.contains("base64"), "{}", e.message);
        let e = decode("data:image/png;base64,@@@@", 0, 56).unwrap_err();
        assert!(e.message.contains("malformed"), "{}", e.message);
        let text = b"Patient CANARY-img-7 has a rash";
        let e = decode(&url("image/png", text), 0, 56).unwrap_err();
        assert_eq!(e.code, "image_invalid");
        assert!(!e.message.contains("CANARY"), "{}", e.message);
        let big = "A".repeat((MAX_IMAGE_BYTES / 3 + 8) * 4);
        let e = decode(&format!("data:image/png;base64,{big}"), 0, 56).unwrap_err();
        assert_eq!(e.code, "image_too_large");
    }

    #[test]
    fn counts_are_limited_per_message_and_conversation() {
        assert!(check_count(MAX_IMAGES_PER_MESSAGE, 0).is_ok());
        assert_eq!(
            check_count(MAX_IMAGES_PER_MESSAGE + 1, 0).unwrap_err().code,
            "too_many_images"
        );
        assert_eq!(
            check_count(1, MAX_IMAGES_PER_CONVERSATION)
                .unwrap_err()
                .code,
            "too_many_images"
        );
    }
}
