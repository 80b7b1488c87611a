//! `tenantry export` and `tenantry import`: a tenant's documents as JSONL, through the public
//! API with the tenant's token.
//!
//! One document per line, `{"id", "title", "text", "metadata"}` as `GET /v1/documents/{id}`
//! has them, in listing order. Export pages through `GET /v1/documents` and reads each
//! document; it writes to stdout, or to a file replaced only once the whole export is written.
//! Import sends each line to `POST /v1/documents` under its id, unless a document with that id
//! is already there: an interrupted import, run again, skips what it stored and resumes (a line
//! without an id gets one derived from its text, as `tenantry ingest` does). A line that cannot
//! be read or stored is reported with its number; the others go on.
use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt as _;
use uuid::Uuid;

/// Where a tenant's API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// The tenant JWT.
    pub token: String,
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Document id (optional on import: derived from the text when absent).
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Title, if any.
    #[serde(default)]
    pub title: Option<String>,
    /// The document's text.
    pub text: String,
    /// Its metadata.
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The API refused or failed a request the export needs.
    #[error("{what}: {reason}")]
    Api {
        /// The request.
        what: String,
        /// Status and message, or the transport error.
        reason: String,
    },
    /// Writing the export or reading the import failed.
    #[error("{path}: {source}")]
    Io {
        /// The file (`-` for stdin/stdout).
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Documents written.
    pub documents: usize,
    /// Of those, documents whose text was joined from chunks (`text_exact: false`).
    pub inexact: usize,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Documents stored.
    pub imported: usize,
    /// Documents already present under their id.
    pub skipped: usize,
    /// Lines that failed (line number from 1, reason).
    pub failed: Vec<(usize, String)>,
}

fn client() -> Result<reqwest::Client, TransferError> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TransferError::Client(e.to_string()))
}

/// Progress on stderr: a bar on a terminal, otherwise a line now and then (at most one per
/// `every` items, and the last), or nothing.
struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    every: u64,
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new(show: bool, what: &'static str) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0);
            if let Ok(style) =
                ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {what}"))
            {
                b.set_style(style);
            }
            b
        });
        Self {
            bar,
            what,
            every: if show { 25 } else { 0 },
            done: 0.into(),
            total: 0.into(),
        }
    }

    fn set_total(&self, total: u64) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    fn inc(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.inc(1);
        } else if self.every > 0 && done.is_multiple_of(self.every) {
            self.line(done);
        }
    }

    fn line(&self, done: u64) {
        match self.total.load(std::sync::atomic::Ordering::Relaxed) {
            0 => eprintln!("{done} {}", self.what),
            total => eprintln!("{done}/{total} {}", self.what),
        }
    }

    fn println(&self, message: String) {
        match &self.bar {
            Some(b) => b.println(message),
            None => eprintln!("{message}"),
        }
    }

    fn finish(&self) {
        let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
        match &self.bar {
            Some(b) => b.finish_and_clear(),
            None if self.every > 0 && !done.is_multiple_of(self.every) => self.line(done),
            None => {}
        }
    }
}

async fn api_error(r: reqwest::Response) -> String {
    let status = r.status();
    let v: Value = r.json().await.unwrap_or_default();
    match v["error"]["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// GETs `path` as JSON; `None` on 404.
async fn get_json(
    http: &reqwest::Client,
    target: &Target,
    path: &str,
) -> Result<Option<Value>, String> {
    let base = target.url.trim_end_matches('/');
    let r = http
        .get(format!("{base}{path}"))
        .bearer_auth(&target.token)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !r.status().is_success() {
        return Err(api_error(r).await);
    }
    r.json()
        .await
        .map(Some)
        .map_err(|e| format!("unreadable answer: {}", e.without_url()))
}

/// Writes every document of the tenant to `out` as JSONL; `progress` shows progress on stderr.
pub async fn export(
    target: &Target,
    out: &mut (dyn std::io::Write + Send),
    progress: bool,
) -> Result<ExportReport, TransferError> {
    let http = client()?;
    let api = |what: &str, reason: String| TransferError::Api {
        what: what.to_string(),
        reason,
    };
    let bar = Progress::new(progress, "documents exported");
    // The count is for the progress only: documents may come and go during the export.
    if let Ok(Some(usage)) = get_json(&http, target, "/v1/usage").await
        && let Some(n) = usage["storage"]["documents"].as_u64()
    {
        bar.set_total(n);
    }
    let mut report = ExportReport::default();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/documents?limit=100&cursor={c}"),
            None => "/v1/documents?limit=100".to_string(),
        };
        let page = get_json(&http, target, &path)
            .await
            .map_err(|e| api("GET /v1/documents", e))?
            .ok_or_else(|| api("GET /v1/documents", "404 Not Found".into()))?;
        let ids: Vec<String> = page["documents"]
            .as_array()
            .map(|docs| {
                docs.iter()
                    .filter_map(|d| d["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // Read a few documents at once, written in listing order.
        let docs: Vec<Option<Value>> = futures::stream::iter(ids)
            .map(|id| {
                let http = http.clone();
                async move {
                    get_json(&http, target, &format!("/v1/documents/{id}"))
                        .await
                        .map_err(|e| api(&format!("GET /v1/documents/{id}"), e))
                }
            })
            .buffered(4)
            .try_collect()
            .await?;
        // A document deleted since the listing (None) is left out.
        for doc in docs.into_iter().flatten() {
            let line = Line {
                id: doc["id"].as_str().and_then(|s| s.parse().ok()),
                title: doc["title"].as_str().map(str::to_string),
                text: doc["text"].as_str().unwrap_or_default().to_string(),
                metadata: doc["metadata"].as_object().cloned().unwrap_or_default(),
            };
            if doc["text_exact"] == Value::Bool(false) {
                report.inexact += 1;
            }
            let mut json = serde_json::to_vec(&line).map_err(|e| TransferError::Io {
                path: "-".into(),
                source: e.into(),
            })?;
            json.push(b'\n');
            out.write_all(&json).map_err(|source| TransferError::Io {
                path: "-".into(),
                source,
            })?;
            report.documents += 1;
            bar.inc();
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    out.flush().map_err(|source| TransferError::Io {
        path: "-".into(),
        source,
    })?;
    bar.finish();
    Ok(report)
}

/// Exports into `path`, replaced only when the export is complete (written to a temporary
/// file next to it, synced, then renamed over it).
pub async fn export_to_file(
    target: &Target,
    path: &Path,
    progress: bool,
) -> Result<ExportReport, TransferError> {
    let io = |source| TransferError::Io {
        path: path.display().to_string(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "export".to_string());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    let result = export(target, &mut out, progress).await;
    let finished = result.and_then(|report| {
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(report)
    });
    if finished.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    finished
}

/// Non-empty lines of a file (for the progress total), read a block at a time.
fn count_lines(path: &Path) -> std::io::Result<u64> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut lines, mut in_line) = (0, false);
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(lines + u64::from(in_line));
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                lines += u64::from(in_line);
                in_line = false;
            } else if !b.is_ascii_whitespace() {
                in_line = true;
            }
        }
    }
}

/// Imports one line: skipped when its id is present, stored otherwise.
async fn import_line(http: &reqwest::Client, target: &Target, text: &str) -> Result<bool, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not a document: {e}"))?;
    if line.text.trim().is_empty() {
        return Err("no text".to_string());
    }
    let id = line
        .id
        .unwrap_or_else(|| crate::ingest::content_id(line.text.as_bytes()));
    if get_json(http, target, &format!("/v1/documents/{id}"))
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let body = serde_json::json!({
        "id": id,
        "title": line.title,
        "text": line.text,
        "metadata": line.metadata,
    });
    let base = target.url.trim_end_matches('/');
    let r = http
        .post(format!("{base}/v1/documents"))
        .bearer_auth(&target.token)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", e.without_url()))?;
    if r.status().is_success() {
        Ok(true)
    } else {
        Err(api_error(r).await)
    }
}

/// Imports the JSONL of `input` (`None`: stdin), `concurrency` lines at a time.
pub async fn import(
    target: &Target,
    input: Option<&Path>,
    concurrency: usize,
    progress: bool,
) -> Result<ImportReport, TransferError> {
    let name = input.map_or_else(|| "-".to_string(), |p| p.display().to_string());
    let io = |source| TransferError::Io {
        path: name.clone(),
        source,
    };
    let reader: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match input {
        Some(p) => Box::new(tokio::fs::File::open(p).await.map_err(io)?),
        None => Box::new(tokio::io::stdin()),
    };
    let http = client()?;
    let bar = Arc::new(Progress::new(progress, "lines imported"));
    if let Some(p) = input
        && let Ok(n) = count_lines(p)
    {
        bar.set_total(n);
    }
    let mut lines = tokio::io::BufReader::new(reader).lines();
    let mut numbered = Vec::new();
    let mut n = 0;
    let mut report = ImportReport::default();
    let flush = async |batch: Vec<(usize, String)>, report: &mut ImportReport| {
        let outcomes: Vec<(usize, Result<bool, String>)> = futures::stream::iter(batch)
            .map(|(n, text)| {
                let http = http.clone();
                let bar = bar.clone();
                async move {
                    let outcome = import_line(&http, target, &text).await;
                    if let Err(reason) = &outcome {
                        bar.println(format!("failed: line {n}: {reason}"));
                    }
                    bar.inc();
                    (n, outcome)
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (n, outcome) in outcomes {
            match outcome {
                Ok(true) => report.imported += 1,
                Ok(false) => report.skipped += 1,
                Err(reason) => report.failed.push((n, reason)),
            }
        }
    };
    // Lines go in batches, so a large file is never held whole in memory.
    while let Some(text) = lines.next_line().await.map_err(io)? {
        n += 1;
        if text.trim().is_empty() {
            continue;
        }
        numbered.push((n, text));
        if numbered.len() >= 64 {
            flush(std::mem::take(&mut numbered), &mut report).await;
        }
    }
    flush(numbered, &mut report).await;
    bar.finish();
    report.failed.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_non_empty_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{}\n\n  \n{}\n{}").expect("write");
        assert_eq!(count_lines(&p).expect("count"), 3);
        std::fs::write(&p, "").expect("write");
        assert_eq!(count_lines(&p).expect("count"), 0);
    }

    #[test]
    fn lines_round_trip_and_refuse_unknown_fields() {
        let line = Line {
            id: Some(Uuid::new_v4()),
            title: Some("t".into()),
            text: "x\ny".into(),
            metadata: Map::from_iter([("k".to_string(), Value::from(1))]),
        };
        let json = serde_json::to_string(&line).expect("json");
        assert!(!json.contains('\n'), "one line: {json}");
        assert_eq!(serde_json::from_str::<Line>(&json).expect("parse"), line);
        let minimal: Line = serde_json::from_str(r#"{"text": "only"}"#).expect("parse");
        assert_eq!((minimal.id, minimal.title), (None, None));
        assert!(serde_json::from_str::<Line>(r#"{"text": "x", "extra": 1}"#).is_err());
        assert!(serde_json::from_str::<Line>(r#"{"id": "nope", "text": "x"}"#).is_err());
    }
}
