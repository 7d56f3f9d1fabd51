//! The embedded model's tokenizer: a SentencePiece-Unigram `tokenizer.json` whose pieces are whole words of
//! the toy world's caption grammar, so the Wan pipeline's UMT5 tokenizer code reads it unchanged. A word it
//! does not have becomes `<unk>`, which the pipeline reports as a warning.

use serde_json::{json, Value};
use sorrel_toyworld::caption::VOCABULARY;

/// Ids 0, 1, 2, as UMT5 numbers them.
const SPECIAL: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// Pieces that follow a word without a space.
const PUNCTUATION: [&str; 2] = [".", ","];

/// `tokenizer.json` contents.
pub fn tokenizer_json() -> Value {
    let mut vocab: Vec<Value> = SPECIAL.iter().map(|t| json!([t, 0.0])).collect();
    // Equal scores: every word is one piece, so the segmentation never has to choose.
    vocab.extend(
        VOCABULARY
            .iter()
            .map(|w| json!([format!("\u{2581}{w}"), -1.0])),
    );
    vocab.extend(PUNCTUATION.iter().map(|p| json!([p, -1.0])));
    let added: Vec<Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(id, t)| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "post_processor": null,
        "decoder": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true},
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false},
    })
}

/// Tokens in the vocabulary.
pub fn vocab_size() -> usize {
    SPECIAL.len() + VOCABULARY.len() + PUNCTUATION.len()
}

/// `tokenizer_config.json`: `model_max_length` is the prompt length the model was trained with, which the
/// pipeline uses as its default (cross-attention sees the padding, so another length changes the output).
pub fn tokenizer_config_json(text_len: usize) -> Value {
    json!({
        "tokenizer_class": "T5Tokenizer",
        "model_max_length": text_len,
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    })
}
