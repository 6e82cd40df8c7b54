"""mirror_sfm: matchable image retrieval for Structure-from-Motion.

Pick which image pairs COLMAP/hloc should match with a CNN that ranks images by
the surface they share (MIRorR, Shen et al., ACCV 2018), not by what they look like.
"""
import logging
import sys

__version__ = "0.1.0"



class _StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (not the one at import), so redirection and capture work."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


logger = logging.getLogger("mirror_sfm")
if not logger.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
