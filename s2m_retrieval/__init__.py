"""s2m-retrieval: sketch-based medical image retrieval the Sketch2MedI way.

The names below are the Python API (`s2m_retrieval.query.api`; README, "Python API"); the modules beneath are internal.
"""

from s2m_retrieval.query.api import (BuildReport, Bundle, Hit, Index, add_images, build_index, draw_sketch, generate,
                                     load_bundle, make_phantoms, open_index, remove_images)
from s2m_retrieval.errors import S2MError

__version__ = "0.1.0"

__all__ = ["BuildReport", "Bundle", "Hit", "Index", "S2MError", "add_images", "build_index",
           "draw_sketch", "generate", "load_bundle", "make_phantoms", "open_index", "remove_images"]
