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
//!   same-origin (`http://` + its own allowed `Host`), or one of
//!   `server.allowed_origins` (a TLS reverse proxy in front of the UI, whose
//!   host is then accepted in `Host` too). A request without
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

/// Which `Host` values are this server, and which origins are its pages.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    port: u16,
    names: Vec<String>,
    /// `server.allowed_origins`: (origin, host name, port).
    origins: Vec<(String, String, u16)>,
}

impl HostPolicy {
    /// Loopback names plus `extra` (lower-case bare names) on `port`, and
    /// the reverse proxies' `origins` (lower-case `scheme://host[:port]`).
    pub fn new(port: u16, extra: &[String], origins: &[String]) -> Self {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        names.extend(extra.iter().cloned());
        let origins = origins
            .iter()
            .filter_map(|o| {
                medgemma_protocol::config::split_origin(o)
                    .map(|(_, host, port)| (o.clone(), host.to_owned(), port))
            })
            .collect();
        Self {
            port,
            names,
            origins,
        }
    }

    /// Whether `host` (a `Host` header value) names this server: a
    /// loopback or allowed name on `server.listen_port`, or the host of an
    /// allowed origin (with its port, or none).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = split_host_port(&host);
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) => Some(p),
                Err(_) => return false,
            },
            None => None,
        };
        let proxied = self
            .origins
            .iter()
            .any(|(_, h, p)| h == name && port.is_none_or(|port| port == *p));
        self.direct(&host) || proxied
    }

    /// Whether `host` is a loopback or allowed name on the listen port
    /// (reached through the loopback proxy, over plain http).
    fn direct(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let (name, port) = split_host_port(&host);
        // No port means the scheme's default, 80 for http.
        let port = match port {
            Some(p) => p.parse::<u16>().ok(),
            None => Some(80),
        };
        port == Some(self.port) && self.names.iter().any(|n| n == name)
    }

    /// Whether `origin` is an allowed reverse proxy's origin.
    fn allows_origin(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|(o, _, _)| *o == origin)
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
pub fn check_origin(headers: &HeaderMap, host: &str, policy: &HostPolicy) -> Result<(), ApiError> {
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
            if origin.to_str().is_ok_and(|o| {
                (o.eq_ignore_ascii_case(&expected) && policy.direct(host))
                    || policy.allows_origin(o)
            }) {
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
        let p = HostPolicy::new(
            6006,
            &["ward3.example".to_owned()],
            &["https://medgemma.hospital.example".to_owned()],
        );
        for ok in [
            "localhost:6006",
            "127.0.0.1:6006",
            "[::1]:6006",
            "LOCALHOST:6006",
            "ward3.example:6006",
            "medgemma.hospital.example",
            "medgemma.hospital.example:443",
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
            "medgemma.hospital.example:6006",
            "evil.hospital.example",
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
        let p = HostPolicy::new(6006, &[], &["https://medgemma.hospital.example".to_owned()]);
        let check =
            |h: &[(&'static str, &'static str)], host: &str| check_origin(&headers(h), host, &p);
        assert!(check(&[("origin", "http://localhost:6006")], host).is_ok());
        assert!(check(&[], host).is_ok(), "programs without cookies");
        assert!(check(&[("origin", "http://evil.example")], host).is_err());
        assert!(check(&[("origin", "null")], host).is_err());
        assert!(check(&[("cookie", "mgd_client=x")], host).is_err());
        assert!(
            check(
                &[
                    ("origin", "http://localhost:6006"),
                    ("sec-fetch-site", "cross-site")
                ],
                host
            )
            .is_err()
        );
        // Behind the hospital's TLS proxy.
        let proxied = "medgemma.hospital.example";
        assert!(check(&[("origin", "https://medgemma.hospital.example")], proxied).is_ok());
        assert!(check(&[("origin", "http://medgemma.hospital.example")], proxied).is_err());
        assert!(check(&[("origin", "https://evil.example")], proxied).is_err());
    }

    #[test]
    fn client_cookie_is_parsed_only_when_well_formed() {
        let id = random_id().unwrap();
        let v: &'static str = Box::leak(format!("a=b; {CLIENT_COOKIE}={id}").into_boxed_str());
        assert_eq!(client_id(&headers(&[("cookie", v)])), Some(id));
        assert_eq!(client_id(&headers(&[("cookie", "mgd_client=../x")])), None);
    }
}
