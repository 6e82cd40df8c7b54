import numpy as np
import pytest
from PIL import Image

from mirror_sfm.errors import MirrorError
from mirror_sfm.images import list_images, read_image_rgb


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image_rgb(tmp_path / "r.jpg").shape == (40, 20, 3)


@pytest.mark.parametrize(
    "mode,value", [("L", 128), ("I;16", 40000), ("CMYK", (0, 0, 0, 0)), ("RGBA", (10, 20, 30, 255)), ("P", 3)]
)
def test_modes_become_rgb8(tmp_path, mode, value):
    img = Image.new(mode, (8, 6), value)
    ext = "tif" if mode in ("I;16", "CMYK") else "png"
    img.save(tmp_path / f"x.{ext}")
    arr = read_image_rgb(tmp_path / f"x.{ext}")
    assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8


def test_16bit_is_rescaled(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "w.png")
    assert read_image_rgb(tmp_path / "w.png").min() == 255


def test_unreadable_images_raise_naming_the_file(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    for name in ("zero.jpg", "bad.jpg"):
        with pytest.raises(MirrorError, match=name):
            read_image_rgb(tmp_path / name)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.jpeg", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path) == ["a.png", "b.JPG", "sub/c.jpeg"]


def test_list_images_errors(tmp_path):
    with pytest.raises(MirrorError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(MirrorError, match="not found"):
        list_images(tmp_path / "missing")
    (tmp_path / "my photo.jpg").write_bytes(b"x")
    with pytest.raises(MirrorError, match="my photo.jpg"):
        list_images(tmp_path)
