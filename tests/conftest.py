import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
FIXTURE = Path(__file__).parent / "fixtures" / "mary_rose" / "images"


@pytest.fixture(scope="session")
def fixture_images() -> Path:
    """12 consecutive turntable photos (CC-BY 4.0, see SOURCE.md): neighbours in name order overlap most."""
    return FIXTURE


@pytest.fixture(scope="session")
def imagenet_model():
    from mirror_sfm.model import load_model

    return load_model("imagenet").eval()


@pytest.fixture
def mirror_log(caplog):
    """caplog sees mirror_sfm records (the package logger does not propagate to root)."""
    logger = logging.getLogger("mirror_sfm")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
