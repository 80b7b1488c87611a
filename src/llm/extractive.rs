//! The offline responder: with no chat endpoint configured, answer with the best retrieved
//! passages and say so, so the API works end to end with no key and no network.
use async_trait::async_trait;

use super::{ChatModel, ChatRequest, ChatResponse, LlmError};

/// Model name reported for offline answers.
pub const MODEL: &str = "extractive";

/// Answers from the retrieved passages; never calls a model. Uses no tokens.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extractive;

#[async_trait]
impl ChatModel for Extractive {
    fn offline(&self) -> bool {
        true
    }

    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LlmError> {
        let content = match request.passages.first() {
            None => "No language model is configured and none of your documents match this \
                     question, so there is no answer."
                .to_string(),
            Some(best) => {
                let mut out = String::from(
                    "No language model is configured; the most relevant passage from your \
                     documents is:\n\n",
                );
                out.push_str(best.trim());
                out
            }
        };
        Ok(ChatResponse {
            content,
            model: MODEL.to_string(),
            finish_reason: "stop".to_string(),
            ..ChatResponse::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn quotes_the_best_passage_and_says_it_is_offline() {
        let r = Extractive
            .complete(ChatRequest {
                model: "x".into(),
                messages: vec![],
                max_tokens: 10,
                passages: vec!["Refunds within 30 days.".into(), "Other".into()],
                params: Default::default(),
            })
            .await
            .expect("answer");
        assert_eq!(r.model, MODEL);
        assert!(r.content.contains("No language model is configured"));
        assert!(r.content.ends_with("Refunds within 30 days."));
        assert_eq!(r.usage, crate::llm::Usage::default());
    }
}
