"""Side-by-side H.264 encoding: diffusers' `export_to_video` (imageio + ffmpeg/libx264, what diffusers'
Wan examples use to save a clip) against Sorrel, on the frames that

    cargo run --release -p sorrel-media --example encode_bench 3 DIR

wrote to DIR (`frames_WxH.npy`, plus Sorrel's own `sorrel_qQ_WxH.mp4` at three qualities). Times
`export_to_video` (median of RUNS), then measures the PSNR of every MP4 against the source frames, decoding
with the system ffmpeg, so speed can be compared at matched quality and size.

    python tools/reference/bench_encode.py DIR [RUNS]
"""

import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from diffusers.utils import export_to_video


def decode(path: str, w: int, h: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def main() -> None:
    folder = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    print(f"| size | encoder | frames/s (median of {runs}) | file kB | PSNR dB |")
    print("|---|---|---|---|---|")
    for w, h in [(256, 256), (832, 480)]:
        frames = np.load(f"{folder}/frames_{w}x{h}.npy")
        # export_to_video takes float frames in [0, 1] (or PIL images) and quantises them itself.
        video = [f.astype(np.float32) / 255.0 for f in frames]
        times = []
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "diffusers.mp4")
            for _ in range(runs):
                t = time.perf_counter()
                export_to_video(video, out, fps=16)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            size = os.path.getsize(out) / 1000
            db = psnr(frames, decode(out, w, h))
        print(f"| {w}x{h} | diffusers export_to_video (libx264, quality 5) | {len(video) / med:.1f} | {size:.1f} | {db:.2f} |")
        for path in sorted(glob.glob(f"{folder}/sorrel_q*_{w}x{h}.mp4")):
            q = os.path.basename(path).split("_")[1]
            db = psnr(frames, decode(path, w, h))
            print(f"| {w}x{h} | Sorrel H.264 {q} | (encode_bench) | {os.path.getsize(path) / 1000:.1f} | {db:.2f} |")


if __name__ == "__main__":
    main()
