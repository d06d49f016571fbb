//! Prompts and the model's chat template.

use serde::{Deserialize, Serialize};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Value, context};

use crate::error::EngineError;
use crate::manifest::{ChatTemplate, SpecialTokens};

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

/// The model's chat template compiled once: Jinja, rendered the way Hugging Face's
/// `apply_chat_template` does (`trim_blocks`, `lstrip_blocks`, loop controls,
/// `raise_exception`, Python string methods), so prompts equal the reference's byte for byte.
pub(crate) struct ChatRenderer {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatRenderer").finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatRenderer {
    /// Compiles the template; a syntax error is the manifest's fault, reported at load.
    pub(crate) fn new(template: &ChatTemplate, special: &SpecialTokens) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, template.jinja.clone())
            .map_err(|e| format!("chat_template.jinja does not compile: {e}"))?;
        Ok(ChatRenderer {
            env,
            bos_token: special.bos.clone().unwrap_or_default(),
            eos_token: special.eos.clone(),
        })
    }

    /// The text the model sees. Chat prompts end with the generation prompt; text prompts are
    /// verbatim. A template that refuses the conversation (`raise_exception`, e.g. roles that
    /// do not alternate) is the request's fault.
    pub(crate) fn render(&self, prompt: &Prompt) -> Result<String, EngineError> {
        let messages = match prompt {
            Prompt::Text(text) => return Ok(text.clone()),
            Prompt::Chat(messages) => messages,
        };
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let context = context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        };
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        template
            .render(context)
            .map_err(|e| EngineError::ChatTemplate(template_error_text(&e)))
    }
}

/// `raise_exception(message)`: how Hugging Face templates refuse a conversation.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        message,
    ))
}

/// The template's own message when it raised one, without minijinja's source excerpt.
fn template_error_text(error: &minijinja::Error) -> String {
    error
        .detail()
        .map_or_else(|| error.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The toy models' template, as their manifests write it.
    const TOY: &str = "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";

    /// SmolLM2-135M-Instruct's template, verbatim from its GGUF.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn renderer(jinja: &str) -> ChatRenderer {
        let special = SpecialTokens {
            eos: "<|end|>".into(),
            pad: None,
            bos: None,
        };
        ChatRenderer::new(
            &ChatTemplate {
                jinja: jinja.into(),
            },
            &special,
        )
        .unwrap()
    }

    fn chat(messages: &[(Role, &str)]) -> Prompt {
        Prompt::Chat(
            messages
                .iter()
                .map(|(role, content)| ChatMessage {
                    role: *role,
                    content: (*content).to_owned(),
                })
                .collect(),
        )
    }

    #[test]
    fn renders_a_user_message_like_the_contract_example() {
        let rendered = renderer(TOY)
            .render(&Prompt::user("turn on the kitchen lights"))
            .unwrap();
        assert_eq!(
            rendered,
            "<|user|>turn on the kitchen lights<|end|><|assistant|>"
        );
    }

    #[test]
    fn content_is_data_not_template() {
        let rendered = renderer(TOY)
            .render(&Prompt::user("say {{ role }} {% if x %}"))
            .unwrap();
        assert_eq!(
            rendered,
            "<|user|>say {{ role }} {% if x %}<|end|><|assistant|>"
        );
    }

    #[test]
    fn smollm2_inserts_its_default_system_prompt_only_without_one() {
        let r = renderer(SMOLLM2);
        assert_eq!(
            r.render(&Prompt::user("hi")).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            r.render(&chat(&[(Role::System, "Be brief."), (Role::User, "hi")]))
                .unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_raises_refuses_the_request_with_its_message() {
        let r = renderer(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with a user message') }}{% endif %}x",
        );
        let err = r.render(&chat(&[(Role::Assistant, "hello")])).unwrap_err();
        assert!(matches!(err, EngineError::ChatTemplate(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("Conversation must start with a user message"),
            "{err}"
        );
        assert_eq!(err.class(), crate::ErrorClass::InvalidRequest);
    }

    #[test]
    fn python_string_methods_work_as_in_hugging_face_templates() {
        let r = renderer("{{ messages[0]['content'].strip().upper() }}");
        assert_eq!(r.render(&Prompt::user("  hi  ")).unwrap(), "HI");
    }

    #[test]
    fn a_template_that_does_not_compile_is_refused_at_load() {
        let special = SpecialTokens {
            eos: "e".into(),
            pad: None,
            bos: None,
        };
        let err = ChatRenderer::new(
            &ChatTemplate {
                jinja: "{% for m in messages %}".into(),
            },
            &special,
        )
        .unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
    }

    #[test]
    fn text_prompts_are_verbatim_and_blank_detection() {
        assert_eq!(
            renderer(TOY).render(&Prompt::Text("abc".into())).unwrap(),
            "abc"
        );
        assert!(Prompt::Text("  ".into()).is_blank());
        assert!(Prompt::Chat(vec![]).is_blank());
        assert!(!Prompt::user("x").is_blank());
    }
}
