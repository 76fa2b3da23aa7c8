"""circuits: feature-level circuits in transformers with transcoders and attention-output SAEs.

The public API is small; everything else is internal.
"""

from circuits.errors import CircuitsError, ModelLoadError
from circuits.model import LoadedModel, load_model


def load_dictionaries(name: str = "organism", model=None):
    """Load a dictionary set by name or folder, checked against `model` (see `circuits.dictionaries`)."""
    from circuits.dictionaries import load_dictionaries as _load

    return _load(name, model)


def __getattr__(name: str):
    """Lazy re-exports of the attribution API (keeps `import circuits` fast)."""
    lazy = {
        "ReplacementModel": "circuits.replacement", "attribute": "circuits.attribution",
        "Contrast": "circuits.attribution", "Logit": "circuits.attribution", "TopLogits": "circuits.attribution",
        "FeatureTarget": "circuits.attribution", "prune": "circuits.pruning", "graph_scores": "circuits.pruning",
        "Graph": "circuits.graph", "Node": "circuits.graph", "intervene": "circuits.interventions",
        "Edit": "circuits.interventions", "faithfulness": "circuits.interventions",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'circuits' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["CircuitsError", "Contrast", "Edit", "FeatureTarget", "Graph", "LoadedModel", "Logit", "ModelLoadError",
           "Node", "ReplacementModel", "TopLogits", "attribute", "faithfulness", "graph_scores", "intervene",
           "load_dictionaries", "load_model", "prune", "__version__"]
