//! The HTTP routes: OpenAI chat completions, the native `/v1/score` and `/v1/rank`, and the
//! operational ones. A handler checks and prepares its request (media decoded and
//! preprocessed on a blocking thread), queues it for the model thread, and waits; a client
//! that goes away drops the wait, which the model thread sees and skips.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use unireward_models::formats::record::Record;
use unireward_models::formats::score_record::ScoreAnswer;
use unireward_models::preprocess::{MediaRequest, VideoSource};

use super::api_error::ApiError;
use super::chat::{ChatRequest, Completion, VideoRef};
use super::media::MediaReader;
use super::media_inbox::{Inbox, MediaPolicy};
use super::metrics::Metrics;
use super::worker::{PreparedInput, Work};
use crate::judge::{JudgeMode, ScoreRequest};
use crate::pairs::job::PairsRequest;
use crate::pairs::Ranking;

/// What every handler shares.
pub struct Shared {
    pub queue: Sender<Work>,
    pub reader: Arc<MediaReader>,
    pub policy: MediaPolicy,
    pub metrics: Arc<Metrics>,
    pub api_key: Option<String>,
    pub served_model_name: String,
    pub max_queue: usize,
    pub default_judge: JudgeMode,
    /// The size `/v1/rank` resizes candidates to first (the DPO-data recipe), by task.
    pub rank_resize: fn(unireward_models::judge::Task) -> Option<(u32, u32)>,
    pub completions: AtomicU64,
}

pub type AppState = Arc<Shared>;

/// A place in the queue, given back when the request is answered or its client leaves.
struct Ticket(Arc<Metrics>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.queue_depth.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request whose handler was dropped before it answered: its client went away
/// (hyper drops the handler when it reads the connection's end).
struct Abandoned<'m>(Option<&'m Metrics>);

impl<'m> Abandoned<'m> {
    fn watch(metrics: &'m Metrics) -> Self {
        Self(Some(metrics))
    }

    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.cancelled();
        }
    }
}

impl Shared {
    fn admit(&self) -> Result<Ticket, ApiError> {
        let before = self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket(self.metrics.clone());
        if before >= self.max_queue {
            return Err(ApiError::busy(before));
        }
        Ok(ticket)
    }

    fn submit(&self, work: Work) -> Result<(), ApiError> {
        self.queue
            .send(work)
            .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"))
    }
}

/// `Authorization: Bearer KEY` when the server has a key (every route but /health).
pub async fn authorize(State(s): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let route = route_name(request.uri().path());
            s.metrics.request(route, 401, std::time::Duration::ZERO);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a missing or wrong API key: send Authorization: Bearer <key>",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The metrics' name for a path (unknown paths share one, so that a scan cannot grow them).
fn route_name(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/score" => "/v1/score",
        "/v1/rank" => "/v1/rank",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

fn finish(
    s: &Shared,
    route: &'static str,
    started: Instant,
    result: Result<Response, ApiError>,
) -> Response {
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!("{route}: {e}");
            }
            e.into_response()
        }
    };
    let status = response.status().as_u16();
    let took = started.elapsed();
    tracing::debug!(route, status, ms = took.as_millis() as u64, "answered");
    s.metrics.request(route, status, took);
    response
}

fn body_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is over the limit (--max-body-mb)".to_string()
        } else {
            r.body_text()
        };
        ApiError::new(status, message)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not the JSON expected: {e}")))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("media preparation stopped: {e}")))?
}

async fn answer<T>(rx: oneshot::Receiver<T>) -> Result<T, ApiError> {
    rx.await
        .map_err(|_| ApiError::internal("the model thread stopped before answering"))
}

/// Media made local files and preprocessed, `resized` first when given.
fn prepare(
    s: &Shared,
    inbox: &mut Inbox,
    req: &MediaRequest,
    resized: Option<(u32, u32)>,
) -> Result<PreparedInput, ApiError> {
    let (local, keys) = inbox.localize_request(req)?;
    // Every path is absolute (inbox files, or canonical ones under the allowed folder).
    let media = s
        .reader
        .read(&local, resized)
        .map_err(ApiError::bad_request)?;
    Ok(PreparedInput {
        media,
        keys,
        resized,
    })
}

pub async fn chat_completions(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let abandoned = Abandoned::watch(&s.metrics);
    let result = chat_inner(&s, body).await;
    abandoned.answered();
    finish(&s, "/v1/chat/completions", started, result)
}

async fn chat_inner(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let _ticket = s.admit()?;
    let request: ChatRequest = body_json(body)?;
    let prompt = request.into_prompt()?;
    let shared = s.clone();
    let (prompt, input) = blocking(move || {
        let media = MediaRequest {
            images: prompt.images.iter().map(Into::into).collect(),
            videos: prompt
                .videos
                .iter()
                .map(|v| match v {
                    VideoRef::One(url) => VideoSource::File(url.into()),
                    VideoRef::Frames(frames) => {
                        VideoSource::FrameFiles(frames.iter().map(Into::into).collect())
                    }
                })
                .collect(),
        };
        let mut inbox = Inbox::new(&shared.policy);
        let input = prepare(&shared, &mut inbox, &media, None)?;
        Ok((prompt, input))
    })
    .await?;
    let sampling_asked = prompt.sampling_asked;
    let (tx, rx) = oneshot::channel();
    s.submit(Work::Chat {
        prompt: Box::new(prompt),
        input,
        reply: tx,
    })?;
    let done = answer(rx).await??;
    let n = s.completions.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let id = format!("chatcmpl-{created:x}{n:06x}");
    let body = Completion {
        id: &id,
        created,
        model: &s.served_model_name,
        text: &done.text,
        finish: done.finish,
        prompt_tokens: done.prompt_tokens,
        completion_tokens: done.completion_tokens,
    }
    .to_json();
    let mut response = Json(body).into_response();
    let decoding = if sampling_asked {
        "greedy; sampling was asked and not done"
    } else {
        "greedy"
    };
    response
        .headers_mut()
        .insert("x-unireward-decoding", HeaderValue::from_static(decoding));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct ScoreQuery {
    judge: Option<String>,
}

pub async fn score(
    State(s): State<AppState>,
    Query(query): Query<ScoreQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let abandoned = Abandoned::watch(&s.metrics);
    let result = score_inner(&s, query, body).await;
    abandoned.answered();
    finish(&s, "/v1/score", started, result)
}

async fn score_inner(
    s: &AppState,
    query: ScoreQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let _ticket = s.admit()?;
    let mode = match query.judge.as_deref() {
        None => s.default_judge,
        Some("fast") => JudgeMode::Fast,
        Some("generate") => JudgeMode::Generate,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "judge={other}; expected fast or generate"
            )))
        }
    };
    let body: Value = body_json(body)?;
    let (records, many) = match body {
        Value::Array(records) => (records, true),
        one @ Value::Object(_) => (vec![one], false),
        _ => {
            return Err(ApiError::bad_request(
                "the body must be a score record or a list of them",
            ))
        }
    };
    let shared = s.clone();
    let ids: Vec<Value> = records
        .iter()
        .map(|r| r.get("id").cloned().unwrap_or(Value::Null))
        .collect();
    let prepared: Vec<Result<(ScoreRequest, PreparedInput), String>> = blocking(move || {
        let mut inbox = Inbox::new(&shared.policy);
        Ok(records
            .iter()
            .map(|v| {
                let mut req = ScoreRequest::parse(v)?;
                let input =
                    prepare(&shared, &mut inbox, &req.media, None).map_err(|e| e.message)?;
                req.media = MediaRequest::default();
                Ok((req, input))
            })
            .collect())
    })
    .await?;
    let mut answers: Vec<Option<Result<ScoreAnswer, String>>> = Vec::with_capacity(prepared.len());
    let mut ready = Vec::new();
    for p in prepared {
        match p {
            Ok(r) => {
                answers.push(None);
                ready.push(r);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    if !ready.is_empty() {
        let (tx, rx) = oneshot::channel();
        s.submit(Work::Score {
            records: ready,
            mode,
            reply: tx,
        })?;
        let mut judged = answer(rx).await?.into_iter();
        for slot in answers.iter_mut().filter(|a| a.is_none()) {
            *slot = judged.next();
        }
    }
    let records: Vec<Record<ScoreAnswer>> = ids
        .into_iter()
        .zip(answers)
        .map(|(id, a)| match a {
            Some(Ok(answer)) => Record::Answer { id, answer },
            Some(Err(error)) => Record::Error { id, error },
            None => Record::Error {
                id,
                error: "not answered".into(),
            },
        })
        .collect();
    if many {
        return Ok(Json(records).into_response());
    }
    match records.into_iter().next() {
        Some(Record::Error { error, .. }) => Err(ApiError::bad_request(error)),
        Some(record) => Ok(Json(record).into_response()),
        None => Err(ApiError::internal("no record answered")),
    }
}

pub async fn rank(State(s): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let started = Instant::now();
    let abandoned = Abandoned::watch(&s.metrics);
    let result = rank_inner(&s, body).await;
    abandoned.answered();
    finish(&s, "/v1/rank", started, result)
}

async fn rank_inner(
    s: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let _ticket = s.admit()?;
    let body: Value = body_json(body)?;
    let id = body.get("id").cloned().unwrap_or(Value::Null);
    let shared = s.clone();
    let (req, input) = blocking(move || {
        let mut req = PairsRequest::parse(&body).map_err(ApiError::bad_request)?;
        let mut inbox = Inbox::new(&shared.policy);
        let input = prepare(
            &shared,
            &mut inbox,
            &req.media_to_load(),
            (shared.rank_resize)(req.task),
        )?;
        // The candidates are judged from the prepared media; the names stay the client's.
        req.media = MediaRequest::default();
        Ok((req, input))
    })
    .await?;
    let n = req.candidates.len();
    let (tx, rx) = oneshot::channel();
    s.submit(Work::Rank {
        req: Box::new(req),
        input,
        reply: tx,
    })?;
    let ranking = answer(rx).await??;
    Ok(Json(rank_answer(id, n, &ranking)).into_response())
}

/// Each candidate's win rate over all its pairs (a tie half a win) and Bradley-Terry
/// strength, the order, and every comparison.
fn rank_answer(id: Value, n: usize, ranking: &Ranking) -> Value {
    let mut wins = vec![0.0; n];
    let mut games = vec![0usize; n];
    for c in &ranking.comparisons {
        wins[c.first] += c.probs.first + 0.5 * c.probs.tie;
        wins[c.second] += c.probs.second + 0.5 * c.probs.tie;
        games[c.first] += 1;
        games[c.second] += 1;
    }
    let strengths = ranking.strengths.as_ref();
    let candidates: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "index": i,
                "win_rate": if games[i] > 0 { wins[i] / games[i] as f64 } else { 0.0 },
                "strength": strengths.and_then(|s| s.strengths.get(i)).copied(),
            })
        })
        .collect();
    let comparisons: Vec<Value> = ranking
        .comparisons
        .iter()
        .map(
            |c| json!({"first": c.first, "second": c.second, "probs": c.probs, "winner": c.winner}),
        )
        .collect();
    json!({
        "id": id,
        "candidates": candidates,
        "order": strengths.map(|s| s.order()),
        "comparisons": comparisons,
    })
}

pub async fn models(State(s): State<AppState>) -> Response {
    let started = Instant::now();
    let body = json!({"object": "list", "data": [{
        "id": s.served_model_name, "object": "model", "created": 0, "owned_by": "unireward",
    }]});
    finish(&s, "/v1/models", started, Ok(Json(body).into_response()))
}

pub async fn health(State(s): State<AppState>) -> Response {
    let started = Instant::now();
    finish(
        &s,
        "/health",
        started,
        Ok(Json(json!({"status": "ok"})).into_response()),
    )
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
