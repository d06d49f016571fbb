//! Prompts and the manifest's chat template.

use serde::{Deserialize, Serialize};

use crate::manifest::ChatTemplate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Fed to the model verbatim (no template).
    Text(String),
    /// Rendered with the model's chat template, ending with the generation prompt.
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// A single user message: how the CLI and plain completions present a prompt.
    pub fn user(content: impl Into<String>) -> Prompt {
        Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: content.into(),
        }])
    }

    /// True when there is nothing to condition on: blank text, no messages, or only blank ones.
    pub fn is_blank(&self) -> bool {
        match self {
            Prompt::Text(text) => text.trim().is_empty(),
            Prompt::Chat(messages) => messages.iter().all(|m| m.content.trim().is_empty()),
        }
    }
}

pub(crate) fn render(template: &ChatTemplate, prompt: &Prompt) -> String {
    match prompt {
        Prompt::Text(text) => text.clone(),
        Prompt::Chat(messages) => {
            let mut rendered = String::new();
            for message in messages {
                // Substitute {content} last so a message containing "{role}" stays as written.
                let with_role = template.message.replace("{role}", message.role.as_str());
                rendered.push_str(&with_role.replace("{content}", &message.content));
            }
            rendered.push_str(&template.generation_prompt);
            rendered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> ChatTemplate {
        ChatTemplate {
            message: "<|{role}|>{content}<|end|>".into(),
            generation_prompt: "<|assistant|>".into(),
        }
    }

    #[test]
    fn renders_a_user_message_like_the_contract_example() {
        let rendered = render(&template(), &Prompt::user("turn on the kitchen lights"));
        assert_eq!(
            rendered,
            "<|user|>turn on the kitchen lights<|end|><|assistant|>"
        );
    }

    #[test]
    fn content_is_not_reinterpreted_as_template() {
        let rendered = render(&template(), &Prompt::user("say {role}"));
        assert_eq!(rendered, "<|user|>say {role}<|end|><|assistant|>");
    }

    #[test]
    fn text_prompts_are_verbatim_and_blank_detection() {
        assert_eq!(render(&template(), &Prompt::Text("abc".into())), "abc");
        assert!(Prompt::Text("  ".into()).is_blank());
        assert!(Prompt::Chat(vec![]).is_blank());
        assert!(!Prompt::user("x").is_blank());
    }
}
