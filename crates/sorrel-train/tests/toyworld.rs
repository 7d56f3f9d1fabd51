//! The embedded model's training machinery end to end at smoke size: train, resume, export a folder that
//! Sorrel's ordinary Wan loader reads and generates from, and evaluate it; plus the tokenizer and the
//! per-frame VAE the recipe relies on.

use candle_core::{Device, Tensor};
use sorrel_models::wan::tokenizer::WanTokenizer;
use sorrel_pipeline::{GenerateRequest, LoadOptions, WanPipeline};
use sorrel_toyworld::{caption_styled, CaptionStyle, Scene, Split};
use sorrel_train::toyworld::eval::{evaluate, EvalOptions};
use sorrel_train::toyworld::{self, init, stages, tokenizer, Recipe};

/// [`toyworld::train`] on the CPU without progress.
fn train_on_cpu(
    recipe: &Recipe,
    work: &std::path::Path,
    out: &std::path::Path,
    resume: bool,
) -> sorrel_train::Result<()> {
    toyworld::train(recipe, work, out, resume, &Device::Cpu, &mut |_| {})
}

fn toy_tokenizer(dir: &std::path::Path) -> WanTokenizer {
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, tokenizer::tokenizer_json().to_string()).unwrap();
    WanTokenizer::from_file(&p).unwrap()
}

#[test]
fn every_caption_style_tokenizes_word_by_word_and_unknown_words_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let tok = toy_tokenizer(dir.path());
    for seed in 0..500u64 {
        let scene = Scene::sample(seed, Split::Train);
        let c = caption_styled(&scene, CaptionStyle::nth(seed as u32 % 8));
        let t = tok.encode(&[&c], 16).unwrap();
        assert!(t.unknown[0].is_empty(), "{c}: {:?}", t.unknown[0]);
        let words = c.split(' ').count() + usize::from(c.ends_with('.'));
        assert_eq!(
            t.lengths[0],
            words + 1,
            "one token per word, then </s>: {c}"
        );
        assert!(t.lengths[0] <= 16, "{c} does not fit the trained length");
    }
    let t = tok
        .encode(&["a purple ball bounces on a blue floor!"], 16)
        .unwrap();
    assert_eq!(
        t.unknown[0],
        vec!["purple".to_string(), "floor!".to_string()]
    );
}

#[test]
fn every_paraphrase_tokenizes_without_unknown_words_and_fits_the_trained_length() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let tok = toy_tokenizer(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut longest = 0;
    for seed in 0..3000u64 {
        let scene = Scene::sample(seed, Split::Train);
        let mut prompts = vec![sorrel_toyworld::paraphrase(&scene, &mut rng)];
        for form in sorrel_toyworld::HELD_OUT_FORMS {
            prompts.push(sorrel_toyworld::held_out_paraphrase(&scene, form, &mut rng));
        }
        for p in prompts {
            let t = tok.encode(&[&p], 16).unwrap();
            assert!(t.unknown[0].is_empty(), "{p}: {:?}", t.unknown[0]);
            // Truncation would cut the floor's colour, which comes last in most forms.
            let full = tok.encode(&[&p], 64).unwrap();
            assert!(full.lengths[0] <= 16, "{p} is {} tokens", full.lengths[0]);
            longest = longest.max(full.lengths[0]);
        }
    }
    assert!(longest > 10, "{longest}");
}

/// `docs/models/toyworld-held-out-prompts.txt`, the held-out paraphrases `sorrel eval` scores, one per line
/// after a comment header. `SORREL_BLESS=1` rewrites it.
#[test]
fn the_held_out_prompt_list_in_the_docs_is_what_eval_scores() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/models/toyworld-held-out-prompts.txt");
    let mut want = String::from(
        "# The held-out paraphrases `sorrel eval` scores (the first 100; crates/sorrel-train/src/toyworld/eval.rs,\n\
         # eval_paraphrase). No training caption has these sentence forms; their scenes' seeds are never trained on.\n",
    );
    for i in 0..100 {
        want += &sorrel_train::toyworld::eval::eval_paraphrase(i).1;
        want.push('\n');
    }
    if std::env::var_os("SORREL_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date: rerun this test with SORREL_BLESS=1",
        path.display()
    );
    // None of them is a training caption of its scene's form.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(2);
    let train: std::collections::HashSet<String> = (0..200)
        .flat_map(|i| {
            let (scene, _) = sorrel_train::toyworld::eval::eval_paraphrase(i);
            (0..200)
                .map(|_| {
                    sorrel_toyworld::paraphrase(&scene, &mut rng)
                        .to_lowercase()
                        .trim_end_matches('.')
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for line in want.lines().skip(2) {
        assert!(!train.contains(line), "{line} is also a training caption");
    }
}

#[test]
fn a_fresh_text_encoder_attends_softly_and_tells_which_noun_a_colour_belongs_to() {
    // The transformer's cross-attention sees the prompt as a set of vectors, so "red" must reach it
    // differently in "a red ball ... a blue floor" than in "a blue ball ... a red floor". T5 attention
    // has no 1/sqrt(d) on its logits; started with unscaled queries, every head saturated onto one word
    // picked by identity alone, its gradient vanished, and a 10,000-step model never learnt word order
    // in most caption styles.
    let dir = tempfile::tempdir().unwrap();
    let tok = toy_tokenizer(dir.path());
    let recipe = Recipe::default();
    let model = stages::Denoiser::new(&recipe, tokenizer::vocab_size(), &Device::Cpu).unwrap();
    let params = model.params();
    init::init_params(&params, recipe.seed.wrapping_add(1)).unwrap();
    let a = "a red ball moves to the left on a blue floor";
    let b = "a blue ball moves to the left on a red floor";
    let t = tok.encode(&[a, b], recipe.text_len).unwrap();
    let (ids, mask) = t.to_tensors(&Device::Cpu).unwrap();

    // First layer's content logits, q.k per head, on the RMS-normalised embeddings (gain 1 at start).
    let var = |suffix: &str| {
        params
            .iter()
            .find(|(n, _)| n.ends_with(suffix))
            .map(|(_, v)| v.as_tensor().clone())
            .unwrap_or_else(|| panic!("no parameter {suffix}"))
    };
    let n = t.lengths[0];
    let x = var("embed_tokens.weight")
        .index_select(&ids.get(0).unwrap().narrow(0, 0, n).unwrap(), 0)
        .unwrap();
    let rms = x.sqr().unwrap().mean_keepdim(1).unwrap().sqrt().unwrap();
    let x = x.broadcast_div(&rms).unwrap();
    let heads = var("block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        .dim(1)
        .unwrap();
    let split = |w: &Tensor| {
        let y = x.matmul(&w.t().unwrap()).unwrap(); // (n, heads * d_kv)
        y.reshape((n, heads, ()))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let q = split(&var("block.0.layer.0.SelfAttention.q.weight"));
    let k = split(&var("block.0.layer.0.SelfAttention.k.weight"));
    let logits = q.matmul(&k.transpose(1, 2).unwrap()).unwrap();
    let values = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mean = values.iter().sum::<f32>() / values.len() as f32;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt();
    let top = candle_nn::ops::softmax_last_dim(&logits)
        .unwrap()
        .max(2)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // Measured: T5's initialisation gives logits of std 1.01 and a mean top weight of 0.30; the unscaled
    // queries gave 5.70 (about sqrt(d_kv)) and 0.79. Below 2 and 0.6 the softmax still has a gradient.
    assert!(
        std < 2.0,
        "first-layer attention logits have std {std:.2}: the softmax saturates"
    );
    assert!(
        top < 0.6,
        "mean top attention weight {top:.2}: each head looks at one word"
    );

    let emb = model.text_encoder.prompt_embeds(&ids, &mask).unwrap();
    let row = |i: usize, pos: usize| -> Vec<f32> {
        emb.get(i).unwrap().get(pos).unwrap().to_vec1().unwrap()
    };
    let cos = |x: &[f32], y: &[f32]| {
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
        dot(x, y) / (dot(x, x) * dot(y, y)).sqrt()
    };
    // Word positions: "red" is word 1 of `a` and word 8 of `b`; "blue" the other way round. A
    // context-free encoder gives 1.000; 0.95 asks only that the noun is a visible part of the vector.
    let red = cos(&row(0, 1), &row(1, 8));
    let blue = cos(&row(0, 8), &row(1, 1));
    assert!(
        red < 0.95 && blue < 0.95,
        "the colour words' vectors ignore their nouns: cos {red:.3} (red), {blue:.3} (blue)"
    );
}

#[test]
fn the_vae_with_zero_earlier_taps_is_per_frame() {
    // The recipe trains the VAE on single frames; this holds only if a video encodes and decodes as its
    // frames do one by one.
    let recipe = Recipe::smoke();
    let (varmap, vae) = stages::new_vae(&recipe, &Device::Cpu).unwrap();
    init::init_params(&init::sorted_vars(&varmap, ""), 3).unwrap();
    let x = Tensor::rand(-1f32, 1.0, (1, 3, 5, 32, 32), &Device::Cpu).unwrap();
    let (video, _) = vae.encode(&x).unwrap();
    let per_frame: Vec<Tensor> = (0..5)
        .map(|t| vae.encode(&x.narrow(2, t, 1).unwrap()).unwrap().0)
        .collect();
    let per_frame = Tensor::cat(&per_frame, 2).unwrap();
    let e = sorrel_testkit::max_abs_diff(&video, &per_frame);
    // Identical arithmetic but for summation order in conv2d over zero channels: f32 rounding only.
    assert!(e < 1e-5, "encode differs from per-frame encode by {e}");
    let dec = vae.decode(&video).unwrap();
    let dec1 = vae.decode(&video.narrow(2, 3, 1).unwrap()).unwrap();
    let e = sorrel_testkit::max_abs_diff(&dec.narrow(2, 3, 1).unwrap(), &dec1);
    assert!(e < 1e-5, "decode of frame 3 depends on other frames by {e}");
}

#[test]
fn smoke_training_resumes_exports_a_loadable_model_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let (work, out) = (dir.path().join("run"), dir.path().join("model"));
    let mut recipe = Recipe::smoke();
    // Stopped early at a constant rate, as a long run is before its decay tail.
    recipe.dit_steps = 3;
    recipe.dit_lr_decay_steps = 0;
    train_on_cpu(&recipe, &work, &out, false).unwrap();
    // The same folder without --resume is refused; with another recipe too.
    let err = train_on_cpu(&recipe, &work, &out, false).unwrap_err();
    assert!(err.to_string().contains("pass --resume"), "{err}");
    let mut other = recipe.clone();
    other.layers = 2;
    let err = train_on_cpu(&other, &work, &out, true).unwrap_err();
    assert!(err.to_string().contains("different recipe"), "{err}");

    // Resuming to 6 steps, now with the decay tail, gives the same weights as 6 steps straight.
    recipe.dit_steps = 6;
    recipe.dit_lr_decay_steps = Recipe::smoke().dit_lr_decay_steps;
    train_on_cpu(&recipe, &work, &out, true).unwrap();
    let straight = dir.path().join("straight");
    train_on_cpu(&recipe, &dir.path().join("run2"), &straight, false).unwrap();
    let a = candle_core::safetensors::load(
        out.join("transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let b = candle_core::safetensors::load(
        straight.join("transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, t) in &a {
        assert_eq!(
            sorrel_testkit::max_abs_diff(t, &b[name]),
            0.0,
            "{name} differs after resume"
        );
    }
    let log = std::fs::read_to_string(work.join("loss.csv")).unwrap();
    assert!(
        log.contains("vae,6,") && log.contains("transformer,6,") && log.contains("decoder,4,"),
        "{log}"
    );
    assert!(work.join("loss.png").is_file());

    let pipe = WanPipeline::load(&out, &LoadOptions::default()).unwrap();
    assert_eq!(pipe.info.defaults.frames, recipe.frames);
    assert_eq!(pipe.native_fps(), recipe.fps);
    let req = GenerateRequest {
        prompt: "a red ball bounces on a blue floor".into(),
        width: 32,
        height: 32,
        frames: recipe.frames,
        steps: 2,
        ..GenerateRequest::default()
    };
    let v = pipe.generate(&req, &mut |_| true).unwrap();
    assert_eq!(v.frames.dims(), [recipe.frames, 32, 32, 3]);
    // Sizes and lengths this model cannot make are refused, naming the limit.
    for (w, f, needle) in [
        (36, 4, "multiple of 8"),
        (256, 4, "too large"),
        // One window (4 frames) or less runs as one clip, in whole time patches; longer runs roll out.
        (32, 3, "multiple of 2"),
        (32, 100_000, "at most 600 s"),
    ] {
        let bad = GenerateRequest {
            width: w,
            height: w,
            frames: f,
            ..req.clone()
        };
        let e = match pipe.generate(&bad, &mut |_| true) {
            Ok(_) => panic!("{w}x{w} {f} frames was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle), "{w}x{w} {f} frames: {e}");
    }

    let report = evaluate(
        &pipe,
        &EvalOptions {
            clips: 2,
            held_out: true,
            steps: Some(2),
            guidance: None,
            offset: 0,
            modes: true,
            rollouts: 1,
            rollout_seconds: 3,
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.clips.len(), 4);
    // The smoke model was trained with given frames, so every mode's row is there.
    assert_eq!(report.paraphrase.as_ref().unwrap().clips, 2);
    assert_eq!(report.image.as_ref().unwrap().scores.clips, 2);
    assert_eq!(report.join.as_ref().unwrap().joins, 2);
    let rollout = report.rollout.as_ref().unwrap();
    assert_eq!(
        rollout.each[0].1.windows,
        3 * recipe.fps as usize / recipe.frames
    );
    // One frame every 4 s: 3 s of video give the first frame alone.
    assert_eq!(report.rollout_frames[0].1.len(), 1);

    // Continuing from the exported model: its VAE kept, the transformer trained on, the folder complete.
    let cont = dir.path().join("continued");
    toyworld::continue_from(
        &recipe,
        &out,
        &dir.path().join("run3"),
        &cont,
        false,
        &candle_core::Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        std::fs::read(cont.join("vae/diffusion_pytorch_model.safetensors")).unwrap(),
        std::fs::read(out.join("vae/diffusion_pytorch_model.safetensors")).unwrap()
    );
    let pipe = WanPipeline::load(&cont, &LoadOptions::default()).unwrap();
    assert!(pipe.info.defaults.rolls_out());
    let v = pipe
        .generate(&GenerateRequest { frames: 12, ..req }, &mut |_| true)
        .unwrap();
    assert_eq!(v.frames.dims(), [12, 32, 32, 3]);
    assert_eq!(
        report.ground_truth.all, 100.0,
        "the scorer passes the ground truth"
    );
}

fn load(dir: &std::path::Path, rel: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(rel), &Device::Cpu).unwrap()
}

#[test]
fn refining_an_exported_model_gives_the_run_from_scratch_and_leaves_the_encoder_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let recipe = Recipe::smoke();
    let without = Recipe {
        decoder_steps: 0,
        ..recipe.clone()
    };
    train_on_cpu(&without, &p("run-a"), &p("plain"), false).unwrap();
    toyworld::refine(
        &recipe,
        &p("plain"),
        &p("refine"),
        &p("refined"),
        false,
        &candle_core::Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    train_on_cpu(&recipe, &p("run-b"), &p("scratch"), false).unwrap();

    let vae = "vae/diffusion_pytorch_model.safetensors";
    let (plain, refined, scratch) = (
        load(&p("plain"), vae),
        load(&p("refined"), vae),
        load(&p("scratch"), vae),
    );
    let mut decoder_changed = 0;
    for (name, t) in &plain {
        assert_eq!(
            sorrel_testkit::max_abs_diff(&refined[name], &scratch[name]),
            0.0,
            "{name}: refining the exported folder differs from the run from scratch"
        );
        let moved = sorrel_testkit::max_abs_diff(t, &refined[name]);
        if toyworld::decoder::is_decoder_weight(name) {
            decoder_changed += usize::from(moved > 0.0);
        } else {
            assert_eq!(moved, 0.0, "{name} is not the decoder's but changed");
        }
    }
    assert!(
        decoder_changed > 10,
        "only {decoder_changed} decoder weights moved"
    );
    for rel in [
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ] {
        let (a, b) = (load(&p("plain"), rel), load(&p("refined"), rel));
        for (name, t) in &a {
            assert_eq!(
                sorrel_testkit::max_abs_diff(t, &b[name]),
                0.0,
                "{rel} {name}"
            );
        }
    }
    let config = |d: &str| std::fs::read_to_string(p(d).join("vae/config.json")).unwrap();
    assert_eq!(config("refined"), config("scratch"));
    let log = std::fs::read_to_string(p("refine").join("loss.csv")).unwrap();
    assert!(log.contains("decoder,4,"), "{log}");
    WanPipeline::load(&p("refined"), &LoadOptions::default()).unwrap();

    // A refined folder, an occupied work folder and a foreign recipe are refused, saying why.
    let again = |model: &str, work: &str, r: &Recipe| {
        toyworld::refine(
            r,
            &p(model),
            &p(work),
            &p("x"),
            false,
            &candle_core::Device::Cpu,
            &mut |_| {},
        )
        .unwrap_err()
        .to_string()
    };
    assert!(again("refined", "w1", &recipe).contains("already refined"));
    assert!(again("plain", "refine", &recipe).contains("pass --resume"));
    let wider = Recipe {
        vae_dim: 8,
        ..recipe.clone()
    };
    assert!(again("plain", "w2", &wider).contains("another recipe"));
    assert!(again("missing", "w3", &recipe).contains("not a model folder"));
    assert!(!p("x").exists());
}
