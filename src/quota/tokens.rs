//! Prompt-token estimates with OpenAI's tokenizers (tiktoken's `o200k_base` / `cl100k_base`,
//! chosen by model name; their vocabularies are compiled into the binary, no download).
//!
//! Models tiktoken does not know (Llama, Mistral, ... behind vLLM or Ollama) are counted with
//! `o200k_base`; their own tokenizers differ by some percent, which settling to the reported
//! `usage` corrects.
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

fn bpe(model: &str) -> &'static CoreBPE {
    match tokenizer_for(model) {
        Tokenizer::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        Tokenizer::O200kHarmony => tiktoken_rs::o200k_harmony_singleton(),
        _ => tiktoken_rs::o200k_base_singleton(),
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
    let bytes = tiktoken_rs::cl100k_base_singleton()
        .decode_bytes(ids)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Tokens of `text` for `model`.
pub fn count(model: &str, text: &str) -> u64 {
    bpe(model).encode_with_special_tokens(text).len() as u64
}

/// Tokens of the JSON text of a message's other fields (tool calls, tool call id).
fn extra_tokens(bpe: &CoreBPE, extra: &serde_json::Map<String, serde_json::Value>) -> u64 {
    if extra.is_empty() {
        return 0;
    }
    let json = serde_json::to_string(extra).unwrap_or_default();
    bpe.encode_with_special_tokens(&json).len() as u64
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
    let bpe = bpe(model);
    let params: u64 = PROMPT_PARAMS
        .iter()
        .filter_map(|k| params.get(*k))
        .map(|v| {
            let json = serde_json::to_string(v).unwrap_or_default();
            bpe.encode_with_special_tokens(&json).len() as u64
        })
        .sum();
    prompt_tokens(model, messages) + params
}

/// Prompt tokens of a chat request: every message's role and content plus the framing, as
/// OpenAI counts them.
pub fn prompt_tokens(model: &str, messages: &[Message]) -> u64 {
    let bpe = bpe(model);
    let per_message: u64 = messages
        .iter()
        .map(|m| {
            TOKENS_PER_MESSAGE
                + bpe.encode_with_special_tokens(&m.role).len() as u64
                + bpe.encode_with_special_tokens(&m.content).len() as u64
                + extra_tokens(bpe, &m.extra)
        })
        .sum();
    per_message + TOKENS_PER_REPLY
}

/// Loads the vocabularies (a few hundred ms, once) so the first request does not pay for it.
pub fn warm_up() {
    let _ = tiktoken_rs::o200k_base_singleton();
    let _ = tiktoken_rs::cl100k_base_singleton();
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
}
