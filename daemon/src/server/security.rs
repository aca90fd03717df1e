//! Web safety for a UI on loopback: any web page the clinician opens can make
//! the browser send requests to `http://localhost:6006`, so the daemon must
//! tell its own page apart from everyone else's.
//!
//! - **Host allow-list** (against DNS rebinding: `evil.example` resolving to
//!   127.0.0.1 makes the browser send `Host: evil.example:6006`): only
//!   `localhost`, `127.0.0.1` and `[::1]` on `server.listen_port`, plus the
//!   configured `server.allowed_hosts`. Anything else gets 421.
//! - **Origin check** on every state-changing request (POST, DELETE, ...).
//!   Browsers send `Origin` on every cross-origin request and on every
//!   same-origin POST/DELETE, so a request with an `Origin` must be
//!   same-origin (`http://` + its own allowed `Host`). A request without
//!   `Origin` cannot come from a modern browser's fetch or form; it is
//!   accepted only if it also carries no cookie, i.e. it is a program such as
//!   the OpenAI client or curl that holds no browser credentials. A request
//!   with our cookie but no `Origin` is refused. `Sec-Fetch-Site`, when
//!   present, must be `same-origin` or `none`. Refusals get 403.
//! - **Headers on every response**: a strict Content-Security-Policy (no
//!   inline script, nothing from elsewhere, no framing), `nosniff`, no
//!   referrer, same-origin opener and resource policies.
//! - **Client-id cookie** (`SameSite=Strict; HttpOnly; Path=/`): a random id
//!   that only attributes conversations to a browser (and, later, audit
//!   records); it is no credential for anything else.
//!
//! Owns: these checks and headers. Must never: relax a check for convenience
//! (a development setup adds its host name to `server.allowed_hosts`).

use hyper::header::{COOKIE, HOST, HeaderName, HeaderValue, ORIGIN, SET_COOKIE};
use hyper::{HeaderMap, Method, Request, StatusCode};

use super::conversations::{is_id, random_id};
use super::http::ApiError;

/// The Content-Security-Policy of every response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The client-id cookie's name.
pub const CLIENT_COOKIE: &str = "mgd_client";

/// Which `Host` values are this server.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    port: u16,
    names: Vec<String>,
}

impl HostPolicy {
    /// Loopback names plus `extra` (lower-case bare names) on `port`.
    pub fn new(port: u16, extra: &[String]) -> Self {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        names.extend(extra.iter().cloned());
        Self { port, names }
    }

    /// Whether `host` (a `Host` header value) names this server.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = split_host_port(&host);
        let port_ok = match port {
            Some(p) => p.parse::<u16>().ok() == Some(self.port),
            // No port means the scheme's default, 80 for http.
            None => self.port == 80,
        };
        port_ok && self.names.iter().any(|n| n == name)
    }
}

/// Splits `name[:port]`, keeping IPv6 brackets on the name.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        match host.find(']') {
            Some(end) => {
                let (name, rest) = host.split_at(end + 1);
                (name, rest.strip_prefix(':'))
            }
            None => (host, None),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    }
}

/// Checks `Host` (and an absolute-form request target); returns the host.
pub fn check_host<B>(req: &Request<B>, policy: &HostPolicy) -> Result<String, ApiError> {
    let misdirected = || {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "host_not_allowed",
            format!(
                "This service answers only at http://localhost:{}/ or a host name its administrator configured; open that address.",
                policy.port
            ),
        )
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request("The request has no Host header; use an HTTP/1.1 client.")
        })?;
    if !policy.allows(host) {
        return Err(misdirected());
    }
    if let Some(authority) = req.uri().authority()
        && !authority.as_str().eq_ignore_ascii_case(host)
    {
        return Err(misdirected());
    }
    Ok(host.to_ascii_lowercase())
}

/// Whether `method` changes state and so needs the Origin check.
pub fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The Origin rule for state-changing requests (see the module docs).
pub fn check_origin(headers: &HeaderMap, host: &str) -> Result<(), ApiError> {
    let forbidden =
        |message: &str| ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", message);
    const OTHER_SITE: &str = "Requests from other web sites are refused; open the assistant's own page and use it there.";
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(forbidden(OTHER_SITE));
    }
    match headers.get(ORIGIN) {
        Some(origin) => {
            let expected = format!("http://{host}");
            if origin
                .to_str()
                .is_ok_and(|o| o.eq_ignore_ascii_case(&expected))
            {
                Ok(())
            } else {
                Err(forbidden(OTHER_SITE))
            }
        }
        None if headers.contains_key(COOKIE) => Err(forbidden(
            "A browser request without an Origin header is refused; reload the assistant's page and try again.",
        )),
        None => Ok(()),
    }
}

/// The client id from the `mgd_client` cookie, if it is well formed.
pub fn client_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == CLIENT_COOKIE && is_id(value))
        .map(|(_, value)| value.to_owned())
}

/// A `Set-Cookie` value for a new client id.
pub fn new_client_cookie() -> Option<HeaderValue> {
    let id = random_id().ok()?;
    HeaderValue::from_str(&format!(
        "{CLIENT_COOKIE}={id}; SameSite=Strict; HttpOnly; Path=/"
    ))
    .ok()
}

/// Adds the security headers every response carries.
pub fn apply_headers(headers: &mut HeaderMap) {
    const FIXED: &[(&str, &str)] = &[
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ),
    ];
    for (name, value) in FIXED {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

/// Adds a client-id cookie to `headers` unless the request already had one.
pub fn ensure_client_cookie(request_headers: &HeaderMap, headers: &mut HeaderMap) {
    if client_id(request_headers).is_none()
        && let Some(cookie) = new_client_cookie()
    {
        headers.append(SET_COOKIE, cookie);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_allow_list() {
        let p = HostPolicy::new(6006, &["ward3.example".to_owned()]);
        for ok in [
            "localhost:6006",
            "127.0.0.1:6006",
            "[::1]:6006",
            "LOCALHOST:6006",
            "ward3.example:6006",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in [
            "localhost",
            "localhost:80",
            "evil.example:6006",
            "127.0.0.1:6007",
            "[::1]",
            "localhost:6006:1",
            "",
        ] {
            assert!(!p.allows(bad), "{bad}");
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origin_rule() {
        let host = "localhost:6006";
        assert!(check_origin(&headers(&[("origin", "http://localhost:6006")]), host).is_ok());
        assert!(
            check_origin(&headers(&[]), host).is_ok(),
            "programs without cookies"
        );
        assert!(check_origin(&headers(&[("origin", "http://evil.example")]), host).is_err());
        assert!(check_origin(&headers(&[("origin", "null")]), host).is_err());
        assert!(check_origin(&headers(&[("cookie", "mgd_client=x")]), host).is_err());
        assert!(
            check_origin(
                &headers(&[
                    ("origin", "http://localhost:6006"),
                    ("sec-fetch-site", "cross-site")
                ]),
                host
            )
            .is_err()
        );
    }

    #[test]
    fn client_cookie_is_parsed_only_when_well_formed() {
        let id = random_id().unwrap();
        let v: &'static str = Box::leak(format!("a=b; {CLIENT_COOKIE}={id}").into_boxed_str());
        assert_eq!(client_id(&headers(&[("cookie", v)])), Some(id));
        assert_eq!(client_id(&headers(&[("cookie", "mgd_client=../x")])), None);
    }
}
