"""The Ray backend: a local 2-worker cluster gives the single process's h5 and verification scores, a killed
Ray run resumes from its finished shards, and --ray without Ray installed is one line."""

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import ray
from conftest import FIXTURE
from test_verify import _sift_database, same_matcher_inputs

from mirror_sfm.cli import main
from mirror_sfm.distributed import RayOptions, _auth_hint, shards_dir
from mirror_sfm.errors import MirrorError
from mirror_sfm.extract import extract
from mirror_sfm.features_io import list_h5_names, partial_path
from mirror_sfm.pairs import PairsOptions, generate_pairs
from mirror_sfm.verify import VerifyOptions, verify_pairs

NAMES = sorted(os.listdir(FIXTURE))
LOCAL_2 = RayOptions(address="local", workers=2, shard_size=3)


@pytest.fixture(scope="module")
def ray_local():
    """One local 2-CPU Ray cluster for the module (`ray_cluster` uses a Ray already initialised, as it is)."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single_h5(tmp_path_factory, imagenet_model):
    """The fixture described by the single-process path."""
    out = tmp_path_factory.mktemp("single") / "feats.h5"
    extract(FIXTURE, out, model=imagenet_model)
    return out


def assert_same_h5(a, b):
    """Same image groups, root attributes, image sizes and freshness attributes; descriptors equal up to fp16."""
    assert list_h5_names(a) == list_h5_names(b) == NAMES
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert dict(fa.attrs) == dict(fb.attrs)
        for name in NAMES:
            ga, gb = fa[name], fb[name]
            assert sorted(ga) == sorted(gb) == ["global_descriptor", "image_size", "regional_descriptors"]
            assert dict(ga.attrs) == dict(gb.attrs)
            assert ga["image_size"][()].tolist() == gb["image_size"][()].tolist()
            for key in ("global_descriptor", "regional_descriptors"):
                assert ga[key].dtype == gb[key].dtype == np.float16 and ga[key].shape == gb[key].shape
                np.testing.assert_allclose(ga[key][()].astype(np.float32), gb[key][()], atol=2e-3, rtol=0)


def test_two_ray_workers_write_the_single_process_h5(ray_local, single_h5, imagenet_model, tmp_path, mirror_log):
    mirror_log.set_level(logging.INFO, logger="mirror_sfm")
    out = tmp_path / "feats.h5"
    r = extract(FIXTURE, out, model=imagenet_model, ray=LOCAL_2)
    assert (r.num_extracted, r.num_cached, r.num_resumed, r.skipped) == (12, 0, 0, {})
    assert "12 images in 4 shards on 2 Ray workers" in mirror_log.text
    assert_same_h5(single_h5, out)
    assert not shards_dir(out).exists() and not partial_path(out).exists()
    again = extract(FIXTURE, out, model=imagenet_model, ray=LOCAL_2)  # a re-run: every image cached, as before
    assert (again.num_extracted, again.num_cached) == (0, 12)


def descendants(pid: int) -> list[int]:
    """Ids of the processes below `pid` (Ray's workers start sessions of their own: not in the driver's group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(run: subprocess.Popen) -> None:
    """SIGKILL `run` and every process it started, at once (none of them writes after this returns)."""
    tree = [run.pid, *descendants(run.pid)]
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in tree[1:]):
        assert time.monotonic() < deadline, "killed processes still running"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_killed_ray_run_resumes_from_its_finished_shards(ray_local, single_h5, imagenet_model, tmp_path):
    out = tmp_path / "feats.h5"
    shards = shards_dir(out)
    command = [sys.executable, "-m", "mirror_sfm", "extract", str(FIXTURE), "-o", str(out), "--weights", "imagenet"]
    command += ["--ray", "local", "--ray-workers", "1", "--ray-shard-size", "2", "--batch-size", "1"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(shards.glob("shard-*.h5")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    kill_tree(run)  # the driver, the Ray cluster it started and its workers, mid-run
    assert not out.exists(), "the run finished before it was killed"
    finished = {path.name: path.stat().st_mtime_ns for path in shards.glob("shard-*.h5")}
    done = sorted(name for path in shards.glob("shard-*.h5") for name in list_h5_names(path))
    assert finished and len(done) < len(NAMES)

    r = extract(FIXTURE, out, model=imagenet_model, ray=RayOptions(address="local", workers=2, shard_size=2))
    assert r.num_resumed == len(done)  # the finished shards are taken as they are ...
    assert r.num_extracted == len(NAMES) - len(done)  # ... and only the other images described
    assert_same_h5(single_h5, out)
    assert not shards.exists()


def test_ray_verification_feeds_colmap_the_single_process_inputs(ray_local, single_h5, imagenet_model, tmp_path):
    database = _sift_database(tmp_path / "database.db", FIXTURE)
    options = PairsOptions(verify=VerifyOptions(shortlist=6))
    results = []
    for name, ray_options in (("single", None), ("ray", LOCAL_2)):
        out = tmp_path / name / "pairs.txt"
        out.parent.mkdir()
        features = out.with_name("feats.h5")
        shutil.copyfile(single_h5, features)  # described already: this test is about verification
        pairs = generate_pairs(
            FIXTURE,
            out,
            num_matched=3,
            features=features,
            options=options,
            model=imagenet_model,
            database=database,
            scores_output=out.with_name("scores.txt"),
            ray=ray_options,
        )
        lines = [line.split() for line in out.with_name("scores.txt").read_text().splitlines()]
        results.append((pairs, [(a, b, int(inliers)) for a, b, _, inliers in lines]))
    (single_pairs, single_scores), (ray_pairs, ray_scores) = results
    assert len(single_pairs) == len(ray_pairs) == 36 and any(s == 0 for *_, s in single_scores)  # some fail
    workers = sorted((tmp_path / "ray" / "pairs-verify.db.shards").glob("worker-*.db"))
    assert len(workers) == 2
    held = [worker_contents(path) for path in workers]
    for images, matched in held:  # each worker's copy: only the images of the pairs it verified
        assert images == {n for pair in matched for n in pair} and len(images) < len(NAMES)
    assert set().union(*(images for images, _ in held)) <= set(NAMES)
    # Each worker gave COLMAP what the single process gave it (image ids, keypoints, descriptors) ...
    whole = tmp_path / "single" / "pairs-verify.db"
    for worker, (images, _) in zip(workers, held):
        assert same_matcher_inputs(worker, whole, images)
    # ... and Ray reports the scores its workers' databases hold (re-read there: nothing is matched again).
    # Not compared with the single process's scores: COLMAP's CPU matcher gave two runs on the same features
    # different scores once on CI (test_verify's subset test); here, they are the same.
    reported = {tuple(sorted((a, b))): s for a, b, s in ray_scores}  # a pair kept both ways: one score
    assert len(reported) < len(ray_scores)
    for worker, (images, matched) in zip(workers, held):
        mine = [p for p in reported if p in matched]
        stored = verify_pairs(database, mine, options.verify, work_database=worker, work_images=sorted(images))
        assert stored == {p: reported[p] for p in mine}
    unmatched = set(reported) - set().union(*(matched for _, matched in held))
    assert len(unmatched) <= 2 < len(reported)
    assert all(reported[p] == 0 for p in unmatched)  # kept from beyond the shortlist: never verified


def worker_contents(path) -> tuple[set[str], set[tuple[str, str]]]:
    """(the images a working database holds, the sorted name pairs matched in it, failed ones included)."""
    import sqlite3

    import pycolmap

    con = sqlite3.connect(path)
    try:
        names = dict(con.execute("SELECT image_id, name FROM images"))
        pair_ids = [row[0] for row in con.execute("SELECT pair_id FROM matches")]
    finally:
        con.close()
    matched = {tuple(sorted(names[int(i)] for i in pycolmap.pair_id_to_image_pair(p))) for p in pair_ids}
    return set(names.values()), matched


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A Ray head started by `ray start` (as a cluster's), token authentication on with a token of its own, on
    free ports; stopped at the end by the ids of its processes (never `ray stop`, which stops every Ray here)."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    gcs, client = free_port(), free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), *filter(None, [env.get("PYTHONPATH")])])
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--num-cpus", "2"]
    command += ["--port", str(gcs), "--ray-client-server-port", str(client), "--temp-dir", str(temp)]
    command += ["--include-dashboard", "false", "--dashboard-port", str(free_port()), "--disable-usage-stats"]
    command += ["--dashboard-agent-listen-port", str(free_port())]
    try:
        subprocess.run(command, env=env, check=True, timeout=120, capture_output=True)
        yield f"ray://127.0.0.1:{client}", env
    finally:
        ours = [pid for pid in _pids() if str(temp) in _cmdline(pid) or f":{gcs} " in _cmdline(pid) + " "]
        tree = sorted({p for pid in ours for p in (pid, *descendants(pid))})
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_ray_client_address_describes_like_one_process(ray_head, single_h5, tmp_path):
    """`--ray ray://HOST:PORT` (Ray Client) against a `ray start` head with token authentication (the driver has
    RAY_AUTH_MODE=token and the token): the single process's h5."""
    address, env = ray_head
    out = tmp_path / "feats.h5"
    command = [sys.executable, "-m", "mirror_sfm", "extract", str(FIXTURE), "-o", str(out), "--weights", "imagenet"]
    command += ["--ray", address, "--ray-workers", "2", "--ray-shard-size", "3", "-q"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert_same_h5(single_h5, out)
    assert not shards_dir(out).exists()


def test_unreachable_explicit_address_says_how_to_send_the_token(monkeypatch):
    """Without RAY_AUTH_MODE=token a driver sends no token to an explicit address (Ray Client then times out after
    ~30 s, so the refusal itself is checked by hand: README); the error line says what to set."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert "RAY_AUTH_MODE=token" in _auth_hint("ray://head:10001") and "RAY_AUTH_MODE" in _auth_hint("head:6379")
    assert _auth_hint("auto") == _auth_hint("local") == ""  # Ray sends the token of this machine for auto itself
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert _auth_hint("ray://head:10001") == ""


def test_ray_flag_without_ray_installed_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    out = tmp_path / "feats.h5"
    code = main(["extract", str(FIXTURE), "-o", str(out), "--weights", "imagenet", "--ray", "local"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "pip install 'mirror_sfm[ray]'" in err[0]
    assert not out.exists() and not shards_dir(out).exists()


class _FlakyRay:
    """A stand-in for `ray` whose Ray Client connection fails `failures` times as a loaded head's does."""

    def __init__(self, failures: int):
        self.failures, self.inits, self.shutdowns = failures, 0, 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.failures:
            raise ConnectionAbortedError("Initialization failure from server:")

    def shutdown(self):
        self.shutdowns += 1


@pytest.mark.parametrize(
    "failures, address, joins", [(1, "ray://head:10001", True), (3, "ray://head:10001", False), (1, "auto", False)]
)
def test_ray_client_start_up_failure_is_tried_again(monkeypatch, failures, address, joins):
    """Ray Client's "Initialization failure from server" (the head's per-client server late on a loaded head) is
    tried again, up to CLIENT_ATTEMPTS; other addresses, or the last failure, are one MirrorError line."""
    from mirror_sfm import distributed

    fake = _FlakyRay(failures)
    monkeypatch.setattr(distributed, "import_ray", lambda: fake)
    monkeypatch.setattr(distributed, "CLIENT_RETRY_S", 0.0)
    if joins:
        with distributed.ray_cluster(RayOptions(address=address)) as ray:
            assert ray is fake and fake.inits == failures + 1
    else:
        with pytest.raises(MirrorError, match="Initialization failure"):
            with distributed.ray_cluster(RayOptions(address=address)):
                pass
        assert fake.inits == (distributed.CLIENT_ATTEMPTS if address.startswith("ray://") else 1)
