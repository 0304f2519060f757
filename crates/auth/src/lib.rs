//! Bearer-token authentication: `authorization: Bearer <token>` metadata, compared in
//! constant time. The admin token guards every management RPC; health and reflection are
//! served without it.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BearerAuth {
    /// SHA-256 of the token: comparing digests in constant time hides the token's length too.
    expected: Arc<[u8; 32]>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth(..)")
    }
}

/// The token of an `Authorization: Bearer <token>` value, the scheme in any case (RFC 7235);
/// `None` for another scheme. The one reading of bearer tokens, for gRPC metadata and HTTP.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl BearerAuth {
    pub fn new(token: &str) -> Self {
        Self { expected: Arc::new(Sha256::digest(token.as_bytes()).into()) }
    }
}

impl BearerAuth {
    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        bool::from(digest.ct_eq(self.expected.as_ref()))
    }

    /// Whether `metadata` carries the token.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let presented = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <token>` metadata"))?;
        if self.matches(presented) { Ok(()) } else { Err(Status::unauthenticated("the bearer token is not valid")) }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// Metadata naming the person or system behind an admin call, for the audit trail.
pub const ACTOR_HEADER: &str = "x-tollgate-actor";

/// The actor a call names in [`ACTOR_HEADER`] (at most 100 printable characters), else
/// `admin`.
pub fn actor(metadata: &MetadataMap) -> String {
    metadata
        .get(ACTOR_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|name| !name.is_empty() && name.len() <= 100 && name.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or("admin")
        .to_owned()
}

/// Accepts any one of several tokens (the admin's or a service's, the gateway's or the admin's).
#[derive(Clone, Debug)]
pub struct AnyBearer(Vec<BearerAuth>);

impl AnyBearer {
    pub fn new(tokens: impl IntoIterator<Item = BearerAuth>) -> Self {
        Self(tokens.into_iter().collect())
    }

    /// Whether `presented` is one of the tokens.
    pub fn accepts(&self, presented: &str) -> bool {
        self.0.iter().any(|token| token.matches(presented))
    }

    /// Whether `metadata` carries one of the tokens.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let mut refused = Status::unauthenticated("missing `authorization: Bearer <token>` metadata");
        for token in &self.0 {
            match token.check(metadata) {
                Ok(()) => return Ok(()),
                Err(status) => refused = status,
            }
        }
        Err(refused)
    }
}

impl Interceptor for AnyBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = header {
            request.metadata_mut().insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn accepts_only_the_token() {
        let mut auth = BearerAuth::new("s3cret-token-value");
        assert!(auth.call(request(Some("Bearer s3cret-token-value"))).is_ok());
        for wrong in [None, Some("Bearer nope"), Some("s3cret-token-value"), Some("Basic s3cret-token-value")] {
            let status = auth.call(request(wrong)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("s3cret"));
        }
    }

    #[test]
    fn any_of_several_tokens_is_accepted_and_nothing_else() {
        let mut auth = AnyBearer::new([BearerAuth::new("admin-token-value"), BearerAuth::new("service-token-value")]);
        assert!(auth.call(request(Some("Bearer admin-token-value"))).is_ok());
        assert!(auth.call(request(Some("Bearer service-token-value"))).is_ok());
        for wrong in [None, Some("Bearer gateway-token-value")] {
            assert_eq!(auth.call(request(wrong)).unwrap_err().code(), tonic::Code::Unauthenticated);
        }
    }
}
