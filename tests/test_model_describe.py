"""The model owns its descriptor: pooling and whitening travel in the weights file and `describe` serves them."""

import numpy as np
import pytest
import torch

from mirror_sfm.errors import MirrorError
from mirror_sfm.extract import ExtractionOptions, ImageFolder, extract
from mirror_sfm.features_io import read_descriptors
from mirror_sfm.model import RetrievalModel, load_model, save_weights
from mirror_sfm.whitening import fit_pca_whitening

RESIZE = 96


@pytest.fixture(scope="module")
def batch(fixture_images):
    names = sorted(p.name for p in fixture_images.iterdir())[:2]
    folder = ImageFolder(fixture_images, names, RESIZE)
    tensors = [folder[i][1] for i in range(len(names))]
    assert tensors[0].shape == tensors[1].shape
    return names, torch.stack(tensors)


def _strip_pooling(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    del ckpt["pooling"]
    ckpt["meta"].pop("pooling", None)
    torch.save(ckpt, path)


@torch.no_grad()
def test_gem_weights_are_described_with_gem_after_load(batch, fixture_images, tmp_path):
    from mirror_sfm.train.config import ModelOptions
    from mirror_sfm.train.loop import build_model

    names, images = batch
    trained = build_model(ModelOptions(pooling="gem", gem_p=2.5)).eval()
    at_training = trained.describe_map(trained(images))[0]  # what the loss sees (batch_loss)
    save_weights(trained, tmp_path / "w.pt", half=False)

    served = load_model(tmp_path / "w.pt").eval()
    assert (served.pooling, served.gem_p) == ("gem", 2.5)
    glob, _ = served.describe(images)
    assert torch.allclose(glob, at_training, atol=1e-5)
    mac, _ = served.describe(images, pooling="mac")
    assert (glob - mac).abs().max() > 1e-2  # GeM, not MAC

    # extraction (default options: the model's own pooling) stores the same descriptor
    result = extract(
        fixture_images,
        tmp_path / "f.h5",
        ExtractionOptions(resize=RESIZE, regional=False),
        image_names=names,
        model=served,
    )
    _, stored, _ = read_descriptors(result.path, names)
    assert np.abs(stored - glob.numpy()).max() < 2e-3  # float16 storage


@torch.no_grad()
def test_old_weights_without_pooling_load_as_mac(batch, imagenet_model, tmp_path):
    _, images = batch
    model = RetrievalModel(imagenet_model.backbone, None, {"name": "old"}, pooling="gem")
    save_weights(model, tmp_path / "old.pt", half=False)
    _strip_pooling(tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt").eval()
    assert old.pooling == "mac"
    assert torch.allclose(old.describe(images)[0], imagenet_model.describe(images, pooling="mac")[0], atol=1e-5)

    # a file from before the "pooling" key, trained with GeM, named it in its metadata only
    save_weights(RetrievalModel(imagenet_model.backbone, None, {"pooling": "gem"}), tmp_path / "meta.pt")
    ckpt = torch.load(tmp_path / "meta.pt", map_location="cpu", weights_only=False)
    del ckpt["pooling"]
    torch.save(ckpt, tmp_path / "meta.pt")
    assert load_model(tmp_path / "meta.pt").pooling == "gem"


@torch.no_grad()
def test_describe_whitens_like_retrieval(batch, imagenet_model):
    """describe(whiten=True) is the model's whitening applied as retrieval applies it to stored vectors."""
    _, images = batch
    glob, regions = imagenet_model.describe(images, regional=True)
    whitening = fit_pca_whitening(regions.reshape(-1, regions.shape[-1]).numpy(), dim=16)
    model = RetrievalModel(imagenet_model.backbone, whitening, {"name": "w"})
    wglob, wregions = model.describe(images, regional=True, whiten=True)
    assert wglob.shape == (2, 16) and wregions.shape[-1] == 16
    assert np.allclose(wglob.numpy(), whitening.apply(glob.numpy()), atol=1e-5)
    assert np.allclose(wregions.numpy(), whitening.apply(regions.numpy()), atol=1e-5)


def test_unknown_pooling_is_one_line(imagenet_model, tmp_path):
    with pytest.raises(MirrorError, match="unknown pooling 'max'"):
        RetrievalModel(imagenet_model.backbone, pooling="max")
    save_weights(imagenet_model, tmp_path / "w.pt")
    ckpt = torch.load(tmp_path / "w.pt", map_location="cpu", weights_only=False)
    ckpt["pooling"] = {"name": "sum"}
    torch.save(ckpt, tmp_path / "w.pt")
    with pytest.raises(MirrorError, match="unknown pooling"):
        load_model(tmp_path / "w.pt")


@torch.no_grad()
@pytest.mark.parametrize("size", [(96, 72), (97, 61)])  # even and odd sides: symmetric and asymmetric 'SAME' padding
def test_inference_copy_describes_like_the_model(size):
    """`for_inference` (BatchNorm folded, channels-last) gives the model's descriptors; the model is left as it was."""
    model = load_model("imagenet").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model.for_inference()
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    glob, regions = model.describe(images, regional=True)
    fast_glob, fast_regions = fast.describe(images, regional=True)
    assert torch.allclose(glob, fast_glob, atol=1e-5) and torch.allclose(regions, fast_regions, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
