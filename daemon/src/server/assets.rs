//! The web UI, embedded in the binary at build time (`build.rs` lists the
//! files of `web/`): the appliance never fetches anything from a CDN or the
//! network, and a browser gets exactly the files this build was made with.
//!
//! Assets are revalidated on every load (`Cache-Control: no-cache` with a
//! content-hash `ETag`): file names carry no version, so a cached script must
//! never outlive an upgrade of the daemon it talks to.
//!
//! Owns: the asset table, content types. Must never: read files at run time.

use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_NONE_MATCH};
use hyper::{Response, StatusCode};

use super::http::{Body, empty, full};

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// URL path, e.g. `/app.js`.
    pub path: &'static str,
    /// Quoted content hash.
    pub etag: &'static str,
    /// The file.
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The asset at a URL path (`/` is `/index.html`).
pub fn find(path: &str) -> Option<&'static Asset> {
    let path = if path == "/" { "/index.html" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// The content type for a file name.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("webp") => "image/webp",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        Some("webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

/// The response for `asset` (304 when the browser's copy is current; no body for HEAD).
pub fn respond(asset: &Asset, request_headers: &HeaderMap, head: bool) -> Response<Body> {
    let fresh = request_headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    let mut resp = if fresh || head {
        Response::new(empty())
    } else {
        Response::new(full(asset.bytes))
    };
    if fresh {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.path)),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(ETAG, HeaderValue::from_static(asset.etag));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("/index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("/app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("/x"), "application/octet-stream");
    }

    #[test]
    fn every_embedded_asset_has_a_known_type() {
        for a in ASSETS {
            assert_ne!(
                content_type(a.path),
                "application/octet-stream",
                "{}",
                a.path
            );
        }
    }
}
