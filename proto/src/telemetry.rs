//! Logs and traces, the same for both binaries.
//!
//! - **Logs** go to standard error: readable text, or one JSON object per line. `RUST_LOG`
//!   filters them (default `info`). A JSON line written inside a traced span carries that
//!   span's `trace_id` and `span_id`.
//! - **Traces** are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and not otherwise. The OpenTelemetry SDK
//!   reads the other standard variables itself: `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_HEADERS`. `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none` turn the export off.
//! - **Trace context** crosses process boundaries as W3C `traceparent`/`tracestate`: read from
//!   a caller's gRPC metadata ([`remote_parent`]), written into an outbox row
//!   ([`TraceContext::of`]) and read back by the relay ([`TraceContext::parent`]). Each of them
//!   caps the `tracestate` at [`MAX_TRACESTATE_LEN`] characters ([`capped`]), so what a caller
//!   sends cannot bloat every row, event header and exported span.
//!
//! Only spans of our own crates at `INFO` or above become OpenTelemetry spans, whatever
//! `RUST_LOG` says: quieting the log does not thin the traces, and library internals (h2,
//! hyper, the pool) do not flood them. Those spans' log events become span events, so what
//! keeps secrets out of the log keeps them out of the traces too.

use std::{collections::HashMap, io::IsTerminal, process::ExitCode, time::SystemTime};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{
        Link, SpanContext, SpanKind, TraceContextExt, TraceState, Tracer, TracerProvider as _,
    },
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing::{Event, Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::Targets,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::JsonFields, format::Writer},
    prelude::*,
    registry::LookupSpan,
};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, with the trace and span ids of the current span.
    Json,
}

/// The crates whose spans become OpenTelemetry spans.
const TRACED_CRATES: [&str; 3] = ["identity_server", "outbox_relay", "identity_proto"];

/// The tracing set-up of a process; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: the log layer, and the OpenTelemetry layer when spans
    /// are exported or log lines are JSON (which then carry trace ids). `service` names the
    /// process when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` does.
    ///
    /// Call it inside the Tokio runtime: the exporter's gRPC channel runs on it. A malformed
    /// OTLP setting is an error, after the log layer is installed so the caller can log it.
    pub fn init(
        format: LogFormat,
        service: &'static str,
    ) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let var = |name: &str| std::env::var(name).ok();
        let exporting = export_requested(var);
        let exporter = if exporting {
            match exporter(var) {
                Ok(exporter) => Some(exporter),
                Err(e) => {
                    install(format, None);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let provider = (exporting || format == LogFormat::Json).then(|| {
            let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
            if let Some(exporter) = exporter {
                builder = builder.with_batch_exporter(exporter);
            }
            builder.build()
        });
        if let Some(provider) = &provider {
            opentelemetry::global::set_tracer_provider(provider.clone());
        }
        install(format, provider.as_ref().map(|p| p.tracer(service)));
        if exporting {
            tracing::info!("exporting traces over OTLP");
        }
        Ok(Self { provider })
    }

    /// Exports the spans still buffered and stops the exporter. Blocks: call it outside the
    /// async runtime, while the runtime still exists (the export runs on it).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error.message = %e, "could not flush the last spans");
        }
    }
}

/// The OTLP/gRPC span exporter the environment describes. For an `https` endpoint it trusts
/// the CA certificates (PEM) of `OTEL_EXPORTER_OTLP_CERTIFICATE` (or its `TRACES_` variant)
/// when set, else the public web roots.
fn exporter(
    var: impl Fn(&str) -> Option<String>,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{
        ExporterBuildError, WithTonicConfig,
        tonic_types::transport::{Certificate, ClientTlsConfig},
    };
    let either = |name: &str| {
        var(&name.replace("OTLP_", "OTLP_TRACES_"))
            .or_else(|| var(name))
            .filter(|value| !value.trim().is_empty())
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let https = either("OTEL_EXPORTER_OTLP_ENDPOINT")
        .is_some_and(|endpoint| endpoint.trim().to_ascii_lowercase().starts_with("https://"));
    if https {
        let tls = match either("OTEL_EXPORTER_OTLP_CERTIFICATE") {
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    ExporterBuildError::InvalidConfiguration(format!(
                        "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read {path}: {e}"
                    ))
                })?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        builder = builder.with_tls_config(tls);
    }
    builder.build()
}

/// Runs `main` to completion on a multi-threaded Tokio runtime, with logs and traces set up
/// ([`Telemetry::init`], named `service`), and returns the process's exit code: an error is
/// logged with its cause chain and fails it. The spans still buffered are exported before it
/// returns.
pub fn run<E>(
    format: LogFormat,
    service: &'static str,
    main: impl Future<Output = Result<(), E>>,
) -> ExitCode
where
    E: std::fmt::Display + std::fmt::Debug,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the exporter's channel runs on it.
    let telemetry = {
        let _entered = runtime.enter();
        Telemetry::init(format, service)
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            tracing::error!(error.message = %e, "cannot set up the trace export; check the OTEL_EXPORTER_OTLP_* variables");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error.message = %e, error.cause_chain = ?e, "{service} failed");
            ExitCode::FAILURE
        }
    };
    // Outside the runtime's work, while it still runs the exporter: the last spans go out.
    telemetry.shutdown();
    code
}

/// Whether the environment asks for an OTLP export of traces.
fn export_requested(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|value| !value.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The resource the SDK reads from the environment, named `service` unless the environment
/// names it.
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name(service).build()
    }
}

fn install(format: LogFormat, tracer: Option<SdkTracer>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let traces = tracer.map(|tracer| {
        let ours = Targets::new().with_targets(TRACED_CRATES.map(|name| (name, Level::INFO)));
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            // Busy and idle times would cost two clock readings per poll of every future.
            .with_tracked_inactivity(false)
            // Only the JSON log reads the current span's ids from the active context.
            .with_context_activation(format == LogFormat::Json)
            .with_filter(ours)
    });
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(
                fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            ))
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(traces)
        .with(logs)
        .init();
}

/// A JSON event format that appends `trace_id` and `span_id` of the current OpenTelemetry
/// span (the OpenTelemetry layer activates a span's context when the span is entered).
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let current = Context::current();
        let span = current.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(open) => writeln!(
                writer,
                "{open},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id(),
                ids.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}

/// Most characters of `tracestate` kept: the W3C limit every vendor must be able to pass on
/// (its 32 list members may add up to ~16 KB, which a propagator may cut).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// Members longer than this are the first dropped when a `tracestate` must be cut (W3C Trace
/// Context, "tracestate Limits").
const LONG_TRACESTATE_MEMBER: usize = 128;

/// `state` cut to at most [`MAX_TRACESTATE_LEN`] characters at member boundaries, as W3C Trace
/// Context recommends: when it is too long, members over 128 characters go first, then members
/// from the end (the most recently added come first, so the oldest go).
pub fn capped(state: &TraceState) -> TraceState {
    let header = state.header();
    if header.len() <= MAX_TRACESTATE_LEN {
        return state.clone();
    }
    let mut length = 0;
    let kept: Vec<(&str, &str)> = state
        .into_iter()
        .filter(|(key, value)| key.len() + 1 + value.len() <= LONG_TRACESTATE_MEMBER)
        .take_while(|(key, value)| {
            // A comma before every member but the first.
            length += usize::from(length > 0) + key.len() + 1 + value.len();
            length <= MAX_TRACESTATE_LEN
        })
        .collect();
    // Members of a parsed state are valid, so this cannot fail; an empty state if it did.
    TraceState::from_key_value(kept).unwrap_or_default()
}

/// `context` with its span context's `tracestate` [`capped`].
fn with_capped_state(context: &Context) -> Context {
    let span = context.span();
    let span_context = span.span_context();
    let capped = SpanContext::new(
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags(),
        span_context.is_remote(),
        capped(span_context.trace_state()),
    );
    Context::new().with_remote_span_context(capped)
}

/// The caller's trace context from a request's `traceparent` and `tracestate` headers (gRPC
/// metadata), if it sent one, with the `tracestate` [`capped`]. The server decides whether to
/// continue it (a trusted caller) or only link to it.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<Context> {
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    headers
        .contains_key("traceparent")
        .then(|| with_capped_state(&TraceContextPropagator::new().extract(&Headers(headers))))
}

/// A span's W3C trace context, as stored in an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The context of `span`, or `None` when it is not traced; its `tracestate` [`capped`].
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new()
            .inject_context(&with_capped_state(&span.context()), &mut carrier);
        Some(Self {
            traceparent: carrier.remove("traceparent")?,
            tracestate: carrier
                .remove("tracestate")
                .filter(|state| !state.is_empty()),
        })
    }

    /// The remote parent this context names, its `tracestate` [`capped`]; invalid when the
    /// stored text is not a valid `traceparent`.
    pub fn parent(traceparent: &str, tracestate: Option<&str>) -> Context {
        let mut carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        if let Some(state) = tracestate {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        with_capped_state(&TraceContextPropagator::new().extract(&carrier))
    }

    /// A stored `tracestate` [`capped`], as it may be passed on (an event's header); `None`
    /// when nothing of it is left or it is not a valid `tracestate`.
    pub fn capped_tracestate(tracestate: &str) -> Option<String> {
        let state = tracestate.parse::<TraceState>().ok()?;
        Some(capped(&state).header()).filter(|header| !header.is_empty())
    }
}

/// Records a span that already ended (from `start` to now) with the global tracer, and returns
/// its context, for spans worth keeping only once their outcome is known (a poll that found
/// work). Links to invalid contexts are left out.
pub fn record_finished(
    name: &'static str,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    links: impl IntoIterator<Item = SpanContext>,
) -> SpanContext {
    use opentelemetry::trace::Span as _;
    let tracer = opentelemetry::global::tracer("outbox");
    let links = links
        .into_iter()
        .filter(SpanContext::is_valid)
        .map(Link::with_context)
        .collect();
    let mut span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start)
        .with_attributes(attributes)
        .with_links(links)
        .start(&tracer);
    let context = span.span_context().clone();
    span.end();
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn an_endpoint_asks_for_the_export_and_the_standard_switches_turn_it_off() {
        assert!(!export_requested(env(&[])));
        assert!(!export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(export_requested(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317"
        )])));
        assert!(!export_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!export_requested(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn a_stored_traceparent_names_its_remote_parent() {
        let parent = TraceContext::parent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("vendor=value"),
        );
        let span = parent.span();
        let context = span.span_context();
        assert!(context.is_remote());
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(context.trace_state().header(), "vendor=value");
        assert!(
            !TraceContext::parent("not a traceparent", None)
                .span()
                .span_context()
                .is_valid()
        );
    }

    /// 32 members, the most W3C allows: two short ones, then 30 of 511 characters each.
    fn oversized() -> String {
        let mut members = vec![
            "congo=t61rcWkgMzE".to_owned(),
            "rojo=00f067aa0ba902b7".to_owned(),
        ];
        members.extend((0..30).map(|i| format!("{}{i:02}={}", "k".repeat(252), "v".repeat(256))));
        members.join(",")
    }

    #[test]
    fn a_tracestate_within_the_cap_is_kept_whole() {
        let long_member = format!("vendor={}", "x".repeat(200));
        let within = format!("{long_member},congo=t61rcWkgMzE");
        assert_eq!(
            TraceContext::capped_tracestate(&within).as_deref(),
            Some(within.as_str())
        );
    }

    #[test]
    fn a_longer_tracestate_loses_its_long_members_then_its_last_ones() {
        assert_eq!(
            TraceContext::capped_tracestate(&oversized()).as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        // 32 short members (23 characters each, 767 with the commas): the first 21 fit in 512.
        let short: Vec<String> = (0..32)
            .map(|i| format!("vendor{i:02}=abcdefghijklmn"))
            .collect();
        let capped = TraceContext::capped_tracestate(&short.join(",")).expect("a state");
        assert_eq!(capped, short[..21].join(","));
        assert!(capped.len() <= MAX_TRACESTATE_LEN);
        assert_eq!(TraceContext::capped_tracestate("not a tracestate"), None);
    }

    #[test]
    fn a_caller_s_context_keeps_its_ids_and_flags_with_its_state_capped() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        headers.insert("tracestate", oversized().parse().expect("ASCII"));
        let context = remote_parent(&headers).expect("a context");
        let span = context.span();
        let caller = span.span_context();
        assert!(caller.is_remote() && caller.is_sampled());
        assert_eq!(
            caller.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(caller.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(
            caller.trace_state().header(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        let stored = TraceContext::parent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some(&oversized()),
        );
        assert_eq!(
            stored.span().span_context().trace_state().header(),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
        );
        assert_eq!(remote_parent(&http::HeaderMap::new()).map(|_| ()), None);
    }

    #[test]
    fn a_span_outside_any_trace_has_no_context_to_store() {
        assert_eq!(TraceContext::of(&tracing::Span::none()), None);
    }
}
