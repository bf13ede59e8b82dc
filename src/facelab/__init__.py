"""facelab: train, evaluate and deploy face recognition models (closed-set classification and open-set verification)."""

from facelab.errors import FacelabError

__version__ = "0.1.0"
__all__ = ["FacelabError", "__version__"]
