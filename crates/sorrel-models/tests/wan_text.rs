//! Parity of Wan2.1's text side (prompt cleaning, UMT5 tokenizer, UMT5 encoder, prompt embeddings) with
//! diffusers 0.42.1 / transformers 5.24.0, against `tests/fixtures/*/reference.safetensors` written by
//! `tools/reference/make_fixtures.py`. Expected literals below were printed by the reference venv.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sorrel_core::{Error, TensorSource};
use sorrel_models::wan::text_encoder::{
    relative_position_bucket, umt5_key_to_original, Umt5Config, Umt5Encoder,
};
use sorrel_models::wan::tokenizer::{html_unescape, prompt_clean, WanTokenizer};
use sorrel_testkit::{fixture, max_abs_diff, reference_metadata};

const FIXTURES: [&str; 3] = ["wan-tiny-unipc", "wan-tiny-euler", "wan-tiny-alt"];

struct Reference {
    prompt: String,
    negative: String,
    max_len: usize,
    tensors: HashMap<String, Tensor>,
}

fn reference(name: &str) -> Reference {
    let meta = reference_metadata(name);
    Reference {
        prompt: meta["prompt"].clone(),
        negative: meta["negative_prompt"].clone(),
        max_len: meta["max_sequence_length"].parse().unwrap(),
        tensors: sorrel_testkit::reference(name),
    }
}

fn rows_i64(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap()
}

fn as_i64(rows: &[Vec<u32>]) -> Vec<Vec<i64>> {
    rows.iter()
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect()
}

fn pipeline_tokenizer(name: &str) -> WanTokenizer {
    WanTokenizer::from_file(fixture(name).join("pipeline/tokenizer/tokenizer.json")).unwrap()
}

fn pipeline_encoder(name: &str) -> Umt5Encoder {
    let dir = fixture(name).join("pipeline/text_encoder");
    let cfg = Umt5Config::from_file(dir.join("config.json")).unwrap();
    let vb = TensorSource::open_dir(&dir, "model")
        .unwrap()
        .into_var_builder(DType::F32, &Device::Cpu);
    Umt5Encoder::new(&cfg, vb).unwrap()
}

fn original_encoder(name: &str) -> Umt5Encoder {
    let dir = fixture(name).join("original");
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("sorrel_original_configs.json")).unwrap(),
    )
    .unwrap();
    let cfg: Umt5Config = serde_json::from_value(sidecar["text_encoder"].clone()).unwrap();
    let vb = TensorSource::open(&[dir.join("models_t5_umt5-xxl-enc-bf16.pth")])
        .unwrap()
        .with_rename(Arc::new(|n: &str| umt5_key_to_original(n)))
        .into_var_builder(DType::F32, &Device::Cpu);
    Umt5Encoder::new(&cfg, vb).unwrap()
}

#[test]
fn token_ids_and_masks_match_transformers() {
    for name in FIXTURES {
        let r = reference(name);
        let tok = pipeline_tokenizer(name);
        let t = tok.encode(&[&r.prompt, &r.negative], r.max_len).unwrap();
        assert_eq!(
            as_i64(&t.input_ids),
            rows_i64(&r.tensors["tok.input_ids"]),
            "{name}: input_ids"
        );
        assert_eq!(
            as_i64(&t.attention_mask),
            rows_i64(&r.tensors["tok.attention_mask"]),
            "{name}: attention_mask"
        );
        let mask_sums: Vec<usize> = t
            .attention_mask
            .iter()
            .map(|m| m.iter().sum::<u32>() as usize)
            .collect();
        assert_eq!(t.lengths, mask_sums, "{name}: lengths");
        assert!(
            t.unknown.iter().all(Vec::is_empty),
            "{name}: fixture prompts are in-vocabulary: {:?}",
            t.unknown
        );
    }
}

#[test]
fn encoder_and_prompt_embeds_match_diffusers() {
    for name in FIXTURES {
        let r = reference(name);
        let enc = pipeline_encoder(name);

        // The reference ids are i64, as transformers passes them.
        let hidden = enc
            .forward(
                &r.tensors["tok.input_ids"],
                &r.tensors["tok.attention_mask"],
            )
            .unwrap();
        let err_hidden = max_abs_diff(&hidden, &r.tensors["text_encoder.hidden"]);

        let t = pipeline_tokenizer(name)
            .encode(&[&r.prompt, &r.negative], r.max_len)
            .unwrap();
        let (ids, mask) = t.to_tensors(&Device::Cpu).unwrap();
        let embeds = enc.prompt_embeds(&ids, &mask).unwrap();
        let err_pos = max_abs_diff(
            &embeds.narrow(0, 0, 1).unwrap(),
            &r.tensors["prompt_embeds"],
        );
        let err_neg = max_abs_diff(
            &embeds.narrow(0, 1, 1).unwrap(),
            &r.tensors["negative_prompt_embeds"],
        );
        println!("{name}: max abs err hidden {err_hidden:.3e}, prompt_embeds {err_pos:.3e}, negative {err_neg:.3e}");

        // fp32 on both sides, differing only in summation order and libm (~1e-6 on O(1) values); a wrong
        // bias, mask, norm or activation moves outputs by 1e-2 or more.
        assert!(
            err_hidden <= 1e-4,
            "{name}: encoder hidden states differ by {err_hidden}"
        );
        // Same computation plus exact zeroing past each prompt's length.
        assert!(err_pos <= 1e-4, "{name}: prompt_embeds differ by {err_pos}");
        assert!(
            err_neg <= 1e-4,
            "{name}: negative_prompt_embeds differ by {err_neg}"
        );

        // Past the length the rows are exactly zero, before it they are not.
        let rows = embeds
            .abs()
            .unwrap()
            .sum(2)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (b, len) in t.lengths.iter().enumerate() {
            assert!(
                rows[b][..*len].iter().all(|&s| s > 0.0),
                "{name}: prompt {b} has a zero row before {len}"
            );
            assert!(
                rows[b][*len..].iter().all(|&s| s == 0.0),
                "{name}: prompt {b} is not zeroed after {len}"
            );
        }
    }
}

#[test]
fn half_precision_stays_close_to_fp32() {
    let name = "wan-tiny-alt";
    let r = reference(name);
    let dir = fixture(name).join("pipeline/text_encoder");
    let cfg = Umt5Config::from_file(dir.join("config.json")).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let vb = TensorSource::open_dir(&dir, "model")
            .unwrap()
            .into_var_builder(dtype, &Device::Cpu);
        let enc = Umt5Encoder::new(&cfg, vb).unwrap();
        let hidden = enc
            .forward(
                &r.tensors["tok.input_ids"],
                &r.tensors["tok.attention_mask"],
            )
            .unwrap();
        assert_eq!(hidden.dtype(), dtype);
        let err = max_abs_diff(&hidden, &r.tensors["text_encoder.hidden"]);
        println!("{name} {dtype:?}: max abs err hidden {err:.3e}");
        // transformers itself is 2.5e-2 (bf16) and 3.2e-3 (fp16) away from its fp32 output here; 5e-2
        // covers that rounding. This test guards the dtype handling (fp32 `wo` and promotion in fp16);
        // the fp32 test guards the arithmetic.
        assert!(err <= 5e-2, "{dtype:?}: hidden states differ by {err}");
    }
}

#[test]
fn original_release_layout_gives_identical_embeddings() {
    for name in ["wan-tiny-unipc", "wan-tiny-alt"] {
        let r = reference(name);
        let orig_tok =
            WanTokenizer::from_file(fixture(name).join("original/google/umt5-xxl/tokenizer.json"))
                .unwrap();
        let t_orig = orig_tok
            .encode(&[&r.prompt, &r.negative], r.max_len)
            .unwrap();
        let t_pipe = pipeline_tokenizer(name)
            .encode(&[&r.prompt, &r.negative], r.max_len)
            .unwrap();
        assert_eq!(t_orig, t_pipe, "{name}: the two tokenizer files disagree");

        let (ids, mask) = t_pipe.to_tensors(&Device::Cpu).unwrap();
        let a = pipeline_encoder(name).prompt_embeds(&ids, &mask).unwrap();
        let b = original_encoder(name).prompt_embeds(&ids, &mask).unwrap();
        // Same fp32 weights under other names: anything but bit-identical means a tensor was swapped.
        assert_eq!(
            max_abs_diff(&a, &b),
            0.0,
            "{name}: original layout differs from the diffusers layout"
        );
    }
}

#[test]
fn original_key_names_cover_the_release_file_exactly() {
    let pipe = TensorSource::open_dir(
        &fixture("wan-tiny-unipc").join("pipeline/text_encoder"),
        "model",
    )
    .unwrap();
    let orig = TensorSource::open(&[
        fixture("wan-tiny-unipc").join("original/models_t5_umt5-xxl-enc-bf16.pth")
    ])
    .unwrap();
    let mapped: BTreeSet<String> = pipe
        .keys()
        .iter()
        .map(|k| umt5_key_to_original(k))
        .collect();
    let stored: BTreeSet<String> = orig.keys().into_iter().collect();
    assert_eq!(mapped, stored);

    assert_eq!(
        umt5_key_to_original("encoder.embed_tokens.weight"),
        "token_embedding.weight"
    );
    assert_eq!(
        umt5_key_to_original(
            "encoder.block.17.layer.0.SelfAttention.relative_attention_bias.weight"
        ),
        "blocks.17.pos_embedding.embedding.weight"
    );
    assert_eq!(
        umt5_key_to_original("encoder.block.3.layer.1.DenseReluDense.wi_0.weight"),
        "blocks.3.ffn.gate.0.weight"
    );
    assert_eq!(
        umt5_key_to_original("encoder.block.3.layer.1.DenseReluDense.wi_1.weight"),
        "blocks.3.ffn.fc1.weight"
    );
    assert_eq!(
        umt5_key_to_original("encoder.block.3.layer.1.DenseReluDense.wo.weight"),
        "blocks.3.ffn.fc2.weight"
    );
    // Unknown names pass through so a missing-tensor error shows them as asked.
    assert_eq!(
        umt5_key_to_original("encoder.block.x.layer.0.layer_norm.weight"),
        "encoder.block.x.layer.0.layer_norm.weight"
    );
}

#[test]
fn relative_position_buckets_match_torch() {
    // torch's `_relative_position_bucket` for 32 buckets, max distance 128 (umt5-xxl): distances 1..7 are
    // exact, then the bucket grows at these distances (edges at 16, 32 and 64 test the f32 rounding).
    let edges = [8i64, 12, 16, 23, 32, 46, 64, 91];
    let expected = |d: i64| -> u32 {
        if d < 8 {
            d as u32
        } else {
            7 + edges.iter().filter(|&&e| d >= e).count() as u32
        }
    };
    assert_eq!(relative_position_bucket(0, 32, 128), 0);
    for d in 1..=2000i64 {
        assert_eq!(
            relative_position_bucket(-d, 32, 128),
            expected(d),
            "key {d} before the query"
        );
        assert_eq!(
            relative_position_bucket(d, 32, 128),
            16 + expected(d),
            "key {d} after the query"
        );
    }
}

#[test]
fn long_prompts_are_truncated_keeping_eos() {
    let tok = pipeline_tokenizer("wan-tiny-unipc");
    let long =
        "a cat and a dog baking a cake together in a kitchen the cat is carefully measuring flour";
    let t = tok.encode(&[long, "dance monkey"], 8).unwrap();
    // transformers: truncation leaves room for `</s>`, so 7 pieces of the prompt then id 1.
    assert_eq!(
        t.input_ids,
        vec![vec![3, 7, 62, 3, 5, 9, 3, 1], vec![8, 40, 1, 0, 0, 0, 0, 0]]
    );
    assert_eq!(
        t.attention_mask,
        vec![vec![1; 8], vec![1, 1, 1, 0, 0, 0, 0, 0]]
    );
    assert_eq!(t.lengths, vec![8, 3]);

    // At length 1 only `</s>` is left, as in transformers; 0 is refused.
    assert_eq!(tok.encode(&[long], 1).unwrap().input_ids, vec![vec![1]]);
    assert!(matches!(tok.encode(&[long], 0), Err(Error::Invalid(_))));
    // An empty prompt is just `</s>`.
    assert_eq!(
        tok.encode(&[""], 4).unwrap().input_ids,
        vec![vec![1, 0, 0, 0]]
    );
}

#[test]
fn prompts_are_cleaned_like_diffusers() {
    // (input, diffusers' prompt_clean output without ftfy)
    let cases: [(&str, &str); 11] = [
        ("  a &amp;amp; b\t\n\u{3000}c  ", "a & b c"),
        (
            "&lt;tag&gt; &quot;q&quot; &#39;s&#x41;&#X42; &apos;",
            "<tag> \"q\" 'sAB '",
        ),
        ("x&nbsp;&nbsp;y", "x y"),
        ("&amp;nbsp;", ""),
        (
            "&ampx &ltfoo &#128; &#0; &#xD800; &#1114112; &#127;",
            "&x <foo \u{20ac} \u{fffd} \u{fffd} \u{fffd}",
        ),
        ("\u{1c} hello \u{1f}", "hello"),
        ("a\u{1c}b", "a\u{1c}b"),
        ("&#12345678901234567890;", "\u{fffd}"),
        ("&#x;&#;&;&", "&#x;&#;&;&"),
        ("&quot&amp;#65;", "\"A"),
        (
            "tab\ttab  newline\nend &AMP;&LT;&GT;&QUOT;",
            "tab tab newline end &<>\"",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(prompt_clean(input), expected, "prompt_clean({input:?})");
    }
    // One unescape only resolves one level.
    assert_eq!(html_unescape("&amp;lt;"), "&lt;");

    // Cleaning happens before tokenizing.
    let tok = pipeline_tokenizer("wan-tiny-unipc");
    let t = tok
        .encode(&["  dance&amp;nbsp;\t\n monkey ", "dance monkey"], 16)
        .unwrap();
    assert_eq!(t.prompts, vec!["dance monkey", "dance monkey"]);
    assert_eq!(t.input_ids[0], t.input_ids[1]);
    assert_eq!(t.input_ids[0][..4], [8, 40, 1, 0]);
}

#[test]
fn unknown_words_are_reported() {
    let tok = pipeline_tokenizer("wan-tiny-unipc");
    let t = tok
        .encode(
            &[
                "zebra qx dance Xylophone 日本",
                "dance monkey",
                "dance 日本",
            ],
            16,
        )
        .unwrap();
    // transformers gives these ids (2 = <unk> for `z` and `X`); `日本` falls past the 15 prompt pieces.
    assert_eq!(
        t.input_ids[0],
        [95, 2, 94, 75, 89, 92, 95, 70, 72, 8, 95, 2, 77, 86, 87, 1]
    );
    assert_eq!(t.unknown[0], ["zebra", "Xylophone"]);
    assert!(t.unknown[1].is_empty());
    assert_eq!(t.unknown[2], ["日本"]);
    // Truncated away, so not reported.
    assert_eq!(
        tok.encode(&["dance 日本"], 3).unwrap().unknown[0],
        Vec::<String>::new()
    );
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sorrel-wan-text-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn loading_errors_name_the_file() {
    let missing = fixture("does-not-exist/tokenizer/tokenizer.json");
    match WanTokenizer::from_file(&missing) {
        Err(Error::Model(msg)) => assert!(msg.contains(&missing.display().to_string()), "{msg}"),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a missing tokenizer.json loaded"),
    }

    let not_json = temp_file("tokenizer.json", "{ this is not json");
    match WanTokenizer::from_file(&not_json) {
        Err(Error::Model(msg)) => assert!(msg.contains(&not_json.display().to_string()), "{msg}"),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("a malformed tokenizer.json loaded"),
    }

    for (file, contents, mention) in [
        ("bad_syntax.json", "{\"d_model\": 32,", "config"),
        ("bad_type.json", "{\"d_model\": \"wide\"}", "expected usize"),
        (
            "bad_act.json",
            "{\"feed_forward_proj\": \"gated-mish\"}",
            "mish",
        ),
    ] {
        let path = temp_file(file, contents);
        match Umt5Config::from_file(&path) {
            Err(Error::Model(msg)) => {
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains(mention), "{msg}");
            }
            other => panic!("{file}: expected a model error, got {other:?}"),
        }
    }
    std::fs::remove_dir_all(not_json.parent().unwrap()).unwrap();
}
