//! Telemetry, set up in one place: `tracing` with `RUST_LOG` (default `info`), text or
//! JSON lines on stderr (stdout is for what scripts read), and OTLP trace export only
//! when an endpoint is configured.

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, TelemetryConfig};

/// Keeps the exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. Call once, from `main`.
    pub fn init(cfg: &TelemetryConfig) -> anyhow::Result<Self> {
        let filter =
            || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt = match cfg.log_format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_filter(filter())
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .json()
                .flatten_event(true)
                .with_filter(filter())
                .boxed(),
        };
        let mut provider = None;
        let otel = match &cfg.otlp_endpoint {
            Some(endpoint) => {
                use opentelemetry_otlp::WithExportConfig as _;
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()?;
                let name = cfg
                    .service_name
                    .clone()
                    .unwrap_or_else(|| "tenure".to_owned());
                let p = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(name)
                            .build(),
                    )
                    .build();
                let tracer = p.tracer("tenure");
                provider = Some(p);
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(filter()),
                )
            }
            None => None,
        };
        tracing_subscriber::registry()
            .with(fmt)
            .with(otel)
            .try_init()?;
        Ok(Self { provider })
    }

    /// Flushes and stops the exporter (the last step of shutdown).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}
