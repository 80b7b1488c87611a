//! `POST /v1/embeddings`: the tenant's texts through `serve`'s embedding model, charged to the
//! tenant's token quota: admitted before the texts are tokenized, charged their tokens once
//! the embedding may have been computed (also when it failed or the client went away), refunded
//! only when the embedding endpoint could not be reached.
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use serde_json::Value;
use tracing::Instrument as _;

use super::params::invalid_param;
use super::types::{Embedding, EmbeddingUsage, EmbeddingVector, EmbeddingsBody, List};
use crate::api::chat::answer_headers;
use crate::api::{ApiError, ApiJson, AppState, Caller};
use crate::metrics::{RequestRecord, RequestStatus};
use crate::quota::tokens;

/// Most inputs per embeddings request (as OpenAI).
const MAX_INPUTS: usize = 2048;

/// The inputs of an embeddings request.
enum Inputs {
    /// Texts.
    Texts(Vec<String>),
    /// Token arrays (cl100k_base ids) and their decoded texts.
    Tokens(Vec<Vec<u32>>, Vec<String>),
}

/// One token array (`param` names it in errors): cl100k_base ids that decode.
fn token_array(items: &[Value], param: &str) -> Result<Vec<u32>, ApiError> {
    if items.is_empty() {
        return Err(invalid_param(param, "a token array must not be empty"));
    }
    items
        .iter()
        .map(|v| {
            // An integral float (`3908.0`) is an integer too, as JSON Schema counts them.
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                        .map(|f| f as u64)
                })
                .and_then(|id| u32::try_from(id).ok())
                .filter(|&id| id <= tokens::CL100K_MAX_TEXT_TOKEN)
                .ok_or_else(|| {
                    invalid_param(
                        "input",
                        format!(
                            "token ids must be cl100k_base text tokens (0 to {}); {v} is not",
                            tokens::CL100K_MAX_TEXT_TOKEN
                        ),
                    )
                })
        })
        .collect()
}

/// The inputs to embed: a string, an array of strings, an array of token ids or an array of
/// token arrays (as OpenAI accepts them); none empty.
fn inputs(input: Value) -> Result<Inputs, ApiError> {
    let refused = || {
        invalid_param(
            "input",
            "input must be a string, an array of strings, an array of token ids or an array of \
             token arrays",
        )
    };
    let inputs = match input {
        Value::String(s) => Inputs::Texts(vec![s]),
        Value::Array(items) if items.iter().all(Value::is_string) => Inputs::Texts(
            items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            Inputs::Tokens(vec![token_array(&items, "input")?], Vec::new())
        }
        Value::Array(items) if items.iter().all(Value::is_array) => {
            let arrays = items
                .iter()
                .enumerate()
                .map(|(i, a)| match a.as_array() {
                    Some(a) if a.iter().all(Value::is_number) => {
                        token_array(a, &format!("input[{i}]"))
                    }
                    _ => Err(refused()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Inputs::Tokens(arrays, Vec::new())
        }
        _ => return Err(refused()),
    };
    let count = match &inputs {
        Inputs::Texts(t) => t.len(),
        Inputs::Tokens(t, _) => t.len(),
    };
    if count == 0 || count > MAX_INPUTS {
        return Err(invalid_param(
            "input",
            format!("input must hold between 1 and {MAX_INPUTS} inputs"),
        ));
    }
    match inputs {
        Inputs::Texts(texts) => {
            if let Some(i) = texts.iter().position(String::is_empty) {
                return Err(invalid_param(
                    &format!("input[{i}]"),
                    "input texts must not be empty",
                ));
            }
            Ok(Inputs::Texts(texts))
        }
        Inputs::Tokens(ids, _) => {
            let texts = ids
                .iter()
                .map(|t| tokens::decode_cl100k(t).ok_or_else(refused))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Inputs::Tokens(ids, texts))
        }
    }
}

/// Whether to answer base64 (`encoding_format`).
fn base64_format(encoding_format: Option<&str>) -> Result<bool, ApiError> {
    match encoding_format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(invalid_param(
            "encoding_format",
            format!("encoding_format must be float or base64, not {other:?}"),
        )),
    }
}

fn encode(v: &[f32], base64: bool) -> EmbeddingVector {
    if base64 {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        EmbeddingVector::Float(v.iter().map(|&x| f64::from(x)).collect())
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EmbeddingsBody>,
) -> Result<(HeaderMap, ApiJson<List<Embedding>>), ApiError> {
    let embedding_model = state.embedder.model().to_string();
    // An alias names the embedding model too (`text-embedding-3-small` → the local model).
    if let Some(asked) = &body.model
        && caller.tenant.resolve_model(asked) != embedding_model
    {
        return Err(ApiError::ModelNotAllowed(asked.clone()));
    }
    let model = embedding_model.clone();
    let inputs = inputs(body.input)?;
    let base64 = base64_format(body.encoding_format.as_deref())?;
    let dimension = state.embedder.dimension();
    if body.dimensions.is_some_and(|d| d != dimension) {
        return Err(invalid_param(
            "dimensions",
            format!("{model} has {dimension} dimensions; other sizes are not supported"),
        ));
    }
    let tenant_id = caller.tenant.id.as_str();
    let services = state.rag_services();
    // Refused before tokenizing (up to a whole request body of text) when nothing could fit.
    services.admit(&caller.tenant, 1).await?;
    let used: u64 = match &inputs {
        // Token arrays are counted as sent.
        Inputs::Tokens(ids, _) => ids.iter().map(|t| t.len() as u64).sum(),
        Inputs::Texts(texts) => {
            let counted = texts.clone();
            let counting_model = model.clone();
            tokio::task::spawn_blocking(move || {
                counted
                    .iter()
                    .map(|t| tokens::count(&counting_model, t))
                    .sum()
            })
            .await
            .map_err(|e| ApiError::Internal(format!("token counting failed: {e}")))?
        }
    };
    let reservation = services.reserve(&caller.tenant, used).await?;
    let headers = answer_headers(reservation.statuses().as_deref(), None);
    let started = Instant::now();
    // Dropped here (client gone, whole-request timeout), the reservation is charged: the work
    // may have been done.
    let span = tracing::info_span!("embed", tenant_id);
    let result = match inputs {
        Inputs::Texts(texts) => state.embedder.embed(texts).instrument(span).await,
        Inputs::Tokens(ids, texts) => {
            state
                .embedder
                .embed_tokens(ids, texts)
                .instrument(span)
                .await
        }
    };
    let (status, prompt_tokens) = match &result {
        Ok(_) => (RequestStatus::Success, used),
        Err(e) if e.billable() => (RequestStatus::Error, used),
        Err(_) => (RequestStatus::Error, 0),
    };
    match &result {
        Err(e) if !e.billable() => reservation.release().await,
        _ => {
            reservation.settle(used).await;
        }
    }
    state.metrics.record(&RequestRecord {
        tenant_id,
        model: &model,
        status,
        seconds: started.elapsed().as_secs_f64(),
        prompt_tokens,
        completion_tokens: 0,
    });
    let data = result?
        .iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding",
            index,
            embedding: encode(v, base64),
        })
        .collect();
    Ok((
        headers,
        ApiJson(List {
            object: "list",
            data,
            model: Some(model),
            usage: Some(EmbeddingUsage {
                prompt_tokens: used,
                total_tokens: used,
            }),
        }),
    ))
}
