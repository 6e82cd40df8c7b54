"""benchmarks/index_scale.py (issue 14): the real-like vectors and the index benchmark, on tiny inputs (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
FIXTURE = Path(__file__).parent / "fixtures" / "mary_rose" / "images"
sys.path.insert(0, str(BENCH))
import index_scale  # noqa: E402


def test_range_max_table_is_the_max_over_each_rectangle():
    x = torch.rand(5, 7, 6)
    rows, row_spans = index_scale.range_max(x, 1, 3)
    table, col_spans = index_scale.range_max(rows, 2, 2)
    assert table.shape == (len(col_spans), len(row_spans), 5)
    for i, (c0, c1) in enumerate(col_spans):
        for j, (r0, r1) in enumerate(row_spans):
            assert r1 - r0 >= 3 and c1 - c0 >= 2
            assert torch.equal(table[i, j], x[:, r0:r1, c0:c1].amax(dim=(-2, -1)))


def test_views_give_unit_vectors_the_first_the_products_descriptor(imagenet_model):
    path = sorted(FIXTURE.iterdir())[0]
    plain = index_scale.augmented_view(path, 7, 0)
    assert max(plain.shape[1:]) == 384  # view 0: the image extraction describes
    vecs = index_scale.view_vectors(imagenet_model, plain, 30, 1)
    with torch.inference_mode():
        glob, _ = imagenet_model.describe(plain[None])
    assert vecs.shape == (31, 1280) and vecs.dtype == np.float16
    assert np.allclose(vecs[0], glob[0].numpy(), atol=2e-3)
    assert np.allclose(np.linalg.norm(vecs.astype(np.float32), axis=1), 1, atol=2e-3)
    assert len(np.unique(vecs, axis=0)) > 25  # distinct rectangles
    aug = index_scale.augmented_view(path, 7, 3)
    assert torch.equal(aug, index_scale.augmented_view(path, 7, 3))  # fixed seed: resumable shards agree
    assert 288 <= max(aug.shape[1:]) <= 480 and not torch.equal(aug[:, :10, :10], plain[:, :10, :10])


def _run(*args, cwd):
    out = subprocess.run(
        [sys.executable, str(BENCH / "index_scale.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_and_full_on_tiny_shards(tmp_path):
    out = tmp_path / "vecs"
    (out / "shards").mkdir(parents=True)
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(size=(60, 256)))
    x = centres[rng.integers(0, 60, 3000)] + 0.5 * np.abs(rng.normal(size=(3000, 256)))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    np.save(out / "shards" / "0000.npy", x[:1800])
    np.save(out / "shards" / "0001.npy", x[1800:])
    meta = {"photos": 2, "augmentations": 1, "regions": 0, "photos_per_shard": 1, "vectors": 3000}
    (out / "vectors.json").write_text(json.dumps(meta))
    common = ["--out", str(out), "--queries", "200", "--threads", "1"]
    bench = ["bench", "--sizes", "2500", "--configs", "exact", "pcar-ivfpq48", "--nprobe", "8"]
    _run(*bench, "--refine", "0", "100", *common, cwd=tmp_path)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["config"], r.get("refine")) for r in rows] == [
        ("exact", None),
        ("pcar-ivfpq48", 0),
        ("pcar-ivfpq48", 100),
    ]
    assert rows[0]["recall"] == 1.0 and rows[0]["search_all_s"] > 0
    assert rows[1]["spec"] == "PCAR240,IVF256,PQ48np" and rows[1]["bytes_per_vector"] > 56
    assert rows[2]["recall"] > rows[1]["recall"] and rows[2]["recall"] > 0.9
    assert (out / "gt_2500_200_50.npz").exists()
    assert "already in" in _run(*bench, *common, cwd=tmp_path)  # resumed: nothing recomputed
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    _run("full", "--sizes", "2500", "--exact-max", "1000", *common, cwd=tmp_path)
    (full,) = [json.loads(line) for line in (out / "full.jsonl").read_text().splitlines()]
    assert full["spec"] == "PCAR240,IVF{nlist},PQ48np" and full["refine"] == 400 and full["recall"] > 0.9
    table = _run("table", "--out", str(out), cwd=tmp_path)
    assert table.count("\n") == 5 and "pcar-ivfpq48" in table
