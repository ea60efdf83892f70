//! Bearer tokens: read from `[serve] tokens_file` and `DRIFTLESS_API_TOKENS`, kept only as
//! BLAKE3 digests, and compared in constant time against every known token (so neither the
//! comparison nor the position of a match leaks through timing). A token written `ro:TOKEN`
//! may read but not create or approve runs.

use std::path::Path;

use anyhow::{Context, Result};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Read runs, reports, status and metrics.
    Read,
    /// Also create and approve runs.
    Write,
}

/// The tokens the API accepts.
#[derive(Debug, Default)]
pub struct Tokens {
    known: Vec<([u8; 32], Access)>,
}

/// The environment variable of extra tokens, comma-separated.
pub const TOKENS_ENV: &str = "DRIFTLESS_API_TOKENS";

impl Tokens {
    /// The tokens of `file` (one a line, `#` comments) and of `env` (comma-separated).
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Tokens> {
        let mut tokens = Tokens::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("[serve] tokens_file {}: cannot read it", path.display()))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .for_each(|l| tokens.add(l));
        }
        for t in env
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            tokens.add(t);
        }
        Ok(tokens)
    }

    fn add(&mut self, entry: &str) {
        let (token, access) = match entry.strip_prefix("ro:") {
            Some(t) => (t, Access::Read),
            None => (entry, Access::Write),
        };
        self.known.push((*blake3::hash(token.as_bytes()).as_bytes(), access));
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// What `token` may do; `None` for an unknown token. Every known token is compared.
    fn access(&self, token: &str) -> Option<Access> {
        let presented = blake3::hash(token.as_bytes());
        let mut found = None;
        for (digest, access) in &self.known {
            if bool::from(digest.ct_eq(presented.as_bytes())) {
                found = found.max(Some(*access));
            }
        }
        found
    }

    /// Checks the request's `Authorization: Bearer` header for `need`: 401 without a known
    /// token, 403 for a read-only token on a write.
    pub fn require(&self, headers: &HeaderMap, need: Access) -> Result<(), ApiError> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        self.check(token, need)
    }

    /// Whether the status page may be shown: a bearer token, HTTP Basic credentials whose
    /// password is a token (`http://driftless:TOKEN@host/`), or the login form's cookie.
    /// Pages only read, so they take no other kind of credential for writes.
    pub fn page_access(&self, headers: &HeaderMap) -> bool {
        if self.require(headers, Access::Read).is_ok() {
            return true;
        }
        let basic = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64_decode(b.trim()))
            .and_then(|pair| pair.split_once(':').map(|(_, token)| token.to_owned()));
        let cookie = headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(COOKIE_PREFIX).and_then(unhex));
        [basic, cookie]
            .into_iter()
            .flatten()
            .any(|t| self.check(Some(&t), Access::Read).is_ok())
    }

    /// The `Set-Cookie` value that logs a browser in with `token`, when `token` is known.
    pub fn login_cookie(&self, token: &str, secure: bool) -> Option<String> {
        self.access(token)?;
        let hex = super::hex::encode(token.as_bytes());
        let secure = if secure { "; Secure" } else { "" };
        Some(format!(
            "{COOKIE_PREFIX}{hex}; Path=/; HttpOnly; SameSite=Strict{secure}"
        ))
    }

    fn check(&self, token: Option<&str>, need: Access) -> Result<(), ApiError> {
        let Some(access) = token.and_then(|t| self.access(t)) else {
            return Err(ApiError::unauthorized());
        };
        if access < need {
            return Err(ApiError::forbidden(
                "this token is read-only; creating and approving runs needs a read-write token",
            ));
        }
        Ok(())
    }
}

/// The login cookie, `driftless_token=HEX`: the token hex-encoded, so any token is a valid
/// cookie value.
const COOKIE_PREFIX: &str = "driftless_token=";

fn unhex(text: &str) -> Option<String> {
    String::from_utf8(super::hex::decode(text)?).ok()
}

fn base64_decode(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn tokens_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# ops\nrw-one\n\nro:read-one\n").unwrap();
        let tokens = Tokens::load(Some(&file), Some("rw-two, ro:read-two")).unwrap();
        assert_eq!(tokens.len(), 4);
        for t in ["rw-one", "rw-two"] {
            assert!(tokens.require(&headers(t), Access::Write).is_ok(), "{t}");
        }
        for t in ["read-one", "read-two"] {
            assert!(tokens.require(&headers(t), Access::Read).is_ok(), "{t}");
            assert_eq!(
                tokens.require(&headers(t), Access::Write).unwrap_err().status.as_u16(),
                403
            );
        }
        assert_eq!(
            tokens
                .require(&headers("ro:read-one"), Access::Read)
                .unwrap_err()
                .status
                .as_u16(),
            401
        );
        assert_eq!(
            tokens
                .require(&HeaderMap::new(), Access::Read)
                .unwrap_err()
                .status
                .as_u16(),
            401
        );
    }

    #[test]
    fn pages_take_basic_credentials_and_the_login_cookie() {
        let tokens = Tokens::load(None, Some("ro:page-token")).unwrap();
        let mut basic = HeaderMap::new();
        basic.insert(AUTHORIZATION, "Basic ZHJpZnRsZXNzOnBhZ2UtdG9rZW4=".parse().unwrap());
        assert!(tokens.page_access(&basic));
        let cookie = tokens.login_cookie("page-token", false).unwrap();
        let mut jar = HeaderMap::new();
        let value = cookie.split(';').next().unwrap().to_owned();
        jar.insert(axum::http::header::COOKIE, format!("other=1; {value}").parse().unwrap());
        assert!(tokens.page_access(&jar));
        assert!(tokens.login_cookie("wrong", false).is_none());
        assert!(!tokens.page_access(&HeaderMap::new()));
    }

    #[test]
    fn no_tokens_refuses_everything() {
        let tokens = Tokens::load(None, None).unwrap();
        assert_eq!(
            tokens.require(&headers(""), Access::Read).unwrap_err().status.as_u16(),
            401
        );
    }

    #[test]
    fn an_unreadable_file_names_the_setting() {
        let e = Tokens::load(Some(Path::new("/nonexistent/tokens")), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("[serve] tokens_file /nonexistent/tokens"),
            "{e:#}"
        );
    }
}
