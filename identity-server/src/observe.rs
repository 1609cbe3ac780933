//! Every gRPC (and gRPC-Web) call observed in one place: its span, which carries
//! OpenTelemetry's RPC attributes and continues the caller's W3C trace when the caller is trusted
//! to send one ([`ClientIdentity::continues_trace_of`]; any other caller's span is only linked,
//! so a caller on the public edge cannot steer our sampling), and its duration in
//! [`RPC_DURATION`] when metrics are exported.
//!
//! The span is the parent of every log line and span of the call, so each log line says which
//! RPC it belongs to. A failed status is logged at DEBUG: a caller's mistake is not an error of
//! ours, and real faults are logged at ERROR by the status mapping (`grpc/error.rs`).

use std::{
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use identity_proto::telemetry;
use opentelemetry::trace::TraceContextExt;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::{Instrument, field};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{abuse::ClientIdentity, metrics::RPC_DURATION};

/// See the module documentation. `metrics` says whether an exporter is installed; without one
/// no duration is recorded. `callers` says whose trace context is continued.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    pub metrics: bool,
    pub callers: Arc<ClientIdentity>,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics,
            callers: Arc::clone(&self.callers),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: bool,
    callers: Arc<ClientIdentity>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = rpc_of(request.uri().path());
        // Every gRPC and gRPC-Web call is a POST; anything else (a CORS preflight, which the
        // CORS layer answers 200 for any path) is no call of ours.
        let rpc = request.method() == http::Method::POST;
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = field::Empty,
        );
        if let Some(caller) = telemetry::remote_parent(request.headers()) {
            if self
                .callers
                .continues_trace_of(peer_of(request.extensions()))
            {
                // Fails only without the OpenTelemetry layer, when there is no trace to continue.
                let _ = span.set_parent(caller);
            } else {
                // A trace of our own, sampled by our sampler; the caller's span is a link.
                span.add_link(caller.span().span_context().clone());
            }
        }
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(request));
        let metrics = self.metrics;
        Box::pin(
            async move {
                let response = response.await;
                if let Ok(response) = &response {
                    let code = status_code(response);
                    let served = rpc && is_served(response, code);
                    record(&tracing::Span::current(), code, served);
                    if metrics {
                        let (service, method) = if served {
                            (service, method)
                        } else {
                            (UNKNOWN.to_owned(), UNKNOWN.to_owned())
                        };
                        let labels = [
                            ("rpc_system", "grpc".to_owned()),
                            ("rpc_service", service),
                            ("rpc_method", method),
                            ("rpc_grpc_status_code", code.to_string()),
                        ];
                        metrics::histogram!(RPC_DURATION, &labels).record(started.elapsed());
                    }
                }
                response
            }
            .instrument(span),
        )
    }
}

/// Puts the outcome on the call's span: the status code, an error status for the codes that
/// mean a fault of the server (OpenTelemetry's RPC conventions), and the name of calls to
/// paths we do not serve.
fn record(span: &tracing::Span, code: u16, served: bool) {
    span.record("rpc.grpc.status_code", code);
    if !served {
        span.record("otel.name", UNKNOWN);
    }
    if code != 0 {
        tracing::debug!(rpc.grpc.status_code = code, "call failed");
    }
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "error");
    }
}

/// The socket peer of a request, as tonic's server records it (plaintext or TLS).
fn peer_of(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

/// The service and method label of calls to paths the server does not serve.
const UNKNOWN: &str = "unknown";

/// Whether a POST reached one of our RPCs: not UNIMPLEMENTED (12, what the router answers for
/// any other path), and an HTTP 200. Other requests (and any that is not a POST) are labelled
/// [`UNKNOWN`], so a client sending made-up paths cannot create new series without bound.
fn is_served<R>(response: &http::Response<R>, code: u16) -> bool {
    response.status() == http::StatusCode::OK && code != 12
}

/// Service and method of a gRPC path `/package.Service/Method`.
fn rpc_of(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    (service.to_owned(), method.to_owned())
}

/// The call's gRPC status code. tonic answers an error as a trailers-only response, with
/// `grpc-status` among the headers; a unary success carries `grpc-status: 0` in its trailers,
/// after the headers this layer sees, so a 200 without the header is OK. Any other HTTP
/// status, or a header that is not a number, is UNKNOWN (2).
fn status_code<R>(response: &http::Response<R>) -> u16 {
    match response.headers().get("grpc-status") {
        Some(code) => code
            .to_str()
            .ok()
            .and_then(|code| code.parse().ok())
            .unwrap_or(2),
        None if response.status() == http::StatusCode::OK => 0,
        None => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_service_and_the_method() {
        assert_eq!(
            rpc_of("/identity.v1.RegistrationService/Register"),
            (
                "identity.v1.RegistrationService".to_owned(),
                "Register".to_owned()
            )
        );
        assert_eq!(rpc_of("/"), (String::new(), String::new()));
    }

    #[test]
    fn the_status_comes_from_the_header_or_a_plain_200() {
        let with = |code: &str| {
            http::Response::builder()
                .header("grpc-status", code)
                .body(())
                .expect("a response")
        };
        assert_eq!(status_code(&with("3")), 3);
        assert_eq!(status_code(&with("not a code")), 2);
        assert_eq!(status_code(&http::Response::new(())), 0);
        let not_found = http::Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .body(())
            .expect("a response");
        assert_eq!(status_code(&not_found), 2);
    }

    #[test]
    fn calls_to_paths_we_do_not_serve_share_one_label() {
        let unimplemented = http::Response::builder()
            .header("grpc-status", "12")
            .body(())
            .expect("a response");
        assert!(!is_served(&unimplemented, status_code(&unimplemented)));
        let not_found = http::Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .body(())
            .expect("a response");
        assert!(!is_served(&not_found, status_code(&not_found)));
        let refused = http::Response::builder()
            .header("grpc-status", "3")
            .body(())
            .expect("a response");
        assert!(is_served(&refused, status_code(&refused)));
    }
}
