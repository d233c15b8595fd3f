//! `engine serve`: the judge as an HTTP reward server for RL trainers. OpenAI chat
//! completions as Flow-GRPO, Pref-GRPO and MixGRPO send them; the native `/v1/score` (the
//! records `engine score` writes) and `/v1/rank` (a group of candidates, every pair); and
//! `/health`, `/v1/models`, `/metrics`.
//!
//! The HTTP side runs on tokio (axum); the model runs on one thread of its own
//! ([`worker`]), which batches the work of concurrent requests into shared decoder calls.
//! A bounded count of accepted requests answers 429 when full. SIGTERM or SIGINT stops
//! accepting, lets every accepted request finish, then returns.

pub mod api_error;
pub mod chat;
pub mod feature_cache;
pub mod media;
pub mod media_inbox;
pub mod metrics;
pub mod routes;
pub mod worker;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use unireward_models::judge::Task;

use self::media::MediaReader;
use self::media_inbox::MediaPolicy;
use self::metrics::Metrics;
use self::routes::{AppState, Shared};
pub use self::worker::ServeModel;
use crate::error::{EngineError, Result};
use crate::judge::JudgeMode;

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port (the address is printed).
    pub port: u16,
    pub api_key: Option<String>,
    /// The model name `/v1/models` and the answers give.
    pub served_model_name: String,
    /// Most requests accepted and not yet answered; more get 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub policy: MediaPolicy,
    /// `/v1/score`'s judging unless the request says `?judge=`.
    pub default_judge: JudgeMode,
    /// The size `/v1/rank` resizes candidates to first, by task (the DPO-data recipe's).
    pub rank_resize: fn(Task) -> Option<(u32, u32)>,
}

/// Serves until SIGTERM / SIGINT; `on_listening` gets the bound address first.
pub fn serve(
    model: &ServeModel,
    reader: MediaReader,
    options: ServeOptions,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| EngineError::Invalid(format!("cannot start the async runtime: {e}")))?;
    let address = format!("{}:{}", options.host, options.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&address))
        .map_err(|e| EngineError::io(&address, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| EngineError::io(&address, e))?;
    let metrics = Arc::new(Metrics::default());
    let (queue, work) = std::sync::mpsc::channel();
    let shared: AppState = Arc::new(Shared {
        queue,
        reader: Arc::new(reader),
        policy: options.policy.clone(),
        metrics: metrics.clone(),
        api_key: options.api_key.clone(),
        served_model_name: options.served_model_name.clone(),
        max_queue: options.max_queue,
        default_judge: options.default_judge,
        rank_resize: options.rank_resize,
        completions: AtomicU64::new(0),
    });
    let app = router(shared, options.max_body_bytes);
    std::thread::scope(|scope| {
        let worker_metrics = metrics.clone();
        let model_thread = scope.spawn(move || worker::run(model, work, worker_metrics));
        on_listening(bound);
        tracing::info!("listening on http://{bound}");
        let served = runtime.block_on(async {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop_signal())
                .await
        });
        // The router (and with it the queue's sender) is gone now: the model thread ends
        // once it has answered what it holds.
        let joined = model_thread.join();
        served.map_err(|e| EngineError::io(&address, e))?;
        joined.map_err(|_| EngineError::Invalid("the model thread panicked".into()))
    })?;
    tracing::info!("stopped: every accepted request was answered");
    Ok(())
}

fn router(shared: AppState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/score", post(routes::score))
        .route("/v1/rank", post(routes::rank))
        .route("/v1/models", get(routes::models))
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            routes::authorize,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(shared)
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("stopping: no new connections; finishing the accepted requests");
}
