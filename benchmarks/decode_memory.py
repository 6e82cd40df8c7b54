"""Peak memory and time of decoding a large JPEG for extraction: full decode + resize vs draft-mode decoding.

Generates photo-like JPEGs (12 MP and 100 MP by default; smooth colour fields with fine noise, quality 90) and,
each in a fresh process, decodes them the way extraction used to (`read_image_rgb` at full size, then the
bilinear resize to `--resize`) and the way it does now (`decode_image(path, resize)`: Pillow's draft mode
decodes at 1/2, 1/4 or 1/8 scale, then the same resize). Also times the readability check every step shares
(`unreadable_reason`, a full decode at 1/8 scale) against the header-only check it replaced (PIL verify).
Peak memory is the process's peak RSS (VmHWM, Linux) minus its RSS after the imports.

Usage: python benchmarks/decode_memory.py [--megapixels 12 100] [--resize 384] [--repeats 3] [--out DIR]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {
    "before": "full decode (read_image_rgb) + resize",
    "after": "decode_image(path, resize): draft + resize",
    "check": "unreadable_reason (1/8-scale full decode)",
    "verify": "PIL verify (header check, the old colmap check)",
}

CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")            # Pillow's DecompressionBombWarning above 89 MP
import numpy as np
from PIL import Image
from mirror_sfm.images import decode_image, read_image_rgb, resized_size, unreadable_reason
path, mode, long_side, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def status_mb(key):   # VmRSS: now; VmHWM: peak of this process image (ru_maxrss would carry the parent's over)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

def run():
    if mode == "before":   # what extraction did before draft decoding
        rgb = read_image_rgb(path)
        h, w = rgb.shape[:2]
        return np.asarray(Image.fromarray(rgb).resize(resized_size(w, h, long_side), Image.BILINEAR,
                                                      reducing_gap=3.0)).shape
    if mode == "after":
        return decode_image(path, long_side)[0].shape
    if mode == "check":
        return unreadable_reason(path)
    with Image.open(path) as img:
        img.verify()

base = status_mb("VmRSS")
times = []
for _ in range(repeats):
    t = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t)
peak = status_mb("VmHWM")
print(json.dumps({"base_mb": base, "peak_mb": peak, "times": times, "out": str(out)}))
"""


def make_jpeg(path: Path, megapixels: float, seed: int = 0) -> tuple[int, int]:
    """A 4:3 photo-like JPEG: a smooth random colour field plus fine noise (compresses like a real photo)."""
    import numpy as np
    from PIL import Image

    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (h // 64 + 1, w // 64 + 1, 3), dtype=np.uint8))
    img = np.asarray(field.resize((w, h), Image.BICUBIC), dtype=np.int16)
    for y in range(0, h, 1024):  # noise in strips: bounded memory
        strip = img[y : y + 1024]
        strip += rng.integers(-12, 13, strip.shape, dtype=np.int16)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return w, h


def measure(path: Path, mode: str, long_side: int, repeats: int) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, str(long_side), str(repeats)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megapixels", type=float, nargs="+", default=[12, 100])
    ap.add_argument("--resize", type=int, default=384, help="extraction's long side (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="decodes per process; the median time is reported")
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "decode_memory")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.megapixels:
            path = Path(tmp) / f"{mp:g}mp.jpg"
            w, h = make_jpeg(path, mp)
            size_mb = path.stat().st_size / 1e6
            for mode in MODES:
                r = measure(path, mode, args.resize, args.repeats)
                rows.append(
                    {
                        "megapixels": round(w * h / 1e6, 1),
                        "width": w,
                        "height": h,
                        "file_mb": round(size_mb, 1),
                        "mode": mode,
                        "median_s": round(sorted(r["times"])[len(r["times"]) // 2], 3),
                        "peak_rss_mb": round(r["peak_mb"]),
                        "over_base_mb": round(r["peak_mb"] - r["base_mb"]),
                        "result": r["out"],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    record = {
        "rows": rows,
        "resize": args.resize,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    (args.out / "decode_memory.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"| image | mode | time (median of {args.repeats}) | peak RSS | over baseline |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['megapixels']:g} MP ({r['width']}×{r['height']}, {r['file_mb']:g} MB) "
            f"| {MODES[r['mode']]} | {r['median_s']:.3f} s | {r['peak_rss_mb']} MB "
            f"| +{r['over_base_mb']} MB |"
        )
    (args.out / "decode_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
