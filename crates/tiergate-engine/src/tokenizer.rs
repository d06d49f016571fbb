//! The model's `tokenizer.json` (Hugging Face `tokenizers`) and streaming detokenization.

use std::path::Path;

use std::collections::HashMap;

use tokenizers::{DecoderWrapper, Tokenizer};

use crate::error::EngineError;
use crate::manifest::Manifest;

#[derive(Debug)]
pub(crate) struct TextCodec {
    tokenizer: Tokenizer,
    eos_id: u32,
    /// No token stands for more bytes of text than this (an upper bound: the longest vocabulary
    /// entry in UTF-8), so `bytes / max_token_bytes` is a lower bound on the token count.
    max_token_bytes: usize,
    /// For byte-level BPE (GPT-2 style) vocabularies: the character that stands for each byte
    /// in a vocabulary entry, inverted, so a token's own bytes can be read off its entry.
    byte_of_char: Option<HashMap<char, u8>>,
}

impl TextCodec {
    pub(crate) fn load(path: &Path, manifest: &Manifest) -> Result<TextCodec, EngineError> {
        let invalid = |reason: String| EngineError::TokenizerInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let tokenizer = Tokenizer::from_file(path).map_err(|e| invalid(e.to_string()))?;
        let eos = &manifest.special_tokens.eos;
        let eos_id = tokenizer
            .token_to_id(eos)
            .ok_or_else(|| invalid(format!("the EOS token `{eos}` is not in its vocabulary")))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > manifest.vocab_size {
            return Err(invalid(format!(
                "it has {vocab} tokens but the model's vocabulary has {}",
                manifest.vocab_size
            )));
        }
        let max_token_bytes = tokenizer
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        let byte_of_char = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)))
            .then(|| {
                byte_level_chars()
                    .into_iter()
                    .map(|(b, c)| (c, b))
                    .collect()
            });
        Ok(TextCodec {
            tokenizer,
            eos_id,
            max_token_bytes,
            byte_of_char,
        })
    }

    /// The fewest tokens `text` can encode to, without encoding it.
    pub(crate) fn min_tokens(&self, text: &str) -> usize {
        text.len().div_ceil(self.max_token_bytes)
    }

    pub(crate) fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Ids of `text` as the reference does it: `encode(text, add_special_tokens=False)`.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The bytes one token stands for, alone (OpenAI's `bytes` of a logprob entry): for a
    /// byte-level vocabulary its entry mapped back to bytes (a special token's characters
    /// outside the byte alphabet are kept as UTF-8); otherwise the token decoded alone.
    pub(crate) fn token_bytes(&self, id: u32) -> Vec<u8> {
        match (&self.byte_of_char, self.tokenizer.id_to_token(id)) {
            (Some(map), Some(entry)) => {
                let mut bytes = Vec::with_capacity(entry.len());
                for c in entry.chars() {
                    match map.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            }
            _ => self
                .tokenizer
                .decode(&[id], false)
                .map(String::into_bytes)
                .unwrap_or_default(),
        }
    }

    /// Text of `ids` without special tokens.
    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }
}

/// GPT-2's byte-to-character table (the `tokenizers` crate keeps its copy private): printable
/// bytes stand for themselves, the others for the characters from U+0100 on, in byte order.
fn byte_level_chars() -> Vec<(u8, char)> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b, char::from(b))
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                (b, c)
            }
        })
        .collect()
}

/// Turns a token stream into text deltas that never split a character: bytes of an incomplete
/// UTF-8 sequence decode to U+FFFD, so text is held back until the character is complete.
///
/// Decoding restarts from a recent offset (not the whole sequence) with one token of context,
/// so decoders that depend on neighbouring tokens (leading spaces) give the same text.
#[derive(Debug, Default)]
pub(crate) struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Adds a token and returns the text it completes (possibly empty).
    pub(crate) fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && let Some(delta) = full.get(prefix.len()..)
        {
            let delta = delta.to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            return Ok(delta);
        }
        Ok(String::new())
    }

    /// The text still held back (an incomplete character at the end decodes as U+FFFD).
    pub(crate) fn flush(&mut self, codec: &TextCodec) -> Result<String, EngineError> {
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn edge_codec() -> TextCodec {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/edge");
        let manifest = Manifest::load(&dir).unwrap();
        TextCodec::load(&dir.join("tokenizer.json"), &manifest).unwrap()
    }

    #[test]
    fn streamed_text_equals_the_whole_decode_and_never_splits_a_character() {
        let codec = edge_codec();
        let text = "héllo wörld, 日本語 and émoji 🙂 done";
        let ids = codec.encode(text).unwrap();
        // The small byte-level vocabulary spells rare characters as several byte tokens.
        assert!(ids.len() > text.split(' ').count());
        let mut decoder = IncrementalDecoder::default();
        let mut streamed = String::new();
        let mut empty_deltas = 0;
        for &id in &ids {
            let delta = decoder.push(&codec, id).unwrap();
            assert!(!delta.contains('\u{FFFD}'), "broken character in {delta:?}");
            empty_deltas += usize::from(delta.is_empty());
            streamed.push_str(&delta);
        }
        streamed.push_str(&decoder.flush(&codec).unwrap());
        assert_eq!(streamed, codec.decode(&ids).unwrap());
        assert_eq!(streamed, text);
        assert!(empty_deltas > 0, "no multi-byte character was held back");
    }

    #[test]
    fn special_tokens_are_known_and_skipped_in_text() {
        let codec = edge_codec();
        let ids = codec.encode("<|user|>hi<|end|>").unwrap();
        assert_eq!(ids.last(), Some(&codec.eos_id()));
        assert_eq!(codec.decode(&ids).unwrap(), "hi");
    }

    #[test]
    fn token_bytes_concatenate_to_the_text_even_inside_a_character() {
        let codec = edge_codec();
        let text = "héllo 日本語 🙂 done";
        let ids = codec.encode(text).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| codec.token_bytes(id)).collect();
        assert_eq!(bytes, text.as_bytes());
        // Some token holds only part of a character: its bytes are not valid UTF-8 alone.
        assert!(
            ids.iter()
                .any(|&id| std::str::from_utf8(&codec.token_bytes(id)).is_err())
        );
        assert_eq!(codec.token_bytes(codec.eos_id()), b"<|end|>");
    }
}
