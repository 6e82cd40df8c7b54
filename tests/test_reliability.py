"""Issue 13: no traceback, no silent wrong result, no lost or clobbered file.

Unwritable outputs, a disk that fills up, file names that are not UTF-8, two runs on one output, truncated
JPEGs, large-JPEG decoding, log lines under a progress bar and a corrupt descriptor cache.
"""

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mirror_sfm.cli import main
from mirror_sfm.colmap import check_readable, list_usable_images
from mirror_sfm.errors import MirrorError
from mirror_sfm.extract import extract
from mirror_sfm.features_io import list_h5_names, partial_path, read_descriptors
from mirror_sfm.images import decode_image, list_images, read_image_rgb, resized_size, unreadable_reason
from mirror_sfm.io_utils import check_writable, lock_path, output_lock

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture()
def images(fixture_images, tmp_path):
    """Four of the fixture photos in a folder of their own."""
    d = tmp_path / "images"
    d.mkdir()
    for name in sorted(os.listdir(fixture_images))[:4]:
        shutil.copy(fixture_images / name, d / name)
    return d


def last_error_line(capsys_or_fd) -> str:
    err = capsys_or_fd.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


def run_python(code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


# ----------------------------------------------------------------------------- 1. unwritable outputs


def test_output_that_is_a_folder_stops_before_any_work(images, tmp_path, capsys, monkeypatch):
    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("mirror_sfm.extract.load_model", no_model)
    folder = tmp_path / "feats.h5"
    folder.mkdir()
    assert main(["extract", str(images), "-o", str(folder), "--weights", "imagenet"]) == 2
    line = last_error_line(capsys)
    assert line.startswith("mirror_sfm: error:") and str(folder) in line and "is an existing folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.h5", "images"]  # nothing else written


def test_check_writable_names_the_path_and_the_fix(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "out.txt")  # missing folders will be created: fine
    assert not (tmp_path / "new").exists()  # ... but not by the check
    (tmp_path / "file").write_text("x")
    with pytest.raises(MirrorError, match="is a file, not a folder"):
        check_writable(tmp_path / "file" / "out.txt")
    with pytest.raises(MirrorError, match="is an existing folder"):
        check_writable(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no probe file left behind


def test_read_only_folder_as_root_via_sysfs():
    """chmod does not stop root; sysfs refuses new files to everyone, so the probe catches it."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no /sys")
    with pytest.raises(MirrorError) as info:
        check_writable("/sys/kernel/pairs.txt")
    assert "/sys/kernel/pairs.txt" in str(info.value) and "make it writable or choose another output" in str(info.value)


@pytest.mark.skipif(IS_ROOT, reason="root writes into a chmod 555 folder anyway (see the /sys test for root)")
def test_read_only_folder_is_refused_before_any_work(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mirror_sfm.extract.load_model", lambda *_a, **_k: pytest.fail("model loaded"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["extract", str(images), "-o", str(ro / "feats.h5")]) == 2
        line = last_error_line(capsys)
        assert str(ro / "feats.h5") in line and "is read-only" in line
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- 2. disk full

DISK_FULL_RUN = """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # else the kernel kills the process at the limit
    limit = int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from mirror_sfm.cli import main
    sys.exit(main(["extract", sys.argv[1], "-o", sys.argv[2], "--weights", "imagenet", "--num-workers", "0",
                   "--batch-size", "2"]))
"""


def test_disk_full_is_one_line_and_the_finished_images_are_kept(fixture_images, imagenet_model, tmp_path):
    """A file size limit (RLIMIT_FSIZE) makes h5py's writes fail as on a full disk (EFBIG instead of ENOSPC)."""
    out = tmp_path / "out" / "feats.h5"
    res = run_python(DISK_FULL_RUN, str(fixture_images), str(out), "500000")  # ~92 kB per image: 4-5 fit
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr
    assert err[-1] == (
        f"mirror_sfm: error: disk full while writing {out} (File too large): free space and re-run; "
        f"finished images are kept in {partial_path(out)}"
    )
    assert partial_path(out).is_file() and not out.exists()
    again = extract(fixture_images, out, model=imagenet_model)  # space freed: resumes
    assert again.num_cached >= 2 and again.num_cached + again.num_extracted == 12
    fresh = extract(fixture_images, tmp_path / "fresh.h5", model=imagenet_model)
    n1, g1, r1 = read_descriptors(out, regional=True)
    n2, g2, r2 = read_descriptors(fresh.path, regional=True)
    assert n1 == n2 and np.array_equal(g1, g2) and np.array_equal(r1, r2)  # nothing half-written was reused


# ----------------------------------------------------------------------------- 3. names that are not UTF-8


def test_names_that_are_not_utf8_are_skipped_with_one_warning(images, mirror_log):
    fd = os.open(os.path.join(os.fsencode(images), b"bad\xff.jpg"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, (images / "IMG_9669.jpg").read_bytes())
    os.close(fd)
    names = list_images(images)
    assert names == sorted(os.listdir(images))[:4] and len(os.listdir(images)) == 5
    warnings = [r.getMessage() for r in mirror_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and repr(b"bad\xff.jpg") in warnings[0] and "UTF-8" in warnings[0]


def test_only_non_utf8_names_is_a_clear_error(tmp_path):
    os.close(os.open(os.path.join(os.fsencode(tmp_path), b"\xe9t\xe9.jpg"), os.O_WRONLY | os.O_CREAT, 0o644))
    with pytest.raises(MirrorError, match="no images found .*1 skipped for names that are not valid UTF-8"):
        list_images(tmp_path)


def test_pairs_with_a_non_utf8_name_runs(images, tmp_path, capfd):
    fd = os.open(os.path.join(os.fsencode(images), b"bad\xff.jpg"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, (images / "IMG_9669.jpg").read_bytes())
    os.close(fd)
    out = tmp_path / "pairs.txt"
    assert main(["pairs", str(images), "-o", str(out), "-k", "1", "--weights", "imagenet", "--num-workers", "0"]) == 0
    assert len(out.read_text().splitlines()) == 4
    assert "Traceback" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- 4. two runs, one output

HOLD_LOCK = """
    import sys
    from mirror_sfm.io_utils import output_lock
    with output_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()   # until the test closes our stdin
"""


def test_second_run_on_the_same_output_stops_with_the_holders_pid(images, tmp_path, capsys):
    out = tmp_path / "feats.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_LOCK), str(out)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["extract", str(images), "-o", str(out), "--weights", "imagenet", "--num-workers", "0"]) == 2
        assert last_error_line(capsys) == (
            f"mirror_sfm: error: {out} is being written by another mirror_sfm run "
            f"(pid {holder.pid}); wait for it or choose another output"
        )
        assert not out.exists() and not partial_path(out).exists()  # the holder's work was not touched
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not lock_path(out).exists()  # released and removed
    assert main(["extract", str(images), "-o", str(out), "--weights", "imagenet", "--num-workers", "0"]) == 0
    assert len(list_h5_names(out)) == 4 and not lock_path(out).exists()


def test_two_concurrent_extractions_never_clobber(images, tmp_path):
    """Two real runs started together: each one either finishes or stops with the one-line lock error."""
    out = tmp_path / "feats.h5"
    cmd = [
        sys.executable,
        "-m",
        "mirror_sfm",
        "extract",
        str(images),
        "-o",
        str(out),
        "--weights",
        "imagenet",
        "--num-workers",
        "0",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert "Traceback" not in err
        assert code == 0 or (code == 2 and "is being written by another mirror_sfm run" in err), err
    assert any(code == 0 for code, _ in results)
    assert len(list_h5_names(out)) == 4 and not partial_path(out).exists() and not lock_path(out).exists()


def test_lock_is_released_when_the_run_fails(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            assert lock_path(out).read_text().strip() == str(os.getpid())
            raise RuntimeError("boom")
    with output_lock(out):  # not blocked by the failed run
        pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 5. one notion of readable


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_jpeg_is_unreadable_everywhere(images, mirror_log):
    truncate_half(images / "IMG_9670.jpg")
    with Image.open(images / "IMG_9670.jpg") as img:
        img.verify()  # the header check colmap.py used to rely on lets it through
    assert unreadable_reason(images / "IMG_9670.jpg").startswith("OSError: image file is truncated")
    assert unreadable_reason(images / "IMG_9669.jpg") is None
    assert check_readable(images, list_images(images)) == (
        ["IMG_9669.jpg", "IMG_9671.jpg", "IMG_9672.jpg"],
        ["IMG_9670.jpg"],
    )
    found, readable, skipped = list_usable_images(images)
    assert len(found) == 4 and skipped == ["IMG_9670.jpg"] and "IMG_9670.jpg" not in readable
    with pytest.raises(MirrorError, match="IMG_9670.jpg.*truncated"):
        read_image_rgb(images / "IMG_9670.jpg")
    (images / "zero.jpg").write_bytes(b"")
    assert unreadable_reason(images / "zero.jpg") == "empty file (0 bytes)"


# ----------------------------------------------------------------------------- 6. large JPEGs in draft mode


@pytest.mark.parametrize(
    "size,orientation", [((4000, 3001), 1), ((4000, 3001), 6), ((1003, 4007), 8), ((4007, 4001), 6), ((300, 200), 1)]
)
def test_draft_decoding_keeps_size_and_orientation(tmp_path, size, orientation):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (size[1] // 50 + 1, size[0] // 50 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "p.jpg", exif=exif, quality=90)
    full = read_image_rgb(tmp_path / "p.jpg")
    expected = Image.fromarray(full).resize(
        resized_size(full.shape[1], full.shape[0], 384), Image.BILINEAR, reducing_gap=3.0
    )
    fast, full_size = decode_image(tmp_path / "p.jpg", 384)
    assert full_size == (full.shape[1], full.shape[0])
    assert fast.shape == np.asarray(expected).shape
    diff = np.abs(fast.astype(int) - np.asarray(expected).astype(int))
    assert diff.mean() < 2.0  # same picture, same way up (a 90-degree error would differ by far more)


def test_extraction_descriptors_barely_change_with_draft(images, imagenet_model, tmp_path, monkeypatch):
    """Descriptors of the fixture photos (512 px) with draft decoding (at 1/2 for --resize 64) match a full decode."""
    import mirror_sfm.describing as describing  # where ImageFolder decodes
    import mirror_sfm.extract as ex

    fast = extract(images, tmp_path / "a.h5", ex.ExtractionOptions(resize=64), model=imagenet_model)

    def full_decode(path, long_side):  # what extraction did before draft decoding
        rgb, size = decode_image(path, 0)
        small = Image.fromarray(rgb).resize(resized_size(*size, long_side), Image.BILINEAR, reducing_gap=3.0)
        return np.asarray(small), size

    monkeypatch.setattr(describing, "decode_image", full_decode)
    slow = extract(images, tmp_path / "b.h5", ex.ExtractionOptions(resize=64), model=imagenet_model)
    _, g, _ = read_descriptors(fast.path)
    _, g2, _ = read_descriptors(slow.path)
    assert not np.array_equal(g, g2)  # the draft path was taken
    assert (g * g2).sum(axis=1).min() > 0.995  # measured 0.9996


# ----------------------------------------------------------------------------- 7. warnings under a progress bar


def test_warnings_get_their_own_line_under_the_progress_bar(images, tmp_path, capfd):
    shutil.copy(images / "IMG_9669.jpg", images / "IMG_9669b.jpg")
    truncate_half(images / "IMG_9669b.jpg")
    assert (
        main(
            [
                "extract",
                str(images),
                "-o",
                str(tmp_path / "f.h5"),
                "--weights",
                "imagenet",
                "--num-workers",
                "0",
                "--batch-size",
                "1",
            ]
        )
        == 0
    )
    err = capfd.readouterr().err
    assert "describe images" in err  # the bar was drawn
    lines = [ln for ln in err.split("\n") if "skipping unreadable image" in ln]
    assert len(lines) == 1
    assert lines[0].split("\r")[-1].startswith("["), repr(lines[0])  # not glued to the end of the bar


# ----------------------------------------------------------------------------- 8. corrupt descriptor cache


def test_corrupt_cache_says_corrupt_and_is_rebuilt(images, imagenet_model, tmp_path, mirror_log):
    out = tmp_path / "feats.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # an h5 signature and nothing after it
    r = extract(images, out, model=imagenet_model)
    assert r.num_extracted == 4 and len(list_h5_names(out)) == 4
    messages = [rec.getMessage() for rec in mirror_log.records]
    assert not any("other settings" in m for m in messages), messages
    corrupt = [m for m in messages if "is corrupt" in m]
    assert len(corrupt) == 1 and str(out) in corrupt[0] and "rebuilt" in corrupt[0]


def test_corrupt_partial_is_started_again(images, imagenet_model, tmp_path, mirror_log):
    out = tmp_path / "feats.h5"
    partial_path(out).write_bytes(b"garbage")
    r = extract(images, out, model=imagenet_model)
    assert r.num_extracted == 4 and not partial_path(out).exists()
    assert any(
        "is corrupt" in rec.getMessage() and str(partial_path(out)) in rec.getMessage() for rec in mirror_log.records
    )


# ----------------------------------------------------------------------------- weights, outputs of other commands


def test_weights_of_another_architecture_are_one_clear_line(images, imagenet_model, tmp_path, capsys):
    import torch

    from mirror_sfm.backbones import build_backbone
    from mirror_sfm.model import RetrievalModel, load_model, save_weights

    weights = tmp_path / "lite1.pt"
    save_weights(RetrievalModel(build_backbone("efficientnet-lite1", imagenet=False)), weights)
    ckpt = torch.load(weights, weights_only=False)
    ckpt["backbone"] = "efficientnet-lite0"  # the name of one architecture, the tensors of another
    torch.save(ckpt, weights)
    with pytest.raises(MirrorError, match=r"does not fit backbone efficientnet-lite0 \(another architecture\?\)"):
        load_model(weights)
    out = tmp_path / "pairs.txt"
    assert main(["pairs", str(images), "-o", str(out), "--weights", str(weights), "--verify", "none"]) == 2
    line = last_error_line(capsys)
    assert line.startswith("mirror_sfm: error: weights file") and str(weights) in line
    assert not out.exists()


def test_whitening_of_another_dimension_is_refused(tmp_path):
    from mirror_sfm.model import load_model, save_weights
    from mirror_sfm.whitening import Whitening

    model = load_model("imagenet")
    model.whitening = Whitening(np.zeros(64, np.float32), np.eye(16, 64, dtype=np.float32))
    weights = tmp_path / "w.pt"
    save_weights(model, weights)
    with pytest.raises(MirrorError, match="its whitening takes 64-d descriptors"):
        load_model(weights)


def test_whiten_and_vocabtree_outputs_are_checked_before_any_work(images, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["whiten", "--features", str(tmp_path / "missing.h5"), "-o", str(folder)]) == 2
    assert "is an existing folder" in last_error_line(capsys)
    assert main(["vocabtree", "build", str(images), "-o", str(folder), "--words", "16"]) == 2
    assert "is an existing folder" in last_error_line(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["reconstruct", str(images), str(tmp_path / "file" / "run")]) == 2
    assert "is a file, not a folder" in last_error_line(capsys)
    assert (tmp_path / "file").read_text() == "x"


def test_file_system_faults_are_one_line(tmp_path, capsys):
    import errno

    from mirror_sfm.console import run_command

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.h5"))

    assert run_command("mirror_sfm", full, "") == 2
    line = last_error_line(capsys)
    assert str(tmp_path / "x.h5") in line and "No space left" in line and "free some space" in line

    def bug():
        raise OSError(errno.EINVAL, "Invalid argument")

    with pytest.raises(OSError):  # not a user fault: a traceback, to be reported
        run_command("mirror_sfm", bug, "")
