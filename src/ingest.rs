//! `tenantry ingest`: uploads files and folders of documents to a tenant's chat API.
//!
//! Each file's document id is derived from its content (a UUIDv5 of its SHA-256), so a re-run
//! asks the API whether that document exists and skips it: an interrupted ingest resumes
//! where it stopped, and unchanged files are never uploaded twice. Plain text and Markdown go
//! as they are; HTML is reduced to its text. Failures are reported at the end and never stop
//! the other files.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Namespace of content-derived document ids.
pub const CONTENT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_1f7e_3b8a_4c2e_9a51_7f0e_2d4b_8c13);

/// Options of one ingest run.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Base URL of the tenant's API, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// The tenant JWT.
    pub token: String,
    /// Files and folders to ingest (folders recursively).
    pub paths: Vec<PathBuf>,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Uploaded (document id, chunks).
    Ingested(Uuid, u64),
    /// Already present with the same content.
    Skipped(Uuid),
    /// Not a supported kind of file.
    Unsupported,
    /// Could not be read or uploaded.
    Failed(String),
}

/// Counts of a run, and the failures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files uploaded.
    pub ingested: usize,
    /// Files already present.
    pub skipped: usize,
    /// Files of unsupported kinds.
    pub unsupported: Vec<PathBuf>,
    /// Files that failed, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A named path does not exist.
    #[error("{0}: no such file or folder")]
    Missing(PathBuf),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The kinds of files ingested.
fn kind(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "txt" | "text" => Some("text"),
        "md" | "markdown" => Some("markdown"),
        "html" | "htm" => Some("html"),
        _ => None,
    }
}

/// Every file under `paths`, sorted, without duplicates.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    let mut out = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(IngestError::Missing(p.clone()));
        }
        walk(p, &mut out);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            out.push(path.to_path_buf()); // reported as a failure when read
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // hidden files and folders (.git, ...)
            }
            walk(&e.path(), out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

/// The text of an HTML document: scripts, styles and tags removed, entities decoded,
/// whitespace folded, block elements turned into line breaks.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < html.len() {
        if bytes[i] == b'<' {
            // Skip whole <script> and <style> elements.
            let mut skipped = false;
            for tag in ["script", "style"] {
                if lower[i + 1..].starts_with(tag) {
                    let close = format!("</{tag}");
                    i = lower[i..]
                        .find(&close)
                        .map(|j| i + j + close.len())
                        .unwrap_or(html.len());
                    i = html[i..].find('>').map(|j| i + j + 1).unwrap_or(html.len());
                    skipped = true;
                    break;
                }
            }
            if skipped {
                continue;
            }
            let end = html[i..].find('>').map(|j| i + j + 1).unwrap_or(html.len());
            let tag = lower[i..end].trim_start_matches(['<', '/']);
            if [
                "p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section",
                "article",
            ]
            .iter()
            .any(|b| tag.starts_with(b) && tag[b.len()..].starts_with(['>', ' ', '/']))
            {
                out.push('\n');
            } else {
                out.push(' ');
            }
            i = end;
        } else {
            let next = html[i..].find('<').map(|j| i + j).unwrap_or(html.len());
            out.push_str(&decode_entities(&html[i..next]));
            i = next;
        }
    }
    // Fold whitespace within lines; keep paragraph breaks.
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        // An entity is short: look for its `;` among the next few characters only.
        let semi = rest
            .char_indices()
            .take_while(|(i, _)| *i < 12)
            .find(|(_, c)| *c == ';')
            .map(|(i, _)| i);
        let Some(semi) = semi else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            "ndash" => Some('–'),
            "mdash" => Some('—'),
            "hellip" => Some('…'),
            "lsquo" => Some('‘'),
            "rsquo" => Some('’'),
            "ldquo" => Some('“'),
            "rdquo" => Some('”'),
            "laquo" => Some('«'),
            "raquo" => Some('»'),
            "copy" => Some('©'),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Document id of a file's content.
pub fn content_id(bytes: &[u8]) -> Uuid {
    Uuid::new_v5(&CONTENT_NAMESPACE, &Sha256::digest(bytes))
}

async fn ingest_one(http: &reqwest::Client, opts: &IngestOptions, path: &Path) -> Outcome {
    let Some(kind) = kind(path) else {
        return Outcome::Unsupported;
    };
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(format!("cannot read: {e}")),
    };
    let Ok(raw) = String::from_utf8(bytes.clone()) else {
        return Outcome::Failed("not UTF-8 text".to_string());
    };
    let text = if kind == "html" {
        html_to_text(&raw)
    } else {
        raw
    };
    if text.trim().is_empty() {
        return Outcome::Failed("no text".to_string());
    }
    let id = content_id(&bytes);
    let base = opts.url.trim_end_matches('/');
    match http
        .get(format!("{base}/v1/documents/{id}"))
        .bearer_auth(&opts.token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => return Outcome::Skipped(id),
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {}
        Ok(r) => return Outcome::Failed(api_error(r).await),
        Err(e) => return Outcome::Failed(format!("request failed: {}", e.without_url())),
    }
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let body = serde_json::json!({
        "id": id,
        "title": title,
        "text": text,
        "metadata": {"source": path.display().to_string(), "kind": kind},
    });
    match http
        .post(format!("{base}/v1/documents"))
        .bearer_auth(&opts.token)
        .json(&body)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            Outcome::Ingested(id, v["chunks"].as_u64().unwrap_or(0))
        }
        Ok(r) => Outcome::Failed(api_error(r).await),
        Err(e) => Outcome::Failed(format!("request failed: {}", e.without_url())),
    }
}

async fn api_error(r: reqwest::Response) -> String {
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    match v["error"]["message"].as_str() {
        Some(m) => format!("{status}: {m}"),
        None => status.to_string(),
    }
}

/// Ingests every supported file under `opts.paths`.
pub async fn run(opts: IngestOptions) -> Result<Report, IngestError> {
    let files = collect_files(&opts.paths)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| IngestError::Client(e.to_string()))?;
    let bar = if opts.progress {
        let b = ProgressBar::new(files.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}") {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let opts = Arc::new(opts);
    let results: Vec<(PathBuf, Outcome)> = futures::stream::iter(files)
        .map(|path| {
            let http = http.clone();
            let opts = opts.clone();
            let bar = bar.clone();
            async move {
                let outcome = ingest_one(&http, &opts, &path).await;
                bar.inc(1);
                if let Outcome::Failed(reason) = &outcome {
                    bar.println(format!("failed: {}: {reason}", path.display()));
                }
                (path, outcome)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut report = Report::default();
    for (path, outcome) in results {
        match outcome {
            Outcome::Ingested(..) => report.ingested += 1,
            Outcome::Skipped(_) => report.skipped += 1,
            Outcome::Unsupported => report.unsupported.push(path),
            Outcome::Failed(reason) => report.failed.push((path, reason)),
        }
    }
    report.unsupported.sort();
    report.failed.sort();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_reduced_to_text() {
        let html = "<html><head><title>T</title><style>p{color:red}</style><script>var x = '<p>';</script></head>\
                    <body><h1>Refunds</h1><p>Within 30&nbsp;days &amp; no   questions.</p><p>Caf&#233; &#x41;</p></body></html>";
        let text = html_to_text(html);
        assert!(text.contains("Refunds"));
        assert!(text.contains("Within 30 days & no questions."), "{text}");
        assert!(text.contains("Café A"), "{text}");
        assert!(!text.contains("color") && !text.contains("var x"), "{text}");
        assert!(text.lines().count() >= 3, "{text}");
        // Never panics on multi-byte text near an ampersand.
        assert_eq!(html_to_text("é&éééééééééé;"), "é&éééééééééé;");
    }

    #[test]
    fn ids_follow_content_not_names() {
        assert_eq!(content_id(b"same"), content_id(b"same"));
        assert_ne!(content_id(b"same"), content_id(b"other"));
    }

    #[test]
    fn walking_skips_hidden_files_and_reports_missing_paths() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("a/.git")).expect("mkdir");
        std::fs::write(dir.path().join("a/x.md"), "x").expect("write");
        std::fs::write(dir.path().join("a/.git/config"), "x").expect("write");
        std::fs::write(dir.path().join("y.txt"), "y").expect("write");
        let files =
            collect_files(&[dir.path().to_path_buf(), dir.path().join("y.txt")]).expect("walk");
        assert_eq!(
            files,
            vec![dir.path().join("a/x.md"), dir.path().join("y.txt")]
        );
        assert!(matches!(
            collect_files(&[dir.path().join("nope")]),
            Err(IngestError::Missing(_))
        ));
    }
}
