"""circuits: feature-level circuits in transformers with transcoders and attention-output SAEs.

The public API is small; everything else is internal.
"""

from circuits.errors import CircuitsError, ModelLoadError
from circuits.model import LoadedModel, load_model


def load_dictionaries(name: str = "organism", model=None):
    """Load a dictionary set by name or folder, checked against `model` (see `circuits.dictionaries`)."""
    from circuits.dictionaries import load_dictionaries as _load

    return _load(name, model)


__version__ = "0.1.0"
__all__ = ["CircuitsError", "LoadedModel", "ModelLoadError", "load_dictionaries", "load_model", "__version__"]
