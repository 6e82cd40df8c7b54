"""mirror_sfm: matchable image retrieval for Structure-from-Motion.

Pick which image pairs COLMAP/hloc should match with a CNN that ranks images by
the surface they share (MIRorR, Shen et al., ACCV 2018), not by what they look like.
"""

import logging

__version__ = "0.1.0"


from .console import add_stderr_handler  # noqa: E402

logger = logging.getLogger("mirror_sfm")
if not logger.handlers:
    add_stderr_handler(logger)
    logger.setLevel(logging.INFO)
    logger.propagate = False
