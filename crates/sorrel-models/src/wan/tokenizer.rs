//! The UMT5 tokenizer as `WanPipeline` drives it: diffusers' prompt cleaning, then transformers'
//! `T5Tokenizer` with `padding="max_length"`, `truncation=True`, `add_special_tokens=True`.
//!
//! transformers 5 does not use a T5 `tokenizer.json` as stored: `T5Tokenizer.__init__` rebuilds the backend
//! from the file's vocabulary and precompiled charsmap with its own pre-tokenizer and post-processor. Loading
//! the file verbatim with the `tokenizers` crate would differ from it for old files (google/umt5-xxl's has a
//! `Replace(" {2,}")` normalizer and a bare `Metaspace` pre-tokenizer), so [`WanTokenizer::from_file`] applies
//! the same rebuild to the JSON before handing it to `tokenizers`.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use sorrel_core::{Error, Result};
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

/// UMT5's end-of-sequence token, appended to every prompt.
const EOS: &str = "</s>";
/// UMT5's padding token.
const PAD: &str = "<pad>";
/// transformers' `T5Tokenizer` hard-codes the Unigram unknown id.
const UNK_ID: u32 = 2;

/// A batch of prompts tokenized to a fixed length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The prompts after diffusers' `prompt_clean`, as they were tokenized.
    pub prompts: Vec<String>,
    /// Token ids, each row exactly `max_sequence_length` long: the (possibly truncated) prompt, `</s>`, then
    /// `<pad>` (id 0).
    pub input_ids: Vec<Vec<u32>>,
    /// 1 for real tokens (including `</s>`), 0 for padding; same shape as `input_ids`.
    pub attention_mask: Vec<Vec<u32>>,
    /// Real tokens per prompt (including `</s>`): the sum of its attention-mask row.
    pub lengths: Vec<usize>,
    /// Per prompt, the whitespace-separated words (in order, without repeats) that contain a piece the
    /// vocabulary lacks and that were encoded as `<unk>`; only words that survived truncation are listed.
    pub unknown: Vec<Vec<String>>,
}

impl Tokens {
    /// The ids and mask as `(B, L)` u32 tensors, the inputs of [`crate::wan::text_encoder::Umt5Encoder`].
    pub fn to_tensors(&self, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let b = self.input_ids.len();
        let l = self.input_ids.first().map_or(0, Vec::len);
        let ids =
            Tensor::from_iter(self.input_ids.iter().flatten().copied(), device)?.reshape((b, l))?;
        let mask = Tensor::from_iter(self.attention_mask.iter().flatten().copied(), device)?
            .reshape((b, l))?;
        Ok((ids, mask))
    }
}

/// The UMT5 tokenizer of a Wan2.1 model folder (`tokenizer/tokenizer.json`, or `google/umt5-xxl/` in the
/// original release).
pub struct WanTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    /// How many special tokens the post-processor adds to one sequence (1: `</s>`); truncation leaves room.
    n_special: usize,
}

impl WanTokenizer {
    /// Loads a `tokenizer.json`, rebuilt as transformers' `T5Tokenizer` does and with any padding or
    /// truncation that `save_pretrained` baked into the file removed ([`Self::encode`] sets its own).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::model(format!(
                "cannot read the tokenizer file {} ({e}); a Wan2.1 model folder has it as tokenizer/tokenizer.json",
                path.display()
            ))
        })?;
        let bad = |why: String| {
            Error::model(format!(
                "{} is not a usable UMT5 tokenizer.json: {why}",
                path.display()
            ))
        };
        let mut doc: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON ({e})")))?;
        rebuild_as_t5_tokenizer(&mut doc).map_err(bad)?;
        let inner: Tokenizer = doc
            .to_string()
            .parse()
            .map_err(|e| bad(format!("the tokenizers crate rejects it ({e})")))?;
        let pad_id = inner
            .token_to_id(PAD)
            .ok_or_else(|| bad(format!("it has no `{PAD}` token")))?;
        let n_special = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        Ok(Self {
            inner,
            pad_id,
            n_special,
        })
    }

    /// Cleans and tokenizes `prompts` to exactly `max_sequence_length` tokens each, as
    /// `WanPipeline._get_t5_prompt_embeds` does: prompts longer than `max_sequence_length - 1` pieces are cut
    /// (keeping the first pieces) and still end with `</s>`; shorter ones are padded with `<pad>` (id 0).
    pub fn encode(&self, prompts: &[&str], max_sequence_length: usize) -> Result<Tokens> {
        if max_sequence_length == 0 || max_sequence_length < self.n_special {
            return Err(Error::invalid(format!(
                "max_sequence_length must be at least {} (room for `{EOS}`), got {max_sequence_length}",
                self.n_special.max(1)
            )));
        }
        let mut out = Tokens {
            prompts: Vec::with_capacity(prompts.len()),
            input_ids: Vec::with_capacity(prompts.len()),
            attention_mask: Vec::with_capacity(prompts.len()),
            lengths: Vec::with_capacity(prompts.len()),
            unknown: Vec::with_capacity(prompts.len()),
        };
        for prompt in prompts {
            let clean = prompt_clean(prompt);
            let tok_err = |e| Error::invalid(format!("cannot tokenize the prompt {clean:?}: {e}"));
            // The same three steps as tokenizers' `post_process` with truncation and padding set, written out
            // because both depend on the call's `max_sequence_length` while the tokenizer is shared.
            let mut enc = self.inner.encode(clean.as_str(), false).map_err(tok_err)?;
            enc.truncate(
                max_sequence_length - self.n_special,
                0,
                TruncationDirection::Right,
            );
            let mut enc = self.inner.post_process(enc, None, true).map_err(tok_err)?;
            let length = enc.len();
            enc.pad(
                max_sequence_length,
                self.pad_id,
                0,
                PAD,
                tokenizers::PaddingDirection::Right,
            );

            let mut unknown: Vec<String> = Vec::new();
            for (&id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()).take(length) {
                if id == UNK_ID {
                    let word = enclosing_word(&clean, start, end).to_string();
                    if !unknown.contains(&word) {
                        unknown.push(word);
                    }
                }
            }
            out.input_ids.push(enc.get_ids().to_vec());
            out.attention_mask.push(enc.get_attention_mask().to_vec());
            out.lengths.push(length);
            out.unknown.push(unknown);
            out.prompts.push(clean);
        }
        Ok(out)
    }
}

/// Rewrites a `tokenizer.json` into what transformers 5's `T5Tokenizer` builds from it: Unigram model with
/// unk id 2 and no byte fallback, only the `Precompiled` normalizer, `WhitespaceSplit` + `Metaspace`
/// pre-tokenizer, `$A </s>` post-processor, and no padding or truncation.
fn rebuild_as_t5_tokenizer(doc: &mut Value) -> std::result::Result<(), String> {
    let model = doc
        .get_mut("model")
        .and_then(Value::as_object_mut)
        .ok_or("it has no `model` section")?;
    // Old files omit the model type; a vocabulary of `[piece, score]` pairs is Unigram's.
    if model.get("type").is_none()
        && model
            .get("vocab")
            .and_then(|v| v.get(0))
            .is_some_and(Value::is_array)
    {
        model.insert("type".into(), json!("Unigram"));
    }
    if model.get("type").and_then(Value::as_str) != Some("Unigram") {
        return Err(format!(
            "its model is {}, but UMT5 uses a SentencePiece Unigram model",
            model
                .get("type")
                .map_or("missing".to_string(), Value::to_string)
        ));
    }
    model.insert("unk_id".into(), json!(UNK_ID));
    model.insert("byte_fallback".into(), json!(false));
    let vocab_pos = model.get("vocab").and_then(Value::as_array).and_then(|v| {
        v.iter()
            .position(|e| e.get(0).and_then(Value::as_str) == Some(EOS))
    });
    let added_id = doc
        .get("added_tokens")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|t| t.get("content").and_then(Value::as_str) == Some(EOS))
                .and_then(|t| t.get("id").and_then(Value::as_u64))
        });
    let eos_id = added_id
        .or(vocab_pos.map(|p| p as u64))
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| format!("it has no `{EOS}` token"))?;

    // transformers keeps only the SentencePiece charsmap (`_spm_precompiled_charsmap`) of the normalizer.
    let normalizer = doc.get("normalizer").cloned().unwrap_or(Value::Null);
    let list = match normalizer.get("type").and_then(Value::as_str) {
        Some("Sequence") => normalizer
            .get("normalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Some(_) => vec![normalizer],
        None => Vec::new(),
    };
    let precompiled = list
        .into_iter()
        .find(|n| {
            n.get("type").and_then(Value::as_str) == Some("Precompiled")
                && n.get("precompiled_charsmap").is_some()
        })
        .unwrap_or(Value::Null);
    let obj = doc
        .as_object_mut()
        .ok_or("the top level is not an object")?;
    obj.insert("normalizer".into(), precompiled);
    obj.insert(
        "pre_tokenizer".into(),
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "always", "split": true}
        ]}),
    );
    obj.insert(
        "post_processor".into(),
        json!({"type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": EOS, "type_id": 0}}],
            "special_tokens": {EOS: {"id": EOS, "ids": [eos_id], "tokens": [EOS]}}}),
    );
    obj.insert("truncation".into(), Value::Null);
    obj.insert("padding".into(), Value::Null);
    Ok(())
}

/// The whitespace-delimited word of `text` around the byte range `start..end`.
fn enclosing_word(text: &str, start: usize, end: usize) -> &str {
    let start = text
        .get(..start)
        .and_then(|t| t.rfind(' '))
        .map_or(0, |i| i + 1);
    let end = text
        .get(end..)
        .and_then(|t| t.find(' '))
        .map_or(text.len(), |i| end + i);
    text.get(start..end).unwrap_or(text)
}

/// diffusers' `prompt_clean` for Wan: `whitespace_clean(basic_clean(text))`.
///
/// `basic_clean` would first run `ftfy.fix_text`, but ftfy is not installed in the reference environment
/// (nor a diffusers dependency), so like diffusers without it this skips that step; then it unescapes HTML
/// twice and strips. `whitespace_clean` turns every run of whitespace into one space and strips again.
pub fn prompt_clean(text: &str) -> String {
    let unescaped = html_unescape(&html_unescape(text));
    let stripped = unescaped.trim_matches(py_isspace);
    let mut out = String::with_capacity(stripped.len());
    let mut in_space = false;
    // `regex`'s Unicode `\s` is exactly Rust's `char::is_whitespace` (checked over all code points).
    for c in stripped.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else {
            if in_space && !out.is_empty() {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    out.trim_matches(py_isspace).to_string()
}

/// Python's `str.isspace`, which `str.strip()` uses: Unicode whitespace plus the separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `html.unescape`, with the same character-reference grammar and numeric-reference rules.
///
/// Named references are resolved only for `&amp; &lt; &gt; &quot; &apos; &nbsp;` (and the semicolon-less
/// legacy forms of all but `apos`, as HTML5 allows); the full HTML5 table of 2231 entities is not mirrored,
/// so e.g. `&copy;` is left as written where Python would give `©`.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match char_reference(after) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Named references known here, with and without `;` exactly as in Python's `html.entities.html5`.
const NAMED: &[(&str, &str)] = &[
    ("amp;", "&"),
    ("amp", "&"),
    ("AMP;", "&"),
    ("AMP", "&"),
    ("lt;", "<"),
    ("lt", "<"),
    ("LT;", "<"),
    ("LT", "<"),
    ("gt;", ">"),
    ("gt", ">"),
    ("GT;", ">"),
    ("GT", ">"),
    ("quot;", "\""),
    ("quot", "\""),
    ("QUOT;", "\""),
    ("QUOT", "\""),
    ("apos;", "'"),
    ("nbsp;", "\u{a0}"),
    ("nbsp", "\u{a0}"),
];

fn named(name: &str) -> Option<&'static str> {
    NAMED.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// Parses one reference after a `&` the way Python's `_charref` regex and `_replace_charref` do:
/// `#[0-9]+;?`, `#[xX][0-9a-fA-F]+;?` or `[^\t\n\f <&#;]{1,32};?`. Returns the replacement and the bytes
/// of `s` consumed, or `None` where the regex does not match (the `&` stays).
fn char_reference(s: &str) -> Option<(String, usize)> {
    let semicolon = |end: usize| {
        if s[end..].starts_with(';') {
            end + 1
        } else {
            end
        }
    };
    if let Some(num) = s.strip_prefix('#') {
        let (digits, radix, skip) = match num.strip_prefix(['x', 'X']) {
            Some(hex) if hex.starts_with(|c: char| c.is_ascii_hexdigit()) => (
                hex.find(|c: char| !c.is_ascii_hexdigit())
                    .map_or(hex, |i| &hex[..i]),
                16,
                2,
            ),
            _ => (
                num.find(|c: char| !c.is_ascii_digit())
                    .map_or(num, |i| &num[..i]),
                10,
                1,
            ),
        };
        if digits.is_empty() {
            return None;
        }
        // Python's int is unbounded; anything past u32 is "> 0x10FFFF" either way.
        let code = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
        return Some((numeric_reference(code), semicolon(skip + digits.len())));
    }
    let name_end = s
        .char_indices()
        .take_while(|&(_, c)| !matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .last()
        .map(|(i, c)| i + c.len_utf8())?;
    let end = semicolon(name_end);
    let name = &s[..end];
    if let Some(v) = named(name) {
        return Some((v.to_string(), end));
    }
    // The longest known prefix of at least two characters, the rest kept as written.
    let boundaries: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &cut in boundaries.iter().rev() {
        if let Some(v) = named(&name[..cut]) {
            return Some((format!("{v}{}", &name[cut..]), end));
        }
    }
    Some((format!("&{name}"), end))
}

/// Python's rules for `&#N;`: the Windows-1252 remapping of C1 controls and NUL, U+FFFD for surrogates and
/// out-of-range values, nothing for other non-characters and controls.
fn numeric_reference(code: u32) -> String {
    const WINDOWS_1252: [u32; 32] = [
        0x20ac, 0x81, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8d, 0x017d, 0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013,
        0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x9d, 0x017e, 0x0178,
    ];
    let c = match code {
        0x00 => Some('\u{fffd}'),
        0x0d => Some('\r'),
        0x80..=0x9f => char::from_u32(WINDOWS_1252[(code - 0x80) as usize]),
        0xd800..=0xdfff => Some('\u{fffd}'),
        c if c > 0x10ffff => Some('\u{fffd}'),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => None,
        c if c & 0xfffe == 0xfffe => None,
        c => char::from_u32(c),
    };
    c.map(String::from).unwrap_or_default()
}
