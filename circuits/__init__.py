"""circuits: feature-level circuits in transformers with transcoders and attention-output SAEs.

The public API is small; everything else is internal.
"""

from circuits.errors import CircuitsError, ModelLoadError
from circuits.model import LoadedModel, load_model

__version__ = "0.1.0"
__all__ = ["CircuitsError", "LoadedModel", "ModelLoadError", "load_model", "__version__"]
