//! How a document is kept in a tenant's vector store, and read back.
//!
//! A document is stored as chunks; each chunk is a point whose payload carries the document
//! id, its index, the chunk text and the document's title and metadata. Chunk ids are derived
//! from (tenant, document id, index), so re-ingesting a document under the same id replaces it
//! in place.
//!
//! Besides its chunks, a document has a text record: one more point (chunk index
//! [`TEXT_INDEX`], the vector of chunk 0) whose payload keeps the text exactly as ingested, so
//! it can be read back (chunks overlap and are trimmed: joining them is not the text).
//! Retrieval reads chunks only ([`chunks_only`]) and listings read chunk 0 only, so neither
//! carries whole texts. A document stored before text records existed has none: its text is
//! then joined from its chunks, overlaps removed ([`join_chunks`]), and marked
//! `text_exact: false`.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::domain::TenantId;
use crate::vector::{Filter, Kind, Point, Record, TenantVectors, VectorError, payload_str};

/// One document in listings.
#[derive(Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "Document")]
pub struct DocumentInfo {
    /// Document id.
    #[schemars(with = "String", extend("format" = "uuid"))]
    pub id: Uuid,
    /// Title, if given.
    pub title: Option<String>,
    /// The metadata given at ingestion.
    pub metadata: Map<String, Value>,
    /// Number of chunks.
    pub chunks: u64,
    /// Ingestion time (Unix seconds).
    pub created_at: i64,
}

/// Chunk id: a UUIDv5 of `<tenant>/<index>` in the document id's namespace. The tenant is
/// part of it so that, in a shared (Partition) collection, a caller who reuses another
/// tenant's document id writes different points instead of overwriting theirs.
pub fn chunk_id(tenant: &TenantId, document: Uuid, index: usize) -> Uuid {
    Uuid::new_v5(&document, format!("{tenant}/{index}").as_bytes())
}

/// `chunk_index` of a document's text record (its chunks count from 0).
pub const TEXT_INDEX: i64 = -1;

/// Id of a document's text record: like [`chunk_id`], per tenant.
pub fn text_record_id(tenant: &TenantId, document: Uuid) -> Uuid {
    Uuid::new_v5(&document, format!("{tenant}/text").as_bytes())
}

/// `filter` narrowed to chunks (text records left out): what retrieval searches.
pub fn chunks_only(filter: Filter) -> Filter {
    filter.at_least("chunk_index", 0)
}

/// A document as `GET /v1/documents/{id}` returns it: its listing entry and its text.
#[derive(Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
#[schemars(rename = "DocumentWithText")]
pub struct StoredDocument {
    /// Id, title, metadata, chunks, creation time.
    #[serde(flatten)]
    pub info: DocumentInfo,
    /// The document's text.
    pub text: String,
    /// `true`: the text exactly as ingested. `false`: a document stored before texts were
    /// kept, whose text is joined from its chunks (overlaps removed; whitespace at chunk
    /// boundaries may differ from the original).
    pub text_exact: bool,
}

/// What is stored of a document besides its chunks.
#[derive(Debug, Clone, Copy)]
pub struct NewDocument<'a> {
    /// Its text, as ingested.
    pub text: &'a str,
    /// Its title, if any.
    pub title: Option<&'a str>,
    /// Its metadata.
    pub metadata: &'a Map<String, Value>,
}

/// The points that store a document: its chunks (index 0..), each with its vector, then its
/// text record (the vector of chunk 0, never retrieved). `chunks` and `vectors` have the same
/// length, at least one.
pub fn document_points(
    tenant: &TenantId,
    id: Uuid,
    doc: &NewDocument<'_>,
    chunks: Vec<String>,
    vectors: Vec<Vec<f32>>,
    now: i64,
) -> Vec<Point> {
    let count = chunks.len();
    let document_bytes = doc.text.len() as u64;
    let as_map = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let record = vectors.first().cloned().map(|vector| Point {
        id: text_record_id(tenant, id),
        vector,
        payload: as_map(json!({
            "document_id": id.to_string(),
            "chunk_index": TEXT_INDEX,
            "document_text": doc.text,
            "created_at": now,
        })),
    });
    chunks
        .into_iter()
        .zip(vectors)
        .enumerate()
        .map(|(i, (text, vector))| Point {
            id: chunk_id(tenant, id, i),
            vector,
            payload: as_map(json!({
                "document_id": id.to_string(),
                "chunk_index": i,
                "chunk_count": count,
                "document_bytes": document_bytes,
                "text": text,
                "title": doc.title,
                "metadata": doc.metadata,
                "created_at": now,
            })),
        })
        .chain(record)
        .collect()
}

/// Reads one of the tenant's documents with its text: the text record's when there is one,
/// else joined from the chunks, overlapping by at most `max_overlap` characters (the
/// chunking overlap). `None` when the tenant has no such document.
pub async fn read_document(
    vectors: &TenantVectors,
    id: Uuid,
    max_overlap: usize,
) -> Result<Option<StoredDocument>, VectorError> {
    let of_doc = || Filter::default().keyword("document_id", id.to_string());
    let (first, _) = vectors
        .scroll(Kind::Docs, of_doc().integer("chunk_index", 0), 1, None)
        .await?;
    let Some(info) = first.first().and_then(info) else {
        return Ok(None);
    };
    let (record, _) = vectors
        .scroll(
            Kind::Docs,
            of_doc().integer("chunk_index", TEXT_INDEX),
            1,
            None,
        )
        .await?;
    if let Some(text) = record
        .first()
        .and_then(|r| payload_str(&r.payload, "document_text"))
    {
        return Ok(Some(StoredDocument {
            info,
            text: text.to_string(),
            text_exact: true,
        }));
    }
    let mut chunks: Vec<(i64, String)> = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = vectors
            .scroll(Kind::Docs, chunks_only(of_doc()), 256, offset)
            .await?;
        chunks.extend(page.iter().filter_map(|r| {
            let index = r.payload.get("chunk_index")?.as_i64()?;
            Some((index, payload_str(&r.payload, "text")?.to_string()))
        }));
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    chunks.sort_by_key(|(index, _)| *index);
    let texts: Vec<String> = chunks.into_iter().map(|(_, t)| t).collect();
    Ok(Some(StoredDocument {
        info,
        text: join_chunks(&texts, max_overlap),
        text_exact: false,
    }))
}

/// Joins consecutive overlapping chunks into one text. Each chunk continues after the
/// longest start of it, of at most `max_overlap` characters (the chunker's overlap), that ends
/// the text so far at a word boundary (the chunker starts every overlap after whitespace);
/// chunks that share nothing are joined by a space.
pub fn join_chunks(chunks: &[String], max_overlap: usize) -> String {
    let mut out = String::new();
    for c in chunks {
        if out.is_empty() {
            out.push_str(c);
            continue;
        }
        let shared = overlap(&out, c, max_overlap);
        if shared == 0 {
            out.push(' ');
        }
        out.push_str(&c[shared..]);
    }
    out
}

/// Byte length of the longest prefix of `next`, of at most `max` characters, that is a suffix
/// of `text` preceded by whitespace there (or by nothing): the prefix function (KMP) of that
/// prefix run over the tail of `text`, then its chain of shorter borders; linear in `max`.
fn overlap(text: &str, next: &str, max: usize) -> usize {
    let pattern: Vec<char> = next.chars().take(max).collect();
    let m = pattern.len();
    if m == 0 {
        return 0;
    }
    let mut fail = vec![0usize; m];
    let mut k = 0;
    for i in 1..m {
        while k > 0 && pattern[i] != pattern[k] {
            k = fail[k - 1];
        }
        if pattern[i] == pattern[k] {
            k += 1;
        }
        fail[i] = k;
    }
    // Only the last `m` characters of `text` can take part in the overlap.
    let start = text.char_indices().rev().nth(m - 1).map_or(0, |(i, _)| i);
    let tail: Vec<char> = text[start..].chars().collect();
    let mut k = 0;
    for &ch in &tail {
        while k > 0 && (k == m || ch != pattern[k]) {
            k = fail[k - 1];
        }
        if ch == pattern[k] {
            k += 1;
        }
    }
    // `k` matched characters end `tail`; shorter matches are the borders of that prefix.
    while k > 0 {
        let before = tail.len() - k;
        let boundary = if before == 0 {
            text[..start]
                .chars()
                .next_back()
                .is_none_or(char::is_whitespace)
        } else {
            tail[before - 1].is_whitespace()
        };
        if boundary {
            break;
        }
        k = fail[k - 1];
    }
    pattern[..k].iter().map(|c| c.len_utf8()).sum()
}

/// A listing entry from a document's chunk 0 (`None` for other points).
pub fn info(r: &Record) -> Option<DocumentInfo> {
    let p = &r.payload;
    Some(DocumentInfo {
        id: payload_str(p, "document_id")?.parse().ok()?,
        title: payload_str(p, "title").map(str::to_string),
        metadata: p
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        chunks: p.get("chunk_count").and_then(Value::as_u64).unwrap_or(0),
        created_at: p.get("created_at").and_then(Value::as_i64).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk;

    #[test]
    fn chunk_ids_differ_per_tenant_for_the_same_document_id() {
        let doc = Uuid::new_v4();
        let a = TenantId::parse("a").expect("id");
        let b = TenantId::parse("b").expect("id");
        assert_ne!(chunk_id(&a, doc, 0), chunk_id(&b, doc, 0));
        assert_eq!(chunk_id(&a, doc, 1), chunk_id(&a, doc, 1));
        assert_ne!(chunk_id(&a, doc, 0), chunk_id(&a, doc, 1));
        assert_ne!(text_record_id(&a, doc), text_record_id(&b, doc));
        assert_ne!(text_record_id(&a, doc), chunk_id(&a, doc, 0));
    }

    #[test]
    fn overlapping_chunks_join_back_into_the_text() {
        // Words repeat (every 37), but not within an overlap.
        let words: Vec<String> = (0..600).map(|i| format!("wörd{}", i % 37)).collect();
        let text = words.join(" ");
        for (size, overlap) in [(200, 50), (120, 59), (80, 0), (300, 10)] {
            let chunks = chunk(&text, size, overlap);
            assert!(chunks.len() > 5, "{size}/{overlap}");
            assert_eq!(join_chunks(&chunks, overlap), text, "{size}/{overlap}");
        }
        // Sentences and paragraphs: cut points prefer them, and the joined text keeps them.
        let text = (0..80)
            .map(|i| format!("Sentence number {i} says something. Another one follows here."))
            .collect::<Vec<_>>()
            .join("\n\n");
        let joined = join_chunks(&chunk(&text, 150, 40), 40);
        assert_eq!(joined, text);
    }

    #[test]
    fn joining_keeps_text_that_only_looks_like_an_overlap() {
        // No real overlap: "b" starting the second chunk also ends the first one, mid-word.
        assert_eq!(
            join_chunks(&["ab".to_string(), "b c".to_string()], 10),
            "ab b c"
        );
        // A real overlap at a word start.
        assert_eq!(
            join_chunks(&["one two".to_string(), "two three".to_string()], 10),
            "one two three"
        );
        // No longer than the chunker's overlap, though more would match.
        assert_eq!(
            join_chunks(&["x y z".to_string(), "y z w".to_string()], 1),
            "x y z y z w"
        );
        assert_eq!(join_chunks(&[], 10), "");
        assert_eq!(join_chunks(&["é".to_string(), "é".to_string()], 10), "é");
    }
}
