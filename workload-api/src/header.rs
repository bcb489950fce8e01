//! The Workload API security header check, as a tower layer.
//!
//! Every Workload API call must carry the gRPC metadata `workload.spiffe.io: true`, which a
//! browser or a server-side request forgery cannot add; a call without it is answered with
//! `InvalidArgument` before it reaches a handler. Only paths under `/SpiffeWorkloadAPI/` are
//! checked, so reflection (or another service on the same socket) works without the header.

use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};

/// The metadata key of the security header.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The only accepted value of the security header.
pub const SECURITY_HEADER_VALUE: &str = "true";

/// The path prefix of Workload API methods.
pub const WORKLOAD_API_PATH_PREFIX: &str = "/SpiffeWorkloadAPI/";

/// A [`Layer`] that adds [`SecurityHeader`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct SecurityHeaderLayer;

impl<S> Layer<S> for SecurityHeaderLayer {
    type Service = SecurityHeader<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityHeader { inner }
    }
}

/// Answers Workload API requests that lack `workload.spiffe.io: true` with `InvalidArgument`
/// and forwards everything else to the inner service.
#[derive(Clone, Debug)]
pub struct SecurityHeader<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityHeader<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ResBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if let Err(status) = check(&request) {
            tracing::debug!(
                path = request.uri().path(),
                "rejected call without security header"
            );
            return Either::Left(futures::future::ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

/// Checks one request; requests outside the Workload API always pass.
fn check<B>(request: &Request<B>) -> Result<(), tonic::Status> {
    if !request.uri().path().starts_with(WORKLOAD_API_PATH_PREFIX) {
        return Ok(());
    }
    let mut values = request.headers().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if value == SECURITY_HEADER_VALUE => Ok(()),
        (None, _) => Err(tonic::Status::invalid_argument(format!(
            "security header `{SECURITY_HEADER}` is missing"
        ))),
        _ => Err(tonic::Status::invalid_argument(format!(
            "security header `{SECURITY_HEADER}` must be exactly `{SECURITY_HEADER_VALUE}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, values: &[&str]) -> Request<()> {
        let mut builder = Request::builder().uri(path);
        for value in values {
            builder = builder.header(SECURITY_HEADER, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn workload_api_path_needs_exactly_true() {
        let path = "/SpiffeWorkloadAPI/FetchX509SVID";
        assert!(check(&request(path, &["true"])).is_ok());
        for values in [&[][..], &["false"], &["TRUE"], &["true", "true"], &[""]] {
            let status = check(&request(path, values)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{values:?}");
        }
    }

    #[test]
    fn other_paths_pass_without_header() {
        let path = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(check(&request(path, &[])).is_ok());
        assert!(check(&request("/SpiffeWorkloadAPIx/Fetch", &[])).is_ok());
    }
}
