//! Prompt-token estimates with OpenAI's tokenizers (tiktoken's `o200k_base` / `cl100k_base`,
//! chosen by model name; their vocabularies are compiled into the binary, no download).
//!
//! Models tiktoken does not know (Llama, Mistral, ... behind vLLM or Ollama) are counted with
//! `o200k_base`; their own tokenizers differ by some percent, which settling to the reported
//! `usage` corrects.
//!
//! Counting needs only each token's bytes and rank, so a vocabulary is kept compact
//! ([`Vocab`]: one byte arena, an offset per rank, one hash table of keys borrowed from the
//! arena; about 8 MB for `o200k_base`) instead of tiktoken-rs's encoder, decoder and sorted
//! copies (about 46 MB for `o200k_base` and 24 MB for `cl100k_base`, resident for the life of
//! the process). tiktoken-rs stays the source of the vocabularies, the pre-tokenizer patterns,
//! the special tokens and the model mapping: a vocabulary is read out of its `CoreBPE` once,
//! which is then dropped. The unit tests check every count against tiktoken-rs.
use std::collections::HashMap;
use std::sync::OnceLock;

use rustc_hash::FxBuildHasher;
use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use crate::llm::Message;

/// Framing tokens per chat message (OpenAI's cookbook: `<|start|>role\n ... <|end|>`).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens that prime every reply (`<|start|>assistant<|message|>`).
pub const TOKENS_PER_REPLY: u64 = 3;

/// Share of a prompt estimate reserved on top of it, in percent: an upstream that counts with
/// another tokenizer (a fallback model, a local model behind vLLM or Ollama) rarely differs
/// by more, so its count of the prompt stays within the reservation.
pub const PROMPT_MARGIN_PERCENT: u64 = 25;

/// A prompt estimate with its margin (rounded up): what is reserved for the prompt.
pub fn with_margin(prompt: u64) -> u64 {
    prompt + (prompt * PROMPT_MARGIN_PERCENT).div_ceil(100)
}

/// The tokenizer used for `model`.
pub fn tokenizer_for(model: &str) -> Tokenizer {
    match get_tokenizer(model) {
        Some(t @ (Tokenizer::Cl100kBase | Tokenizer::O200kBase | Tokenizer::O200kHarmony)) => t,
        _ => Tokenizer::O200kBase,
    }
}

/// The pre-tokenizer of `cl100k_base` (tiktoken's pattern; possessive quantifiers and a
/// look-ahead, hence `fancy_regex`).
const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

/// A tokenizer's vocabulary, compact: every token's bytes in one arena (`offsets[rank]` ..
/// `offsets[rank + 1]`), a hash table from bytes to rank, the special tokens, the pattern.
pub struct Vocab {
    arena: &'static [u8],
    offsets: Vec<u32>,
    ranks: HashMap<&'static [u8], u32, FxBuildHasher>,
    special: HashMap<&'static str, u32, FxBuildHasher>,
    pattern: fancy_regex::Regex,
}

impl Vocab {
    /// Reads `bpe`'s vocabulary (ranks `0..` until the first gap after the last token) and
    /// special tokens. The arena is leaked: vocabularies are process-wide singletons.
    fn from_core(bpe: &CoreBPE, pattern: &str) -> Self {
        let mut arena = Vec::with_capacity(2 << 20);
        let mut offsets = vec![0u32];
        let specials: Vec<(String, u32)> = bpe
            .special_tokens()
            .into_iter()
            .map(|t| {
                let ids = bpe.encode_with_special_tokens(t);
                debug_assert_eq!(ids.len(), 1, "special token {t}");
                (t.to_owned(), ids[0])
            })
            .collect();
        let first_special = specials.iter().map(|(_, r)| *r).min().unwrap_or(u32::MAX);
        let mut rank = 0u32;
        while rank < first_special {
            match bpe.decode_bytes(&[rank]) {
                Ok(bytes) => arena.extend_from_slice(&bytes),
                // A rank without a token (none in the OpenAI vocabularies below their special
                // tokens; past the last token the loop ends).
                Err(_) if rank > 0 && bpe.decode_bytes(&[rank + 1]).is_err() => break,
                Err(_) => {}
            }
            offsets.push(u32::try_from(arena.len()).expect("vocabulary under 4 GiB"));
            rank += 1;
        }
        let arena: &'static [u8] = Box::leak(arena.into_boxed_slice());
        let mut ranks = HashMap::with_capacity_and_hasher(offsets.len(), FxBuildHasher);
        for (rank, w) in offsets.windows(2).enumerate() {
            if w[1] > w[0] {
                ranks.insert(&arena[w[0] as usize..w[1] as usize], rank as u32);
            }
        }
        let special = specials
            .into_iter()
            .map(|(t, r)| (&*Box::leak(t.into_boxed_str()), r))
            .collect();
        Self {
            arena,
            offsets,
            ranks,
            special,
            pattern: fancy_regex::Regex::new(pattern).expect("tiktoken's pattern compiles"),
        }
    }

    /// Tokens of `text`, special tokens (`<|endoftext|>`, ...) counted as one each, as
    /// tiktoken's `encode_with_special_tokens` does.
    pub fn count(&self, text: &str) -> u64 {
        let mut total = 0;
        let mut rest = text;
        while let Some((before, after)) = self.split_special(rest) {
            total += self.count_ordinary(before) + 1;
            rest = after;
        }
        total + self.count_ordinary(rest)
    }

    /// The text before the first special token of `text` and the text after it.
    fn split_special<'t>(&self, text: &'t str) -> Option<(&'t str, &'t str)> {
        let mut from = 0;
        while let Some(at) = text[from..].find("<|") {
            let start = from + at;
            let len = text[start + 2..].find("|>")?;
            let end = start + 2 + len + 2;
            if self.special.contains_key(&text[start..end]) {
                return Some((&text[..start], &text[end..]));
            }
            from = start + 2;
        }
        None
    }

    fn count_ordinary(&self, text: &str) -> u64 {
        let mut total = 0u64;
        for piece in self.pattern.find_iter(text) {
            // The pattern cannot fail on valid UTF-8 short of its backtrack limit; a piece it
            // gives up on is counted by its bytes (an over-estimate, never under).
            let Ok(piece) = piece else {
                return total + text.len() as u64;
            };
            let bytes = piece.as_str().as_bytes();
            total += if self.ranks.contains_key(bytes) {
                1
            } else {
                self.merge_count(bytes) as u64
            };
        }
        total
    }

    fn rank(&self, bytes: &[u8]) -> u32 {
        self.ranks.get(bytes).copied().unwrap_or(u32::MAX)
    }

    /// Byte-pair encoding of one piece: start from single bytes and repeatedly join the
    /// adjacent pair whose joined bytes have the lowest rank; the parts left are the tokens.
    fn merge_count(&self, piece: &[u8]) -> usize {
        if piece.len() < 2 {
            return piece.len();
        }
        // (start of the part, rank of this part joined with the next one)
        let mut parts: Vec<(usize, u32)> = (0..piece.len())
            .map(|i| {
                let pair = piece.get(i..i + 2).map_or(u32::MAX, |p| self.rank(p));
                (i, pair)
            })
            .collect();
        parts.push((piece.len(), u32::MAX));
        // `parts[i]` joined with `parts[i + 1]`: the bytes up to `parts[i + 2]`.
        let joined = |parts: &[(usize, u32)], i: usize| -> u32 {
            if i + 2 < parts.len() {
                self.rank(&piece[parts[i].0..parts[i + 2].0])
            } else {
                u32::MAX
            }
        };
        loop {
            let (i, best) = parts[..parts.len() - 1]
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, r))| *r)
                .map(|(i, (_, r))| (i, *r))
                .expect("at least one part");
            if best == u32::MAX {
                break;
            }
            parts.remove(i + 1);
            parts[i].1 = joined(&parts, i);
            if i > 0 {
                parts[i - 1].1 = joined(&parts, i - 1);
            }
        }
        parts.len() - 1
    }

    /// The bytes of `ids` (special tokens included), or the first id that is no token.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, u32> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.offsets.get(id as usize..id as usize + 2) {
                Some(&[a, b]) if b > a => {
                    out.extend_from_slice(&self.arena[a as usize..b as usize])
                }
                _ => match self.special.iter().find(|(_, r)| **r == id) {
                    Some((t, _)) => out.extend_from_slice(t.as_bytes()),
                    None => return Err(id),
                },
            }
        }
        Ok(out)
    }
}

/// The vocabulary of `tokenizer` (`cl100k_base`, `o200k_base` or `o200k_harmony`), built on
/// first use (a few hundred ms) and kept.
pub fn vocab(tokenizer: Tokenizer) -> &'static Vocab {
    static CL100K: OnceLock<Vocab> = OnceLock::new();
    static O200K: OnceLock<Vocab> = OnceLock::new();
    static HARMONY: OnceLock<Vocab> = OnceLock::new();
    let o200k = tiktoken_rs::O200K_BASE_PAT_STR;
    match tokenizer {
        Tokenizer::Cl100kBase => CL100K.get_or_init(|| {
            Vocab::from_core(
                &tiktoken_rs::cl100k_base().expect("cl100k_base"),
                CL100K_PATTERN,
            )
        }),
        Tokenizer::O200kHarmony => HARMONY.get_or_init(|| {
            Vocab::from_core(&tiktoken_rs::o200k_harmony().expect("o200k_harmony"), o200k)
        }),
        _ => O200K.get_or_init(|| {
            Vocab::from_core(&tiktoken_rs::o200k_base().expect("o200k_base"), o200k)
        }),
    }
}

/// The largest cl100k_base id of a text token (ids above are special tokens or unassigned).
pub const CL100K_MAX_TEXT_TOKEN: u32 = 100_255;

/// The text of cl100k_base token ids (what OpenAI clients encode embedding inputs with);
/// None when an id is not a text token. A sequence that splits a character is decoded with
/// U+FFFD in its place.
pub fn decode_cl100k(ids: &[u32]) -> Option<String> {
    if ids.iter().any(|&id| id > CL100K_MAX_TEXT_TOKEN) {
        return None;
    }
    let bytes = vocab(Tokenizer::Cl100kBase).decode(ids).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Tokens of `text` for `model`.
pub fn count(model: &str, text: &str) -> u64 {
    vocab(tokenizer_for(model)).count(text)
}

/// Tokens of the JSON text of a message's other fields (tool calls, tool call id).
fn extra_tokens(vocab: &Vocab, extra: &serde_json::Map<String, serde_json::Value>) -> u64 {
    if extra.is_empty() {
        return 0;
    }
    vocab.count(&serde_json::to_string(extra).unwrap_or_default())
}

/// Request parameters that are part of the prompt the model reads: the tool definitions, the
/// tool choice and the response format's schema.
pub const PROMPT_PARAMS: [&str; 3] = ["tools", "tool_choice", "response_format"];

/// Prompt tokens of a whole chat request: its messages ([`prompt_tokens`]) plus the JSON text
/// of its [`PROMPT_PARAMS`] (an upstream puts tool definitions and schemas in the prompt).
pub fn request_prompt_tokens(
    model: &str,
    messages: &[Message],
    params: &serde_json::Map<String, serde_json::Value>,
) -> u64 {
    let vocab = vocab(tokenizer_for(model));
    let params: u64 = PROMPT_PARAMS
        .iter()
        .filter_map(|k| params.get(*k))
        .map(|v| vocab.count(&serde_json::to_string(v).unwrap_or_default()))
        .sum();
    prompt_tokens(model, messages) + params
}

/// Prompt tokens of a chat request: every message's role and content plus the framing, as
/// OpenAI counts them.
pub fn prompt_tokens(model: &str, messages: &[Message]) -> u64 {
    let vocab = vocab(tokenizer_for(model));
    let per_message: u64 = messages
        .iter()
        .map(|m| {
            TOKENS_PER_MESSAGE
                + vocab.count(&m.role)
                + vocab.count(&m.content)
                + extra_tokens(vocab, &m.extra)
        })
        .sum();
    per_message + TOKENS_PER_REPLY
}

/// Loads the vocabularies (a few hundred ms, once) so the first request does not pay for it.
pub fn warm_up() {
    let _ = vocab(Tokenizer::O200kBase);
    let _ = vocab(Tokenizer::Cl100kBase);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_model_family_tokenizer() {
        assert_eq!(tokenizer_for("gpt-4o-mini"), Tokenizer::O200kBase);
        assert_eq!(tokenizer_for("gpt-4"), Tokenizer::Cl100kBase);
        assert_eq!(tokenizer_for("gpt-3.5-turbo"), Tokenizer::Cl100kBase);
        assert_eq!(tokenizer_for("llama-3.1-8b-instruct"), Tokenizer::O200kBase);
    }

    #[test]
    fn counts_like_openai() {
        // Known values of the real tokenizers.
        assert_eq!(count("gpt-4", "hello world"), 2);
        assert_eq!(count("gpt-4", "tiktoken is great!"), 6);
        let msgs = vec![
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", "hello world"),
        ];
        let expected = 2 * TOKENS_PER_MESSAGE
            + count("gpt-4o", "system")
            + count("gpt-4o", "You are a helpful assistant.")
            + count("gpt-4o", "user")
            + 2
            + TOKENS_PER_REPLY;
        assert_eq!(prompt_tokens("gpt-4o", &msgs), expected);
    }

    /// Texts of every kind the pre-tokenizers treat differently: words, contractions, digits,
    /// punctuation runs, whitespace runs and newlines, non-Latin scripts, emoji (multi-byte
    /// pieces that need merging), code, special tokens and their look-alikes.
    fn corpus() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            " ",
            "hello world",
            "What is the refund policy? Acme customers may return any product within 30 days.",
            "I'm sure they'll've done it; DON'T you THINK'S so?",
            "1234567890 3.14159 1,000,000 0x1F 2026-12-02T14:30:00Z",
            "   leading and trailing spaces   \n\n\n\tindented\r\nwindows\r\n",
            "Ünïcödé wörds, naïve café, Straße — “quotes” and ‘apostrophes’…",
            "日本語のテキストと中文文本，还有한국어 텍스트. Привет, мир! مرحبا بالعالم",
            "emoji 👍🏽 👨‍👩‍👧‍👦 🇩🇪 and symbols ∑∫√ ©®™",
            "fn main() {\n    let x: Vec<u8> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
            "<|endoftext|>between<|endofprompt|> and <|not_special|> <| |> <|",
            "a<|endoftext|><|endoftext|>b<|fim_prefix|>c<|start|>d",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "!!!???...---___***+++===///\\\\|||",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Pseudo-random byte soup over a mixed alphabet (fixed seed): long unknown pieces.
        let alphabet: Vec<char> = "ab cdé\n日🙂0'9.,<|>xyzZ\t".chars().collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in [17, 64, 301, 1200] {
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            texts.push(text);
        }
        texts
    }

    #[test]
    fn counts_exactly_as_tiktoken_does() {
        for (tokenizer, reference) in [
            (
                Tokenizer::Cl100kBase,
                tiktoken_rs::cl100k_base().expect("cl100k"),
            ),
            (
                Tokenizer::O200kBase,
                tiktoken_rs::o200k_base().expect("o200k"),
            ),
            (
                Tokenizer::O200kHarmony,
                tiktoken_rs::o200k_harmony().expect("harmony"),
            ),
        ] {
            let vocab = vocab(tokenizer);
            for text in corpus() {
                let ids = reference.encode_with_special_tokens(&text);
                assert_eq!(
                    vocab.count(&text),
                    ids.len() as u64,
                    "{tokenizer:?} on {text:?}"
                );
                assert_eq!(
                    vocab.decode(&ids).expect("decodes"),
                    text.as_bytes(),
                    "{tokenizer:?} decodes {text:?}"
                );
            }
        }
    }

    #[test]
    fn decode_refuses_ids_outside_the_vocabulary() {
        let vocab = vocab(Tokenizer::Cl100kBase);
        assert_eq!(vocab.decode(&[15339, 1917]), Ok(b"hello world".to_vec()));
        assert_eq!(vocab.decode(&[15339, 4_000_000]), Err(4_000_000));
        // Between the last ordinary token and the first special one.
        assert_eq!(vocab.decode(&[100_256]), Err(100_256));
    }
}
