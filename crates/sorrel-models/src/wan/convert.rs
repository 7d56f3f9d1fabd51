//! The original Wan2.1 release layout: key names and the configurations its code hard-codes.
//!
//! Model code asks for diffusers/transformers names; the functions here give the name the original
//! checkpoint stores, so the original files load through a renaming [`sorrel_core::TensorSource`] without
//! converting anything on disk.

use serde_json::{json, Value};

/// Diffusers `WanTransformer3DModel` key -> original `WanModel` key.
///
/// The original calls its norms norm1, norm3 (cross-attention, affine), norm2; diffusers renumbers them
/// norm1, norm2, norm3, so only the affine one (diffusers' norm2) appears in checkpoints.
pub fn transformer_key_to_original(name: &str) -> String {
    if name == "scale_shift_table" {
        return "head.modulation".into();
    }
    if let Some(rest) = name.strip_prefix("proj_out.") {
        return format!("head.head.{rest}");
    }
    if let Some(rest) = name.strip_prefix("condition_embedder.") {
        let mapped = [
            ("time_embedder.linear_1.", "time_embedding.0."),
            ("time_embedder.linear_2.", "time_embedding.2."),
            ("text_embedder.linear_1.", "text_embedding.0."),
            ("text_embedder.linear_2.", "text_embedding.2."),
            ("time_proj.", "time_projection.1."),
        ]
        .iter()
        .find_map(|(d, o)| rest.strip_prefix(d).map(|r| format!("{o}{r}")));
        return mapped.unwrap_or_else(|| name.to_string());
    }
    if let Some(rest) = name.strip_prefix("blocks.") {
        let (idx, rest) = rest.split_once('.').unwrap_or((rest, ""));
        let mapped = if rest == "scale_shift_table" {
            "modulation".to_string()
        } else if let Some(r) = rest.strip_prefix("attn1.") {
            format!("self_attn.{}", attention_key(r))
        } else if let Some(r) = rest.strip_prefix("attn2.") {
            format!("cross_attn.{}", attention_key(r))
        } else if let Some(r) = rest.strip_prefix("norm2.") {
            format!("norm3.{r}")
        } else if let Some(r) = rest.strip_prefix("ffn.net.0.proj.") {
            format!("ffn.0.{r}")
        } else if let Some(r) = rest.strip_prefix("ffn.net.2.") {
            format!("ffn.2.{r}")
        } else {
            rest.to_string()
        };
        return format!("blocks.{idx}.{mapped}");
    }
    name.to_string()
}

fn attention_key(r: &str) -> String {
    for (d, o) in [
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "o."),
    ] {
        if let Some(rest) = r.strip_prefix(d) {
            return format!("{o}{rest}");
        }
    }
    r.to_string() // norm_q / norm_k keep their names
}

/// The Wan2.1 VAE configuration (`Wan2.1_VAE.pth` ships without one; Wan's code hard-codes it), in diffusers'
/// `AutoencoderKLWan` field names.
pub fn original_vae_config() -> Value {
    json!({
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
        "temperal_downsample": [false, true, true], "dropout": 0.0,
        "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                         0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
        "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916]
    })
}

/// The umt5-xxl encoder configuration that `models_t5_umt5-xxl-enc-bf16.pth` was saved from, in transformers'
/// `UMT5Config` field names.
pub fn original_text_encoder_config() -> Value {
    json!({
        "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240, "num_layers": 24,
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true,
        "layer_norm_epsilon": 1e-6
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_names_follow_the_conversion_table() {
        let cases = [
            (
                "condition_embedder.time_embedder.linear_1.weight",
                "time_embedding.0.weight",
            ),
            (
                "condition_embedder.text_embedder.linear_2.bias",
                "text_embedding.2.bias",
            ),
            (
                "condition_embedder.time_proj.weight",
                "time_projection.1.weight",
            ),
            ("blocks.3.attn1.to_q.weight", "blocks.3.self_attn.q.weight"),
            ("blocks.3.attn2.to_out.0.bias", "blocks.3.cross_attn.o.bias"),
            (
                "blocks.0.attn2.norm_k.weight",
                "blocks.0.cross_attn.norm_k.weight",
            ),
            ("blocks.12.norm2.weight", "blocks.12.norm3.weight"),
            ("blocks.1.ffn.net.0.proj.weight", "blocks.1.ffn.0.weight"),
            ("blocks.1.ffn.net.2.bias", "blocks.1.ffn.2.bias"),
            ("blocks.1.scale_shift_table", "blocks.1.modulation"),
            ("scale_shift_table", "head.modulation"),
            ("proj_out.weight", "head.head.weight"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ];
        for (d, o) in cases {
            assert_eq!(transformer_key_to_original(d), o, "{d}");
        }
    }
}
