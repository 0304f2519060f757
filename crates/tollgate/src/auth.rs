//! Admin authentication: a bearer token in `authorization` metadata on every management RPC.
//! Health and reflection are served without it.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Checks `authorization: Bearer <admin token>`.
#[derive(Clone)]
pub struct AdminAuth {
    /// SHA-256 of the token: comparing digests in constant time hides the token's length too.
    expected: Arc<[u8; 32]>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(..)")
    }
}

impl AdminAuth {
    pub fn new(token: &str) -> Self {
        Self { expected: Arc::new(Sha256::digest(token.as_bytes()).into()) }
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <admin token>` metadata"))?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(self.expected.as_ref())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("the admin token is not valid"))
        }
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
        let mut auth = AdminAuth::new("s3cret-token-value");
        assert!(auth.call(request(Some("Bearer s3cret-token-value"))).is_ok());
        for wrong in [None, Some("Bearer nope"), Some("s3cret-token-value"), Some("Basic s3cret-token-value")] {
            let status = auth.call(request(wrong)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("s3cret"));
        }
    }
}
