//! The tower layer in front of the billing service: every call's bearer
//! token verified, the policy checked, the [`Principal`] handed to the
//! handlers; refusals answered before a handler runs.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;

use super::{Authenticator, Principal, Refusal, Unauthenticated, bearer, permits};

/// The layer that authenticates and authorizes every call of the service it
/// wraps.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// A service whose calls carry a verified, authorized [`Principal`].
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// The request's one `authorization` header, if any. Two are refused: which
/// one counts would be up to whichever proxy or server reads them.
pub fn authorization(headers: &http::HeaderMap) -> Result<Option<&str>, Unauthenticated> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Unauthenticated("more than one authorization header"));
    }
    Ok(first.and_then(|v| v.to_str().ok()))
}

/// The call's status when its principal may not make it; otherwise the
/// principal goes with the request to the handler.
fn admit(
    rpc: &str,
    verified: Result<Principal, Unauthenticated>,
    request: &mut http::Request<Body>,
) -> Result<(), Status> {
    match verified {
        Err(reason) => {
            tracing::info!(rpc, %reason, "unauthenticated call refused");
            Err(Status::unauthenticated(reason.to_string()))
        }
        Ok(principal) if !permits(principal.role, rpc) => {
            tracing::warn!(rpc, principal = %principal.subject, role = principal.role.as_str(),
                "call denied by role");
            Err(crate::status::denied(rpc, principal.role))
        }
        Ok(principal) => {
            request.extensions_mut().insert(principal.actor());
            request.extensions_mut().insert(principal);
            Ok(())
        }
    }
}

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let rpc = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let rpc = crate::status::clip(&rpc, crate::status::MAX_METADATA_BYTES);
        let verified = authorization(request.headers())
            .map_err(Refusal::from)
            .and_then(|header| {
                bearer(header)
                    .map_err(Refusal::from)
                    .and_then(|token| self.authenticator.check(token))
            });
        let verified = match verified {
            // A key id not fetched yet: after a rotation, the first token
            // signed with the new key waits for the refresh.
            Err(Refusal::UnknownKid) if self.authenticator.has_jwks() => {
                let header = authorization(request.headers())
                    .ok()
                    .flatten()
                    .map(str::to_owned);
                let authenticator = self.authenticator.clone();
                // The clone is not ready; the service polled ready is.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                return Box::pin(async move {
                    let verified = authenticator.verify(header.as_deref()).await;
                    match admit(&rpc, verified, &mut request) {
                        Ok(()) => inner.call(request).await,
                        Err(status) => Ok(status.into_http()),
                    }
                });
            }
            verified => verified.map_err(Refusal::reason),
        };
        match admit(&rpc, verified, &mut request) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}
