//! The gRPC adapter of the authz service: authentication, request checks, then the
//! [`Authorizer`].

use std::sync::Arc;

use tollgate_auth::{AnyBearer, BearerAuth};
use tollgate_core::{Capability, Violations, ip_allowlist, validation};
use tollgate_proto::authz::v1 as pb;
use tonic::{Request, Response, Status};

use crate::authorize::{AuthorizeInput, Authorizer};
use crate::convert;
use crate::error::AuthzError;

/// Largest estimate accepted (tokens).
const MAX_ESTIMATED_TOKENS: i64 = 1_000_000_000;
/// Longest model id accepted; longer ones cannot be in the catalog.
const MAX_MODEL_LEN: usize = 128;

/// Who may call Authorize.
#[derive(Debug, Clone)]
pub enum AuthorizeAccess {
    /// Anyone who can reach the port: `tollgate dev` on loopback, or an explicit
    /// `--allow-unauthenticated-authorize`. Anyone could then test whether a key is valid.
    Open,
    /// A caller presenting one of these tokens (the gateway token, the admin token).
    Tokens(AnyBearer),
}

impl AuthorizeAccess {
    /// Whether a caller presenting `token` (a header of its own on HTTP) may call.
    pub(crate) fn accepts(&self, token: Option<&str>) -> bool {
        match self {
            AuthorizeAccess::Open => true,
            AuthorizeAccess::Tokens(tokens) => token.is_some_and(|token| tokens.accepts(token)),
        }
    }

    pub(crate) fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match self {
            AuthorizeAccess::Open => Ok(()),
            AuthorizeAccess::Tokens(tokens) => tokens.check(metadata),
        }
    }
}

/// `tollgate.authz.v1.AuthzService`.
#[derive(Clone)]
pub struct AuthzGrpc {
    authorizer: Arc<Authorizer>,
    authorize_access: AuthorizeAccess,
    /// Guards ExplainAuthorize, a support tool that reveals a key's limits.
    admin_auth: BearerAuth,
}

impl AuthzGrpc {
    pub fn new(authorizer: Arc<Authorizer>, authorize_access: AuthorizeAccess, admin_auth: BearerAuth) -> Self {
        Self { authorizer, authorize_access, admin_auth }
    }
}

/// Checks an Authorize request's fields (the key itself is judged by the decision, not here).
fn input(request: pb::AuthorizeRequest, prefix: &str) -> Result<AuthorizeInput, AuthzError> {
    let mut v = Violations::new();
    let field = |name: &str| format!("{prefix}{name}");
    if request.model.is_empty() || request.model.len() > MAX_MODEL_LEN {
        v.add(field("model"), format!("must be 1 to {MAX_MODEL_LEN} characters"));
    }
    let capability = Capability::from_number(request.capability);
    if capability.is_none() {
        v.add(field("capability"), "must be a known capability");
    }
    let client_ip = if request.client_ip.is_empty() {
        None
    } else {
        let ip = ip_allowlist::parse_client_ip(&request.client_ip);
        if ip.is_none() {
            v.add(field("client_ip"), "must be an IPv4 or IPv6 address");
        }
        ip
    };
    if !(0..=MAX_ESTIMATED_TOKENS).contains(&request.estimated_tokens) {
        v.add(field("estimated_tokens"), format!("must be 0 to {MAX_ESTIMATED_TOKENS}"));
    }
    if request.request_id.is_empty() {
        v.add(field("request_id"), "is required");
    } else {
        validation::check_request_id(&mut v, &field("request_id"), &request.request_id);
    }
    v.into_result().map_err(AuthzError::InvalidArgument)?;
    Ok(AuthorizeInput {
        api_key: request.api_key,
        model: request.model,
        capability: capability.unwrap_or(Capability::Text),
        client_ip,
        estimated_tokens: request.estimated_tokens,
        request_id: request.request_id,
    })
}

#[tonic::async_trait]
impl pb::authz_service_server::AuthzService for AuthzGrpc {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        self.authorize_access.check(request.metadata())?;
        let input = input(request.into_inner(), "")?;
        Ok(Response::new(convert::decision(&self.authorizer.authorize(&input).await?)))
    }

    async fn explain_authorize(
        &self,
        request: Request<pb::ExplainAuthorizeRequest>,
    ) -> Result<Response<pb::ExplainAuthorizeResponse>, Status> {
        self.admin_auth.check(request.metadata())?;
        let call = request.into_inner().request.unwrap_or_default();
        let input = input(call, "request.")?;
        Ok(Response::new(convert::explanation(&self.authorizer.explain(&input).await?)))
    }
}
