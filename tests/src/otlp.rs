//! A real OTLP/gRPC trace receiver: the `TraceService` server that `opentelemetry-proto`
//! generates from the protocol's own definitions, on a free port, keeping every span the
//! binaries export to it ([`Collector::start`]), or only counting them, for benchmarks
//! ([`Collector::counting`]).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use tokio::net::TcpListener;
use tonic::transport::{
    Identity,
    server::{ServerTlsConfig, TcpIncoming},
};

use crate::smtp::TlsIdentity;

/// One span as received, with ids in lowercase hex (as W3C `traceparent` writes them).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    /// OTLP's `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// The span's attributes, each value as text.
    pub attributes: Vec<(String, String)>,
    /// The linked spans, as (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Every attribute value anywhere on the span: its own, its events', its links' and its
    /// resource's, to search for what must not be there.
    pub all_values: Vec<String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
}

impl ReceivedSpan {
    /// The value of attribute `key`, as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct Collector {
    endpoint: String,
    received: Arc<Received>,
    server: tokio::task::JoinHandle<()>,
}

/// What the receiver keeps: every span, or only how many came.
#[derive(Debug)]
struct Received {
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicU64,
}

impl Collector {
    /// Starts the receiver on a free port of 127.0.0.1, keeping every span.
    pub async fn start() -> Self {
        Self::listen("127.0.0.1:0".parse().expect("an address"), true, None).await
    }

    /// Starts a receiver on `addr` that only counts the spans ([`Collector::count`]).
    pub async fn counting(addr: SocketAddr) -> Self {
        Self::listen(addr, false, None).await
    }

    /// Starts the receiver on a free port of 127.0.0.1, keeping every span, serving TLS with
    /// `identity` (a certificate for 127.0.0.1); its endpoint is `https://`.
    pub async fn start_tls(identity: &TlsIdentity) -> Self {
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(
            &identity.cert_chain_pem,
            &identity.key_pem,
        ));
        Self::listen("127.0.0.1:0".parse().expect("an address"), true, Some(tls)).await
    }

    async fn listen(addr: SocketAddr, keep: bool, tls: Option<ServerTlsConfig>) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("OTLP receiver: cannot listen on {addr}: {e}"));
        let endpoint = format!(
            "{}://{}",
            if tls.is_some() { "https" } else { "http" },
            listener.local_addr().expect("OTLP receiver: its address")
        );
        let received = Arc::new(Received {
            keep,
            spans: Mutex::default(),
            count: AtomicU64::new(0),
        });
        let receiver = Receiver {
            received: Arc::clone(&received),
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .expect("OTLP receiver: the TLS identity");
        }
        let server = tokio::spawn(async move {
            builder
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
                .expect("OTLP receiver: serving");
        });
        Self {
            endpoint,
            received,
            server,
        }
    }

    /// How many spans arrived so far.
    pub fn count(&self) -> u64 {
        self.received.count.load(Ordering::Relaxed)
    }

    /// `http://127.0.0.1:PORT` (or `https://`), for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `timeout` for a span of `service` named `name`, and returns the first.
    pub async fn span(&self, service: &str, name: &str, timeout: Duration) -> ReceivedSpan {
        crate::wait::until(
            &format!("a span {name:?} from {service}"),
            timeout,
            async || {
                self.spans()
                    .into_iter()
                    .find(|span| span.service == service && span.name == name)
            },
        )
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Debug)]
struct Receiver {
    received: Arc<Received>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let count = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len() as u64)
            .sum();
        self.received.count.fetch_add(count, Ordering::Relaxed);
        if !self.received.keep {
            return Ok(tonic::Response::new(ExportTraceServiceResponse::default()));
        }
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| resource.attributes)
                .unwrap_or_default();
            let service = text_of(&resource, "service.name").unwrap_or_default();
            let resource_values: Vec<String> = resource.iter().map(value_text).collect();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let mut all_values = resource_values.clone();
                all_values.extend(span.attributes.iter().map(value_text));
                for event in &span.events {
                    all_values.push(event.name.clone());
                    all_values.extend(event.attributes.iter().map(value_text));
                }
                for link in &span.links {
                    all_values.extend(link.attributes.iter().map(value_text));
                }
                if let Some(status) = &span.status {
                    all_values.push(status.message.clone());
                }
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value_text(kv)))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                        .collect(),
                    all_values,
                    status: span.status.map_or(0, |status| status.code),
                });
            }
        }
        self.received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text_of(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(value_text)
}

fn value_text(kv: &KeyValue) -> String {
    kv.value.as_ref().map_or_else(String::new, any_text)
}

fn any_text(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(array)) => array
            .values
            .iter()
            .map(any_text)
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::KvlistValue(list)) => list
            .values
            .iter()
            .map(|kv| format!("{}={}", kv.key, value_text(kv)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::BytesValue(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
