//! Who may read: the access token a server bound beyond loopback requires on every request
//! (API, files, events, the dashboard), how it is presented and how it is checked.
//!
//! A client presents the token as `Authorization: Bearer <token>`, or a browser opens
//! `/?token=<token>` once: the server answers with a cookie holding it and a redirect to the
//! same address without the token, so it stays out of the address bar, the history and every
//! link the page renders; `fetch` and `EventSource` then carry the cookie. (A page opened from
//! another site gets a page that moves on by itself instead of the redirect: see
//! `exchange_for_cookie`.) Tokens are compared by their BLAKE3 digests, whose equality is
//! constant-time, so timing reveals nothing of the token.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::error::ApiError;
use crate::static_app::html_escape;

/// Environment variable that gives the token (preferred to `--token`, which `ps` shows).
pub const TOKEN_ENV: &str = "DIFFIT_SERVER_TOKEN";
/// Query parameter a browser opens the dashboard with once.
pub const TOKEN_QUERY: &str = "token";
/// Random bytes in a generated token (256 bits).
const GENERATED_BYTES: usize = 32;
/// Shortest token accepted from the user.
pub const MIN_TOKEN_LEN: usize = 16;
/// Cookie name prefix; the port follows, as browsers share cookies across the ports of a host.
const COOKIE_PREFIX: &str = "diffit_token";

/// A secret clients must present. Its `Debug` form never shows it.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<str>,
    digest: blake3::Hash,
}

/// Why a given token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidToken {
    /// Too short to be a secret.
    #[error("an access token needs at least {MIN_TOKEN_LEN} characters (it has {0})")]
    TooShort(usize),
    /// A character that URLs, cookies or headers would need escaped.
    #[error("an access token may only hold letters, digits and `-._~` (found {0:?})")]
    BadCharacter(char),
}

/// The system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("generating an access token: {0}")]
pub struct TokenGenerationError(getrandom::Error);

impl AccessToken {
    /// A fresh token: 256 random bits from the OS, as 64 hex digits.
    pub fn generate() -> Result<Self, TokenGenerationError> {
        let mut bytes = [0u8; GENERATED_BYTES];
        getrandom::fill(&mut bytes).map_err(TokenGenerationError)?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self::from_checked(&hex))
    }

    fn from_checked(secret: &str) -> Self {
        Self {
            secret: secret.into(),
            digest: blake3::hash(secret.as_bytes()),
        }
    }

    /// The token itself, for the address printed at start; never log it.
    pub fn reveal(&self) -> &str {
        &self.secret
    }

    /// Whether `candidate` is this token, in time independent of where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        // `blake3::Hash`'s `==` is constant-time, and hashing first makes the lengths equal.
        blake3::hash(candidate.as_bytes()) == self.digest
    }
}

impl FromStr for AccessToken {
    type Err = InvalidToken;

    /// A user's token: at least `MIN_TOKEN_LEN` URL-unreserved characters, so it travels in a
    /// query, a cookie and a header as it is.
    fn from_str(text: &str) -> Result<Self, InvalidToken> {
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
        {
            return Err(InvalidToken::BadCharacter(bad));
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(InvalidToken::TooShort(text.len()));
        }
        Ok(Self::from_checked(text))
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// The token a server on `host` requires: the one given, else a generated one beyond
/// loopback, else none (loopback is open unless a token is given).
pub fn token_for(
    host: IpAddr,
    given: Option<AccessToken>,
) -> Result<Option<AccessToken>, TokenGenerationError> {
    match given {
        Some(token) => Ok(Some(token)),
        None if host.is_loopback() => Ok(None),
        None => AccessToken::generate().map(Some),
    }
}

/// Middleware: lets a request through only with the token (header or cookie); exchanges a
/// valid `?token=` for the cookie and a redirect; answers anything else with 401.
pub async fn require_token(
    State(token): State<AccessToken>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let cookie = cookie_name(request.headers(), request.uri().authority());
    let (from_query, rest_of_query) = split_token_query(request.uri().query());
    if let Some(candidate) = from_query {
        // An address carrying the token decides by itself (a stale link fails loudly).
        return if token.matches(candidate) {
            let elsewhere = from_another_site(request.headers());
            exchange_for_cookie(&token, &cookie, &path, &rest_of_query, elsewhere)
        } else {
            unauthorized(&path)
        };
    }
    let headers = request.headers();
    let presented = bearer(headers).is_some_and(|candidate| token.matches(candidate))
        || cookie_values(headers, &cookie).any(|candidate| token.matches(candidate));
    if presented {
        next.run(request).await
    } else {
        unauthorized(&path)
    }
}

/// `diffit_token_<port>` for the port the client addressed (`diffit_token` when it named none).
fn cookie_name(headers: &HeaderMap, authority: Option<&Authority>) -> String {
    let port = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|host| host.parse::<Authority>().ok())
        .as_ref()
        .or(authority)
        .and_then(Authority::port_u16);
    match port {
        Some(port) => format!("{COOKIE_PREFIX}_{port}"),
        None => COOKIE_PREFIX.to_string(),
    }
}

/// The `token` parameter's value (the first, if repeated) and the other parameters, in order.
fn split_token_query(query: Option<&str>) -> (Option<&str>, Vec<&str>) {
    let mut token = None;
    let mut rest = vec![];
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some((TOKEN_QUERY, value)) => {
                token.get_or_insert(value);
            }
            None if pair == TOKEN_QUERY => {
                token.get_or_insert("");
            }
            _ => rest.push(pair),
        }
    }
    (token, rest)
}

/// The token in an HttpOnly, same-site cookie and the way on to `path?rest`: a `303 See
/// Other`, or, for a page opened from another site, a page that moves on by itself. A browser
/// withholds a `SameSite=Strict` cookie from every request of a navigation another site
/// started, redirects included (and reloads of it); one this origin's page starts carries it.
fn exchange_for_cookie(
    token: &AccessToken,
    cookie: &str,
    path: &str,
    rest: &[&str],
    from_another_site: bool,
) -> Response {
    // `//host/...` (or `/\\host`, which browsers read alike) would leave this server: always
    // point at a path of this origin.
    let mut location = format!("/{}", path.trim_start_matches(['/', '\\']));
    if !rest.is_empty() {
        location.push('?');
        location.push_str(&rest.join("&"));
    }
    let set_cookie = format!(
        "{cookie}={}; HttpOnly; SameSite=Strict; Path=/",
        token.reveal()
    );
    let (Ok(location_value), Ok(set_cookie)) = (
        HeaderValue::from_str(&location),
        HeaderValue::from_str(&set_cookie),
    ) else {
        // Both come from a parsed URI and a checked token; refuse rather than guess.
        return unauthorized(path);
    };
    let mut response = if from_another_site {
        let target = html_escape(&location);
        let page = format!(
            "<!doctype html><meta charset=utf-8><title>diffit-server</title>\
             <meta http-equiv=refresh content=\"0; url={target}\">\
             <p><a href=\"{target}\">Continue to the dashboard</a></p>"
        );
        (StatusCode::OK, Html(page)).into_response()
    } else {
        let mut response = StatusCode::SEE_OTHER.into_response();
        response
            .headers_mut()
            .insert(header::LOCATION, location_value);
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, set_cookie);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Whether the browser says another site started this request (`Sec-Fetch-Site: cross-site`).
fn from_another_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() == b"cross-site")
}

/// `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Every value of cookie `name` in the request's `Cookie` headers.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// 401: the API's JSON error under `/api`, a short page for the dashboard's routes.
fn unauthorized(path: &str) -> Response {
    let mut response = if path == "/api" || path.starts_with("/api/") {
        ApiError::Unauthorized.into_response()
    } else {
        let page = format!(
            "<!doctype html><meta charset=utf-8><title>diffit-server: access token needed</title>\
             <h1>This server needs its access token</h1>\
             <p>Open the address <code>diffit-server</code> printed when it started \
             (<code>http://HOST:PORT/?{TOKEN_QUERY}=…</code>), or the dashboard with \
             <code>?{TOKEN_QUERY}=</code> and the token given by <code>--token</code> or \
             <code>{TOKEN_ENV}</code>.</p>"
        );
        (StatusCode::UNAUTHORIZED, Html(page)).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"diffit-server\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_open_unless_a_token_is_given() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let given: AccessToken = "a-token-of-16-chars".parse().unwrap();
        assert!(token_for(loopback, None).unwrap().is_none());
        assert!(token_for("::1".parse().unwrap(), None).unwrap().is_none());
        let kept = token_for(loopback, Some(given.clone())).unwrap().unwrap();
        assert!(kept.matches("a-token-of-16-chars"));
        let generated = token_for(any, None).unwrap().unwrap();
        let other = token_for(any, None).unwrap().unwrap();
        assert_eq!(generated.reveal().len(), 64);
        assert!(generated.reveal().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            generated.reveal(),
            other.reveal(),
            "fresh randomness each time"
        );
        assert!(token_for(any, Some(given))
            .unwrap()
            .unwrap()
            .matches("a-token-of-16-chars"));
    }

    #[test]
    fn tokens_match_exactly() {
        let token: AccessToken = "0123456789abcdef".parse().unwrap();
        assert!(token.matches("0123456789abcdef"));
        for wrong in [
            "",
            "0123456789abcdeF",
            "0123456789abcde",
            "0123456789abcdef0",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{token:?}"), "AccessToken(<redacted>)");
    }

    #[test]
    fn user_tokens_are_long_and_url_safe() {
        assert_eq!(
            "short".parse::<AccessToken>().unwrap_err(),
            InvalidToken::TooShort(5)
        );
        assert_eq!(
            "has;a;cookie;separator".parse::<AccessToken>().unwrap_err(),
            InvalidToken::BadCharacter(';')
        );
        assert!("Az09-._~Az09-._~".parse::<AccessToken>().is_ok());
    }

    #[test]
    fn the_token_parameter_is_split_from_the_others() {
        assert_eq!(split_token_query(None), (None, vec![]));
        assert_eq!(split_token_query(Some("token=abc")), (Some("abc"), vec![]));
        assert_eq!(
            split_token_query(Some("a=1&token=abc&b&token=def")),
            (Some("abc"), vec!["a=1", "b"])
        );
        assert_eq!(
            split_token_query(Some("tokens=1")),
            (None, vec!["tokens=1"])
        );
        assert_eq!(split_token_query(Some("token")), (Some(""), vec![]));
    }

    #[test]
    fn credentials_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::HOST, HeaderValue::from_static("example.org:8080"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; diffit_token_8080=t1"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("diffit_token_8080=t2"),
        );
        let name = cookie_name(&headers, None);
        assert_eq!(name, "diffit_token_8080");
        assert_eq!(
            cookie_values(&headers, &name).collect::<Vec<_>>(),
            ["t1", "t2"]
        );
        headers.insert(header::HOST, HeaderValue::from_static("example.org"));
        assert_eq!(cookie_name(&headers, None), "diffit_token");
    }
}
