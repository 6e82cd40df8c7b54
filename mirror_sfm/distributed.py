"""Extraction and shortlist verification on a Ray cluster (the `ray` package, an optional dependency).

`RayOptions.address`: ``local`` starts a Ray cluster on this machine for the run (and stops it after);
``auto`` or ``ray://HOST:PORT`` (Ray Client) joins an existing one (a process that already called ``ray.init`` keeps
its own). A cluster started by ``ray start`` checks a token by default (Ray >= 2.59); for ``ray://`` (or any explicit
address) the driver sends it only with ``RAY_AUTH_MODE=token`` in its environment (the token from
``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``), else Ray Client times out after ~30 s.
Every worker must see the images, the output folder and the COLMAP database under the same paths (a shared
file system), and have mirror_sfm installed.

Extraction (`extract_on_ray`): the images still to describe are cut into shards in image order; each worker is a
Ray actor holding the model (``cpus_per_worker`` / ``gpus_per_worker`` each) that describes a shard with the
single-process batching (`describing.describe_batches`) and writes it to ``OUTPUT.shards/shard-<hash>.h5``
atomically (a temporary file renamed when the shard is complete). The driver shows one progress bar over the images
of all shards and, at the end, copies the shards into OUTPUT through the same work file as the single-process path
(`features_io`: same names, layout, fp16 descriptors and freshness attributes), then removes the shard folder.
A killed run leaves its finished shards: a re-run takes every image a finished shard holds (same extractor
settings, same file size and mtime) and describes only the others. Images already fresh in OUTPUT are skipped
as in the single-process path.

Verification (`verify_on_ray`): the unordered pairs, in query order, are cut into one contiguous part per worker;
worker *i* verifies its part block by block with `verify.verify_pairs` in its own working database
``WORK.shards/worker-<i>-of-<n>.db`` (so a re-run with the same worker count and pairs resumes from it) and returns
the geometric scores, which the driver combines. A worker's database holds only the images its part touches (their
`num_features` largest-scale features, cameras, frames), so n workers copy about the features of their parts, not
n times the whole database.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import torch
from tqdm import tqdm

from . import features_io
from .describing import ExtractionOptions, ExtractionResult, describe_batches, images_to_describe, resolve_device
from .errors import MirrorError
from .io_utils import atomic_path
from .model import RetrievalModel
from .pairs_io import Pair

logger = logging.getLogger(__name__)

RAY_INSTALL = "pip install 'mirror_sfm[ray]'"
MAX_SHARD = 256  # images per shard at most (auto): a shard a few seconds of GPU work, its file ~25 MB
SHARDS_PER_RUN = 16  # auto shard size: at least this many shards, so every worker of a small cluster gets work
SHARD_GLOB = "shard-*.h5"
# Ray Client: the head starts a server per client connection; on a loaded head it can miss its start-up deadline
# ("Initialization failure from server"), which a second try gets past
CLIENT_ATTEMPTS = 3
CLIENT_RETRY_S = 2.0


@dataclass
class RayOptions:
    """Where and how extraction and verification run on a Ray cluster.

    Attributes:
        address: local (start a Ray cluster on this machine) | auto | ray://HOST:PORT (an existing cluster);
            not given: one process, no Ray. Workers must see the images and the output under the same paths.
        workers: Ray workers (0: the cluster's CPUs / cpus-per-worker, or its GPUs / gpus-per-worker).
        cpus_per_worker: CPU cores each worker takes (its torch and COLMAP threads).
        gpus_per_worker: GPUs each worker takes (0: CPU only; 0.5: two workers share one GPU).
        shard_size: images per shard, each written to OUTPUT.shards/ when done (0: auto, n/16 up to 256).
    """

    address: str | None = None
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    shard_size: int = 0

    def validate(self) -> None:
        if self.workers < 0 or self.shard_size < 0:
            raise MirrorError("--ray-workers and --ray-shard-size must be >= 0")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise MirrorError("--ray-cpus-per-worker must be > 0 and --ray-gpus-per-worker >= 0")


def import_ray():
    """The `ray` module, or one MirrorError line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MirrorError(f"--ray needs the Ray package, which is not installed: {RAY_INSTALL}") from None
    return ray


@contextlib.contextmanager
def ray_cluster(options: RayOptions) -> Iterator[object]:
    """Connect to (or, for ``local``, start) the cluster of `options.address` for the block and yield `ray`.

    A Ray already initialised in this process is used as it is and left running. Ray's own console output
    (its INFO lines, the workers' stdout/stderr) is kept off the console; a failure to start or reach the
    cluster is one MirrorError line. The cluster is shut down (or left) at the end when this call joined it.
    """
    options.validate()
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict = {"log_to_driver": False, "logging_level": logging.ERROR}
    if options.address == "local":  # "local": always a new cluster, even where `ray start` made one
        kwargs.update(address="local", include_dashboard=False)
        if options.workers:
            kwargs["num_cpus"] = max(1, math.ceil(options.workers * options.cpus_per_worker))
    else:
        kwargs["address"] = options.address
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():  # Ray Client's own timeout warning: the MirrorError below says it
                warnings.simplefilter("ignore")
                ray.init(**kwargs)
            break
        except ConnectionAbortedError as exc:  # Ray Client: the head's server for this client did not start in time
            if not str(options.address).startswith("ray://") or attempt == CLIENT_ATTEMPTS:
                raise _unreachable(options.address, exc) from None
            logger.warning(
                "Ray Client at %s: %s; trying again (%d of %d)",
                options.address,
                _short(exc),
                attempt + 1,
                CLIENT_ATTEMPTS,
            )
            with contextlib.suppress(Exception):
                ray.shutdown()
            time.sleep(CLIENT_RETRY_S * attempt)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, ... from Ray's start-up
            raise _unreachable(options.address, exc) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _unreachable(address: str | None, exc: Exception) -> MirrorError:
    return MirrorError(f"cannot start or reach the Ray cluster at {address!r}: {_short(exc)}{_auth_hint(address)}")


def _auth_hint(address: str | None) -> str:
    """Why a Ray >= 2.59 cluster may refuse this driver: it checks a token (on by default for `ray start`), but a
    driver sends one for an explicit address (ray://HOST:PORT, HOST:PORT) only with RAY_AUTH_MODE=token set; Ray
    enables it by itself for `auto` alone. Empty when that is not the case."""
    if address in (None, "local", "auto") or os.environ.get("RAY_AUTH_MODE"):
        return ""
    return (
        " (if the cluster checks a token, as `ray start` does by default since Ray 2.59: set RAY_AUTH_MODE=token"
        " with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
    )


def worker_count(ray, options: RayOptions, shards: int) -> int:
    """`options.workers`, else as many as the cluster's CPUs (GPUs) hold at the per-worker share; never more
    than there are shards, at least one."""
    n = options.workers
    if not n:
        resources = ray.cluster_resources()
        if options.gpus_per_worker > 0:
            n = int(resources.get("GPU", 0) // options.gpus_per_worker)
            if n == 0:
                raise MirrorError(f"--ray-gpus-per-worker {options.gpus_per_worker} but the Ray cluster has no GPU")
        else:
            n = int(resources.get("CPU", 1) // options.cpus_per_worker)
    return max(1, min(n, shards))


def shard_size(options: RayOptions, num_images: int) -> int:
    if options.shard_size:
        return options.shard_size
    return max(1, min(MAX_SHARD, math.ceil(num_images / SHARDS_PER_RUN)))


def shards_dir(output: Path) -> Path:
    """Where a Ray run keeps its finished shards: OUTPUT.shards/ beside the output."""
    return output.with_name(output.name + ".shards")


def _shard_name(names: list[str], signatures: dict[str, tuple[int, int]]) -> str:
    digest = hashlib.sha1(json.dumps([[n, *signatures[n]] for n in names]).encode()).hexdigest()[:16]
    return f"shard-{digest}.h5"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# ----------------------------------------------------------------------------- extraction


class ShardDescriber:
    """A Ray actor: holds the model on its device and describes shards of images into shard files."""

    def __init__(self, model: RetrievalModel, options: ExtractionOptions, signature: dict, threads: int):
        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(options.device)  # auto: the GPU Ray gave this worker, if any
        self.model = model.to(self.device).eval()
        self.options = options
        self.extractor = json.dumps(signature, sort_keys=True)

    def describe(
        self, image_dir: str, names: list[str], signatures: dict[str, tuple[int, int]], path: str
    ) -> dict[str, str]:
        """Describe `names` into the shard file `path` (written whole, atomically); returns the unreadable ones."""
        skipped: dict[str, str] = {}
        with features_io.write_errors(Path(path)), atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs[features_io.EXTRACTOR_ATTR] = self.extractor
            batches = describe_batches(Path(image_dir), names, self.options, self.model, self.device, skipped, False)
            for records in batches:
                for name, glob, reg, size in records:
                    features_io.write_image(f, name, glob, reg, size, signatures[name])
            f.attrs["skipped"] = json.dumps({n: [e, *signatures[n]] for n, e in skipped.items()})
        return skipped


@dataclass
class _FinishedShards:
    """What the shard files of earlier (killed) runs hold for this run's images."""

    images: dict[str, Path]  # image name -> shard file holding its fresh descriptors
    skipped: dict[str, str]  # unreadable image -> reason, recorded by a shard for the same file


def _finished_shards(folder: Path, signature: dict, todo: dict[str, tuple[int, int]]) -> _FinishedShards:
    """Read the shard files in `folder`: those made with other extractor settings or unreadable are removed;
    an image counts when a shard holds it (or its unreadable record) with the file signature it has now."""
    found = _FinishedShards({}, {})
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob(SHARD_GLOB)):
        try:
            with h5py.File(path, "r") as f:
                if json.loads(f.attrs.get(features_io.EXTRACTOR_ATTR, "{}")) != signature:
                    stale = True
                else:
                    stale = False
                    for name in _image_names(f):  # the shard's own names: a scan costs the shards' size, not more
                        sig = todo.get(name)
                        if sig is not None and name not in found.images and features_io.is_fresh(f, name, sig):
                            found.images[name] = path
                    for name, (error, *sig) in json.loads(f.attrs.get("skipped", "{}")).items():
                        if todo.get(name) == tuple(sig):
                            found.skipped.setdefault(name, error)
        except Exception as exc:  # not HDF5 or truncated (it was renamed complete, so a damaged disk): described again
            logger.warning("shard %s is unreadable (%s); its images are described again", path, _short(exc))
            stale = True
        if stale:
            path.unlink(missing_ok=True)
    return found


def _image_names(f: h5py.File) -> list[str]:
    """Names of the image groups of an open file (those holding a `global_descriptor`; nested names joined by '/')."""
    names = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name.endswith("/global_descriptor"):
            names.append(name[: -len("/global_descriptor")])

    f.visititems(visit)
    return names


def extract_on_ray(
    image_dir: Path,
    output: Path,
    options: ExtractionOptions,
    image_names: list[str],
    model: RetrievalModel,
    signature: dict,
    ray_options: RayOptions,
) -> ExtractionResult:
    """`extract.extract` on a Ray cluster (see the module doc); run while the driver holds `output`'s lock."""
    ray_options.validate()
    result = ExtractionResult(output, len(image_names), 0, 0)
    f = features_io.open_work_file(output, signature)  # the single-process cache: fresh images are skipped
    failed = True
    try:
        todo, result.num_cached = images_to_describe(f, output, image_dir, image_names)
        failed = False
    finally:
        features_io.close_work_file(f, output, failed)  # closed while the workers run: a kill leaves it intact
    folder = shards_dir(output)
    finished = _finished_shards(folder, signature, todo)
    result.num_resumed = len(finished.images)
    result.skipped.update(finished.skipped)
    remaining = [n for n in todo if n not in finished.images and n not in finished.skipped]
    if finished.images or finished.skipped:
        logger.info(
            "%d images taken from the finished shards in %s; %d left to describe",
            len(finished.images) + len(finished.skipped),
            folder,
            len(remaining),
        )
    shard_files = dict.fromkeys(finished.images.values())
    if remaining:
        with features_io.write_errors(output):
            folder.mkdir(parents=True, exist_ok=True)
        size = shard_size(ray_options, len(remaining))
        shards = [remaining[i : i + size] for i in range(0, len(remaining), size)]
        with ray_cluster(ray_options) as ray:
            done = len(todo) - len(remaining)
            finishing = _run_shards(ray, ray_options, image_dir, folder, shards, todo, model, options, signature, done)
            for path, skipped in finishing:
                shard_files[path] = None
                result.skipped.update(skipped)
        result.num_extracted = len(remaining) - sum(1 for n in remaining if n in result.skipped)
    for error in result.skipped.values():  # the workers' own log lines stay in Ray's logs
        logger.warning("skipping unreadable image: %s", error)
    _merge_shards(output, signature, list(shard_files), todo)
    _remove_shards(folder)
    return result


def _run_shards(
    ray,
    ray_options: RayOptions,
    image_dir: Path,
    folder: Path,
    shards: list[list[str]],
    todo: dict[str, tuple[int, int]],
    model: RetrievalModel,
    options: ExtractionOptions,
    signature: dict,
    initial: int,
) -> Iterator[tuple[Path, dict[str, str]]]:
    """Describe `shards` on the workers; yield (shard file, its unreadable images) as each shard finishes.
    `initial`: images of the run already done (the progress bar starts there)."""
    n = worker_count(ray, ray_options, len(shards))
    # no max_restarts: Ray cannot restart an actor whose arguments (the model) live in the object store; a lost
    # worker ends the run with its finished shards kept, and a re-run resumes from them
    actor = ray.remote(ShardDescriber).options(
        num_cpus=ray_options.cpus_per_worker, num_gpus=ray_options.gpus_per_worker
    )
    model_ref = ray.put(model.cpu())
    threads = max(1, int(ray_options.cpus_per_worker))
    workers = [actor.remote(model_ref, options, signature, threads) for _ in range(n)]
    logger.info("describing %d images in %d shards on %d Ray workers", sum(map(len, shards)), len(shards), n)
    pending = deque(shards)
    running: dict = {}  # object ref -> (worker, shard, shard file)

    def submit(worker) -> None:
        if pending:
            names = pending.popleft()
            path = folder / _shard_name(names, todo)
            sigs = {name: todo[name] for name in names}
            running[worker.describe.remote(str(image_dir), names, sigs, str(path))] = (worker, names, path)

    try:
        for worker in workers:  # two shards each: the next one is queued while the first runs
            submit(worker)
            submit(worker)
        with tqdm(total=len(todo), initial=initial, desc="describe images (Ray)", unit="img") as bar:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                worker, names, path = running.pop(ready[0])
                skipped = _get(ray, ready[0], f"shard {path.name} ({names[0]} ...)", folder)
                bar.update(len(names))
                submit(worker)
                yield path, skipped
    finally:
        for worker in workers:
            ray.kill(worker)


def _get(ray, ref, what: str, folder: Path):
    """`ray.get(ref)`; a worker's failure is one MirrorError line (a MirrorError of the worker keeps its text)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MirrorError):
            raise MirrorError(str(cause)) from None
        raise MirrorError(
            f"a Ray worker failed on {what}: {_short(cause or exc)}; finished shards are kept in {folder}"
        ) from None
    except ray.exceptions.RayError as exc:  # a worker or node lost beyond Ray's retries
        raise MirrorError(
            f"Ray lost a worker on {what} ({_short(exc)}); finished shards are kept in {folder}: re-run to resume"
        ) from None


def _merge_shards(output: Path, signature: dict, shard_files: list[Path], todo: dict[str, tuple[int, int]]) -> None:
    """Copy every shard's images that this run needs into OUTPUT's work file, then move it over OUTPUT."""
    f = features_io.open_work_file(output, signature)
    failed = True
    try:
        with tqdm(total=len(todo), desc="merge shards", unit="img", leave=False, disable=not shard_files) as bar:
            for path in shard_files:
                with h5py.File(path, "r") as shard:
                    items = []
                    for name in _image_names(shard):
                        if name in todo and not features_io.is_fresh(f, name, todo[name]):
                            grp = shard[name]
                            regional = grp["regional_descriptors"][()] if "regional_descriptors" in grp else None
                            size = tuple(int(v) for v in grp["image_size"][()])
                            items.append((name, grp["global_descriptor"][()], regional, size, todo[name]))
                features_io.write_batch(f, output, items)
                bar.update(len(items))
        failed = False
    finally:
        features_io.close_work_file(f, output, failed)
    features_io.finish_work_file(output)


def _remove_shards(folder: Path) -> None:
    """Remove the shard folder once OUTPUT holds its images (its other files, if any, are left)."""
    if not folder.is_dir():
        return
    for path in folder.glob(SHARD_GLOB):
        path.unlink(missing_ok=True)
    for path in folder.glob(".shard-*.tmp"):  # a worker killed mid-shard leaves its temporary file
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


# ----------------------------------------------------------------------------- verification


class PairVerifier:
    """A Ray actor: verifies blocks of pairs in its own working database (`verify.verify_pairs`), which holds
    only `images`, those its part of the pairs touches."""

    def __init__(self, database: str, work_database: str, options, threads: int, images: list[str]):
        self.database, self.work, self.images = database, work_database, images
        self.options = replace(options, num_threads=threads)

    def verify(self, pairs: list[Pair]) -> dict[Pair, int]:
        from .verify import quiet_colmap, verify_pairs

        with quiet_colmap():
            return verify_pairs(self.database, pairs, self.options, work_database=self.work, work_images=self.images)


def worker_database(folder: Path, i: int, n: int) -> Path:
    """The working database of verification worker `i` of `n` in `folder`."""
    return folder / f"worker-{i}-of-{n}.db"


def part_images(part: list[Pair]) -> list[str]:
    """The images a part of the pairs touches (sorted): all its worker's working database holds."""
    return sorted({name for pair in part for name in pair})


def verify_on_ray(
    database: str | Path,
    pairs: Iterable[Pair],
    options,
    work_database: str | Path,
    allow_missing: bool,
    ray_options: RayOptions,
) -> dict[Pair, int]:
    """`verify.verify_pairs` on a Ray cluster: scores keyed by the sorted name pair, from the same COLMAP input as one
    process (see the module doc)."""
    from .verify import VerifyOptions, checked_pair_keys

    options = options or VerifyOptions()
    options.validate()
    database, work_database = Path(database), Path(work_database)
    keys = checked_pair_keys(database, pairs, allow_missing)  # in the driver, so its lines reach the console
    scores = {k: 0 for k in keys}
    if not keys:
        return scores
    folder = shards_dir(work_database)
    with features_io.write_errors(work_database):
        folder.mkdir(parents=True, exist_ok=True)
    with ray_cluster(ray_options) as ray:
        n = worker_count(ray, ray_options, len(keys))
        part = math.ceil(len(keys) / n)
        parts = [keys[i : i + part] for i in range(0, len(keys), part)]
        block = max(50, min(2000, math.ceil(part / 8)))
        actor = ray.remote(PairVerifier).options(num_cpus=ray_options.cpus_per_worker)
        threads = max(1, int(ray_options.cpus_per_worker))
        workers = [
            actor.remote(str(database), str(worker_database(folder, i, len(parts))), options, threads, part_images(p))
            for i, p in enumerate(parts)
        ]
        running = {}
        for worker, chunk in zip(workers, parts):  # each worker's blocks queue up in order on it
            for start in range(0, len(chunk), block):
                running[worker.verify.remote(chunk[start : start + block])] = len(chunk[start : start + block])
        try:
            with tqdm(total=len(keys), desc="verifying pairs (Ray)", unit="pair", leave=False) as bar:
                while running:
                    ready, _ = ray.wait(list(running), num_returns=1)
                    count = running.pop(ready[0])
                    scores.update(_get(ray, ready[0], "a block of pairs", folder))
                    bar.update(count)
        finally:
            for worker in workers:
                ray.kill(worker)
    logger.info("verified %d pairs on %d Ray workers (working databases in %s)", len(keys), len(parts), folder)
    return scores
