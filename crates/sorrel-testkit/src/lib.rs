//! Helpers for the parity tests of every crate: where the committed fixtures are, their reference tensors
//! and run metadata, the error measures the tests assert on, and Debian's ffprobe as the independent
//! judge of written video files. A dev-dependency only.

pub mod postgres;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/<name>` at the workspace root.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Every tensor of a fixture's `reference.safetensors`.
pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

/// The `__metadata__` of a fixture's `reference.safetensors`: prompt, negative_prompt, width, height,
/// num_frames, steps, guidance_scale, max_sequence_length, scheduler, flow_shift.
pub fn reference_metadata(name: &str) -> HashMap<String, String> {
    file_metadata(&fixture(name).join("reference.safetensors"))
}

/// The `__metadata__` of any safetensors file.
pub fn file_metadata(path: &Path) -> HashMap<String, String> {
    let mut f = std::fs::File::open(path).unwrap();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut header).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    serde_json::from_value(header["__metadata__"].clone()).unwrap()
}

/// Largest absolute difference between two tensors of the same shape, compared in f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    max_abs(&(a - b).unwrap())
}

/// Root mean square of the difference between two tensors of the same shape, compared in f32.
pub fn rms_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .sqrt()
}

/// Holds a bf16 result (`ours`) to the fp32 reference (`fp32`) no further than the reference library's own bf16
/// result (`theirs`) is from it, with a margin of 1.5x in RMS and in the largest error, and the two bf16 results
/// to each other as closely (1.5x the larger RMS). The two round in different places, so neither matches the
/// other bit for bit; a bug (a missing bias, a wrong tap) lands far outside these bounds.
pub fn assert_bf16_parity(label: &str, ours: &Tensor, theirs: &Tensor, fp32: &Tensor) {
    let (ours_rms, ours_max) = (rms_diff(ours, fp32), max_abs_diff(ours, fp32));
    let (theirs_rms, theirs_max) = (rms_diff(theirs, fp32), max_abs_diff(theirs, fp32));
    let between = rms_diff(ours, theirs);
    eprintln!(
        "{label}: bf16 from fp32: Sorrel RMS {ours_rms:.3e} max {ours_max:.3e}, reference RMS \
         {theirs_rms:.3e} max {theirs_max:.3e}; Sorrel from the reference's bf16 RMS {between:.3e}"
    );
    assert!(
        theirs_rms > 0.0,
        "{label}: the bf16 reference equals fp32: not a bf16 run"
    );
    assert!(
        ours_rms <= 1.5 * theirs_rms,
        "{label}: RMS {ours_rms} from fp32, the reference's bf16 {theirs_rms}"
    );
    assert!(
        ours_max <= 1.5 * theirs_max,
        "{label}: largest error {ours_max} from fp32, the reference's bf16 {theirs_max}"
    );
    assert!(
        between <= 1.5 * theirs_rms.max(ours_rms),
        "{label}: the two bf16 results are {between} apart (RMS)"
    );
}

/// Mean absolute difference between two tensors of the same shape, compared in f32.
pub fn mean_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A tensor of `shape` (f32, CPU) with reproducible values in [-amplitude, amplitude) from a small LCG: the
/// same values on every machine, without a random-number dependency.
pub fn lcg_tensor(shape: &[usize], seed: u64, amplitude: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut x = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 * amplitude - amplitude
        })
        .collect();
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap()
}

/// Largest absolute value, to show the scale an error is measured against.
pub fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The header and data of a little-endian f32 `.npy` file (version 1.0, as `sorrel generate -o x.npy` writes).
pub fn read_npy_f32(path: &Path) -> (String, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let n = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8(bytes[10..10 + n].to_vec()).unwrap();
    let data = bytes[10 + n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (header, data)
}

/// Copies a folder tree (to make a fixture that a test then damages or converts).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// What ffprobe says about the first video stream, after decoding every frame.
#[derive(Debug)]
pub struct Probe {
    pub codec: String,
    pub width: u64,
    pub height: u64,
    pub frames: u64,
    pub r_frame_rate: String,
    pub avg_frame_rate: String,
    pub stream_duration: Option<f64>,
    pub format_duration: Option<f64>,
    pub format_name: String,
    pub pix_fmt: String,
}

/// Runs Debian's ffprobe on `path`; panics (with the install hint) if it is missing.
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries"])
        .args([
            "stream=codec_name,width,height,r_frame_rate,avg_frame_rate,nb_read_frames,duration,pix_fmt:format=duration,format_name",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is needed by these tests: apt-get install ffmpeg (.ci/run does)");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ffprobe complained: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    let num = |x: &serde_json::Value| x.as_str().and_then(|s| s.parse::<f64>().ok());
    Probe {
        codec: s["codec_name"].as_str().unwrap_or_default().into(),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        frames: s["nb_read_frames"].as_str().unwrap_or("0").parse().unwrap(),
        r_frame_rate: s["r_frame_rate"].as_str().unwrap_or_default().into(),
        avg_frame_rate: s["avg_frame_rate"].as_str().unwrap_or_default().into(),
        stream_duration: num(&s["duration"]),
        format_duration: num(&v["format"]["duration"]),
        format_name: v["format"]["format_name"]
            .as_str()
            .unwrap_or_default()
            .into(),
        pix_fmt: s["pix_fmt"].as_str().unwrap_or_default().into(),
    }
}

/// A test Ed25519 signing identity with the C2PA profile, written into `dir`: returns (chain PEM path,
/// PKCS#8 key path, CA certificate PEM). The signer is an end-entity certificate with emailProtection and an
/// authority key identifier, issued by a throwaway Ed25519 CA.
pub fn ed25519_identity(dir: &Path) -> (PathBuf, PathBuf, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PKCS_ED25519,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "test ed25519 CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let mut ee = CertificateParams::new(Vec::<String>::new()).unwrap();
    ee.distinguished_name
        .push(DnType::CommonName, "test ed25519 signer");
    ee.is_ca = IsCa::ExplicitNoCa;
    ee.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    ee.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    ee.use_authority_key_identifier_extension = true;
    let cert = ee.signed_by(&key, &Issuer::new(ca, &ca_key)).unwrap();
    let chain = dir.join("ed25519-chain.pem");
    let key_path = dir.join("ed25519.key");
    std::fs::write(&chain, format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (chain, key_path, ca_cert.pem())
}

/// Runs Debian's ffmpeg from `input` to `output` with `args` between them (a re-encode, a filter, a trim);
/// panics with ffmpeg's message if it fails, or with the install hint if it is missing.
pub fn ffmpeg_transcode(input: &Path, output: &Path, args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-y", "-i"])
        .arg(input)
        .args(args)
        .arg(output)
        .output()
        .expect("ffmpeg is needed by these tests: apt-get install ffmpeg (.ci/run does)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Peak signal-to-noise ratio of 8-bit `b` against `a`, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "size mismatch");
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Real-looking test video as RGB8 frames: a multi-octave value-noise landscape in colour that pans across
/// the frame, with three textured objects moving over it. Different `seed`s give different content.
pub fn textured_frames(width: usize, height: usize, frames: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x9E37_79B9_7F4A_7C15;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    // A lattice of random values per octave and channel, sampled with smooth interpolation.
    const LATTICE: usize = 64;
    let octaves: Vec<(f32, f32, Vec<[f32; 3]>)> =
        [(1.0 / 96.0, 0.5), (1.0 / 32.0, 0.3), (1.0 / 8.0, 0.2)]
            .iter()
            .map(|&(freq, amp)| {
                let grid = (0..LATTICE * LATTICE)
                    .map(|_| [rand(), rand(), rand()])
                    .collect();
                (freq, amp, grid)
            })
            .collect();
    let noise = |x: f32, y: f32| {
        let mut c = [0.0f32; 3];
        for (freq, amp, grid) in &octaves {
            let (u, v) = (x * freq, y * freq);
            let (iu, iv) = (u.floor(), v.floor());
            let (fu, fv) = (u - iu, v - iv);
            let (su, sv) = (fu * fu * (3.0 - 2.0 * fu), fv * fv * (3.0 - 2.0 * fv));
            let at = |i: f32, j: f32| {
                let i = (i as i64).rem_euclid(LATTICE as i64) as usize;
                let j = (j as i64).rem_euclid(LATTICE as i64) as usize;
                grid[j * LATTICE + i]
            };
            let (a, b, cc, d) = (
                at(iu, iv),
                at(iu + 1.0, iv),
                at(iu, iv + 1.0),
                at(iu + 1.0, iv + 1.0),
            );
            for k in 0..3 {
                let top = a[k] + (b[k] - a[k]) * su;
                let bottom = cc[k] + (d[k] - cc[k]) * su;
                c[k] += amp * (top + (bottom - top) * sv);
            }
        }
        c
    };
    let objects: Vec<[f32; 7]> = (0..3)
        .map(|_| {
            [
                rand() * width as f32,
                rand() * height as f32,
                (rand() - 0.5) * 8.0,
                (rand() - 0.5) * 6.0,
                height as f32 * (0.08 + 0.1 * rand()),
                rand(),
                rand(),
            ]
        })
        .collect();
    let (pan_x, pan_y) = ((rand() - 0.5) * 6.0, (rand() - 0.5) * 3.0);
    (0..frames)
        .map(|f| {
            let t = f as f32;
            let mut rgb = Vec::with_capacity(width * height * 3);
            for y in 0..height {
                for x in 0..width {
                    let (xf, yf) = (x as f32, y as f32);
                    let mut c = noise(xf + pan_x * t, yf + pan_y * t);
                    for o in &objects {
                        let (cx, cy) = (o[0] + o[2] * t, o[1] + o[3] * t);
                        let (dx, dy) = (xf - cx, yf - cy);
                        if dx * dx + dy * dy < o[4] * o[4] {
                            let stripes = ((dx * 0.4 + dy * 0.2 + t).sin() * 0.5 + 0.5) * 0.4;
                            c = [o[5] * 0.6 + stripes, o[6] * 0.6 + stripes, 0.3 + stripes];
                        }
                    }
                    for v in c {
                        rgb.push((v * 255.0).round().clamp(0.0, 255.0) as u8);
                    }
                }
            }
            rgb
        })
        .collect()
}

/// Runs `cmd` to the end with its output captured, and returns the output with the child's own peak
/// resident memory in bytes (its `ru_maxrss` from `wait4`, which, unlike `getrusage(RUSAGE_CHILDREN)`,
/// is this child's alone).
// The child is reaped by `wait4` below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn run_measuring_peak_rss(cmd: &mut Command) -> (std::process::Output, u64) {
    use std::process::Stdio;
    let dir = std::env::temp_dir();
    let out = tempfile_in(&dir, "stdout");
    let err = tempfile_in(&dir, "stderr");
    let child = cmd
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("start the command");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 fills the two out-parameters, which live on this stack for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4 on the child");
    let output = std::process::Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    };
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    // Linux reports ru_maxrss in kilobytes.
    (output, usage.ru_maxrss as u64 * 1024)
}

fn tempfile_in(dir: &Path, what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        "sorrel-testkit-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}
