//! Loading a safetensors checkpoint holds its weights once: each tensor's pages of the memory map leave the
//! process's resident memory as soon as the tensor is copied out (without that, loading peaked at twice the
//! checkpoint). One test in its own binary, so no other test's allocations move the process's peak.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sorrel_core::weights::TensorSource;

/// A field of /proc/self/status in kB.
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
#[cfg(target_os = "linux")]
fn loading_holds_the_weights_once_and_every_value_survives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // 24 tensors of about 8 MB with odd lengths, so tensors share pages at their edges: releasing one
    // tensor's pages (rounded out to whole pages) must not lose its neighbour's bytes.
    let len = |i: usize| 2_000_003 + 17 * i;
    let mut want: HashMap<String, Tensor> = HashMap::new();
    for i in 0..24usize {
        let t = Tensor::arange(0u32, len(i) as u32, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .affine(1.0, i as f64)
            .unwrap();
        want.insert(format!("w{i}"), t);
    }
    candle_core::safetensors::save(&want, &path).unwrap();
    let bytes = std::fs::metadata(&path).unwrap().len() / 1024;
    drop(want);

    let src = TensorSource::open(&[path]).unwrap();
    let vb = src.into_var_builder(DType::F32, &Device::Cpu);
    // The file's pages this process holds (the map's), apart from its own memory (the copies): measured while
    // the map is still open, as it is until a whole model is built.
    let before = status_kb("RssFile:");
    let loaded: Vec<Tensor> = (0..24)
        .map(|i| vb.get_unchecked(&format!("w{i}")).unwrap())
        .collect();
    let held = status_kb("RssFile:").saturating_sub(before);
    assert!(
        (held as f64) < 0.05 * bytes as f64,
        "after loading a {bytes} kB checkpoint, {held} kB of its mapped pages are still resident beside the \
         copies: loading a model would peak at twice its weights"
    );
    // Every value is intact, also those read again after their pages were released.
    for i in [0usize, 23, 11, 12, 0] {
        let t = vb.get_unchecked(&format!("w{i}")).unwrap();
        for got in [&t, &loaded[i]] {
            let v = got.to_vec1::<f32>().unwrap();
            assert_eq!(v.len(), len(i));
            assert!(
                v.iter().enumerate().all(|(k, &x)| x == (k + i) as f32),
                "tensor w{i} changed"
            );
        }
    }
}
