//! tonic's prost codec, which the health, reflection and Envoy services are generated with,
//! answers a request that does not decode with `INTERNAL`; Tollgate's own services answer
//! `INVALID_ARGUMENT` (see `tollgate_proto::codec`), since bytes that are not a message are the
//! caller's fault, and `INTERNAL` makes gateways retry and pages whoever runs the server. This
//! layer makes the others say the same, for unary calls, whose error status travels in the
//! response headers.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};

/// The start of prost's decode errors (`failed to decode Protobuf message: …`).
const DECODE_ERROR: &str = "failed to decode Protobuf message";

#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeErrorsLayer;

impl<S> tower::Layer<S> for DecodeErrorsLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrors(inner)
    }
}

#[derive(Clone, Debug)]
pub struct DecodeErrors<S>(S);

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for DecodeErrors<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(status) = Status::from_header_map(response.headers())
                && status.code() == Code::Internal
                && status.message().starts_with(DECODE_ERROR)
            {
                let _ = Status::invalid_argument(status.message()).add_header(response.headers_mut());
            }
            Ok(response)
        })
    }
}
