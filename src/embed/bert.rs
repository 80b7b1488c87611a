//! The BERT encoder of all-MiniLM-L6-v2 (Hugging Face `BertModel`'s forward pass), on candle's
//! CPU tensors, with one difference in where the weights live: the word-embedding table (half
//! of the model, 47 MB of 91 MB) is not held in memory. A forward pass only ever reads the
//! rows of its own tokens, so they are read from `model.safetensors` when needed (positioned
//! reads served by the OS page cache, shared and reclaimable, not the process's heap). The
//! rest (attention and feed-forward weights, position embeddings) is loaded as usual.
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use candle_core::{DType, Device, Module as _, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// What the encoder needs from `config.json` (a `BertModel` config).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every hidden state (the embedding dimension).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Longest input, in tokens.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The activation: only `gelu` (exact, erf) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".to_string()
}

/// The tensor of `model.safetensors` read on demand.
const WORD_TABLE: &str = "embeddings.word_embeddings.weight";

/// The word-embedding table, read row by row from the weights file.
struct WordTable {
    file: File,
    /// Byte offset of row 0 in the file.
    start: u64,
    vocab: usize,
    hidden: usize,
}

impl WordTable {
    /// Finds the table in the safetensors header of `file` and checks its shape and type.
    fn open(file: File, config: &Config) -> Result<Self, String> {
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > 100 << 20 {
            return Err(format!("header of {header_len} bytes"));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| format!("cannot read the header: {e}"))?;
        #[derive(Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: [u64; 2],
        }
        let mut entries: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| format!("invalid header: {e}"))?;
        let entry: Entry = serde_json::from_value(
            entries
                .remove(WORD_TABLE)
                .ok_or_else(|| format!("no tensor {WORD_TABLE}"))?,
        )
        .map_err(|e| format!("invalid header entry {WORD_TABLE}: {e}"))?;
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        if entry.dtype != "F32" || entry.shape != [vocab, hidden] {
            return Err(format!(
                "{WORD_TABLE} is {} {:?}, expected F32 [{vocab}, {hidden}]",
                entry.dtype, entry.shape
            ));
        }
        let start = 8 + header_len + entry.data_offsets[0];
        let end = 8 + header_len + entry.data_offsets[1];
        let file_len = file
            .metadata()
            .map_err(|e| format!("cannot stat the file: {e}"))?
            .len();
        if end - start != (vocab * hidden * 4) as u64 || end > file_len {
            return Err(format!("{WORD_TABLE} does not fit the file"));
        }
        Ok(Self {
            file,
            start,
            vocab,
            hidden,
        })
    }

    /// Appends the rows of `ids` to `out`.
    fn gather(&self, ids: &[u32], out: &mut Vec<f32>) -> Result<(), String> {
        let row_bytes = self.hidden * 4;
        let mut row = vec![0u8; row_bytes];
        let mut last = None;
        for &id in ids {
            if last != Some(id) {
                if id as usize >= self.vocab {
                    return Err(format!("token id {id} outside the vocabulary"));
                }
                let at = self.start + u64::from(id) * row_bytes as u64;
                self.file
                    .read_exact_at(&mut row, at)
                    .map_err(|e| format!("cannot read the word embeddings: {e}"))?;
                last = Some(id);
            }
            out.extend(
                row.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(())
    }
}

/// One encoder layer: self-attention and the feed-forward block, each with a residual and a
/// LayerNorm after it (post-norm, as BERT).
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> candle_core::Result<Self> {
        let h = c.hidden_size;
        let eps = c.layer_norm_eps;
        let attention = vb.pp("attention");
        Ok(Self {
            query: candle_nn::linear(h, h, attention.pp("self.query"))?,
            key: candle_nn::linear(h, h, attention.pp("self.key"))?,
            value: candle_nn::linear(h, h, attention.pp("self.value"))?,
            attention_out: candle_nn::linear(h, h, attention.pp("output.dense"))?,
            attention_norm: candle_nn::layer_norm(h, eps, attention.pp("output.LayerNorm"))?,
            intermediate: candle_nn::linear(h, c.intermediate_size, vb.pp("intermediate.dense"))?,
            output: candle_nn::linear(c.intermediate_size, h, vb.pp("output.dense"))?,
            output_norm: candle_nn::layer_norm(h, eps, vb.pp("output.LayerNorm"))?,
        })
    }

    /// `x`: (rows, width, hidden); `bias`: (rows, 1, 1, width), 0 for real tokens and the
    /// lowest f32 for padding.
    fn forward(&self, x: &Tensor, bias: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
        let (rows, width, hidden) = x.dims3()?;
        let head_dim = hidden / heads;
        let split = |y: Tensor| {
            y.reshape((rows, width, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (head_dim as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(bias)?)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, width, hidden))?;
        let x = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context)? + x)?)?;
        let y = self.intermediate.forward(&x)?.gelu_erf()?;
        self.output_norm.forward(&(self.output.forward(&y)? + &x)?)
    }
}

/// The encoder: token ids in, one hidden state per token out.
pub struct Bert {
    words: WordTable,
    positions: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    max_len: usize,
    device: Device,
}

impl Bert {
    /// Loads the weights of `path` (a safetensors file) for `config`.
    pub fn load(path: &Path, config: &Config, device: &Device) -> Result<Self, String> {
        if config.hidden_act != "gelu" {
            return Err(format!(
                "activation {:?} is not supported (gelu only)",
                config.hidden_act
            ));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err("hidden_size is not a multiple of num_attention_heads".to_string());
        }
        let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
        let words = WordTable::open(file, config)?;
        let weights = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)
            .map_err(|e| format!("invalid safetensors: {e}"))?;
        let load = || -> candle_core::Result<Self> {
            let h = config.hidden_size;
            let emb = vb.pp("embeddings");
            let layers = (0..config.num_hidden_layers)
                .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
                .collect::<candle_core::Result<_>>()?;
            Ok(Self {
                words,
                positions: emb.get(
                    (config.max_position_embeddings, h),
                    "position_embeddings.weight",
                )?,
                // Every input is a single segment: token type 0.
                token_type: emb.get((2, h), "token_type_embeddings.weight")?.get(0)?,
                embedding_norm: candle_nn::layer_norm(
                    h,
                    config.layer_norm_eps,
                    emb.pp("LayerNorm"),
                )?,
                layers,
                heads: config.num_attention_heads,
                hidden: h,
                max_len: config.max_position_embeddings,
                device: device.clone(),
            })
        };
        load().map_err(|e| format!("does not match the config (BERT): {e}"))
    }

    /// Hidden states (rows, width, hidden) of `ids` (rows × width, row-major, padded with
    /// [PAD]) under `mask` (1 for real tokens, 0 for padding; same layout).
    pub fn forward(
        &self,
        ids: &[u32],
        mask: &[u32],
        rows: usize,
        width: usize,
    ) -> candle_core::Result<Tensor> {
        if width > self.max_len || ids.len() != rows * width || mask.len() != ids.len() {
            candle_core::bail!("batch of {rows}×{width} does not fit the model");
        }
        let mut embedded = Vec::with_capacity(ids.len() * self.hidden);
        self.words
            .gather(ids, &mut embedded)
            .map_err(candle_core::Error::msg)?;
        let x = Tensor::from_vec(embedded, (rows, width, self.hidden), &self.device)?
            .broadcast_add(&self.positions.narrow(0, 0, width)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;
        let bias: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 0 { f32::MIN } else { 0.0 })
            .collect();
        let bias = Tensor::from_vec(bias, (rows, 1, 1, width), &self.device)?;
        for layer in &self.layers {
            x = layer.forward(&x, &bias, self.heads)?;
        }
        Ok(x)
    }
}
