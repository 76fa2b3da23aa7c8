"""Sparse dictionaries (transcoders, skip transcoders, cross-layer transcoders, attention-output SAEs): classes,
file formats, loading by name.

`load_dictionaries(name, model)` returns a `DictionarySet` checked against the model it will be spliced into:

* ``"organism"`` (the default, ``data/dictionaries/organism``): per-layer transcoders with skip terms and attention
  SAEs. The base set trained longer (`dicts train --init-from`), its decoders fine-tuned through the model with
  the codes frozen (`dicts finetune --keep-codes`; docs/finetune.md), layer 0 trained longer again and the
  decoders fine-tuned on a mix with IOI sentences, then skip terms and attention L0's decoder fitted by least
  squares on IOI prompts (`dicts fit-skip`, `dicts fit-decoder`). Recipe: docs/dictionaries.md#training; why it
  is the default: docs/skip-and-clt.md. ``"organism-fitted"`` is another name for it (its name while it was not
  yet the default);
* ``"organism-finetuned"``: the default until 2026-12-02, the set above before its last steps (the base set
  trained longer and fine-tuned with the codes frozen); ``"organism-base"``: the set as `dicts train` first wrote
  it; ``"organism-skip"`` (skip transcoders) and ``"organism-clt"`` (a cross-layer transcoder), with the base
  set's attention SAEs, in ``data/dictionaries/organism-skip`` / ``organism-clt``;
* ``"gpt2-transcoders"`` (Dunefsky et al.) and ``"gpt2-attn-kk"`` (Kissane et al.): downloaded through
  ``huggingface_hub`` when online; offline this fails at once with a message saying so;
* a local folder: one of our sets (``set.json``), a circuit-tracer folder (``config.yaml``), a SAELens folder
  (``cfg.json``), or a folder of Dunefsky / Kissane ``.pt`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from circuits.errors import DictionaryLoadError

if TYPE_CHECKING:
    from circuits.dictionaries.dictset import DictionarySet

#: the classes and loaders that need torch, imported on first use (PEP 562) so that the names and checks below
#: (used by the CLI before anything loads) do not pay for importing torch
_LAZY = {"AttentionSAE": "base", "Dictionary": "base", "DictionaryConfig": "base", "Transcoder": "base",
         "CLTConfig": "clt", "CLTLayer": "clt", "CrossLayerTranscoder": "clt", "DictionarySet": "dictset",
         "load_dictionary": "io"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"circuits.dictionaries.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'circuits.dictionaries' has no attribute {name!r}")


PUBLIC_SETS: dict[str, str] = {
    "gpt2-transcoders": "pchlenski/gpt2-transcoders",
    "gpt2-attn-kk": "ckkissane/attn-saes-gpt2-small-all-layers",
}

#: The organism's sets in data/dictionaries (one folder each): the default, the previous default, the base set,
#: skip transcoders and a cross-layer transcoder (those two with the base set's attention SAEs).
ORGANISM_SETS: tuple[str, ...] = ("organism", "organism-finetuned", "organism-base", "organism-skip", "organism-clt")
#: Other names of shipped sets: organism-fitted was the default's name before it became the default (2026-12-02).
ORGANISM_ALIASES: dict[str, str] = {"organism-fitted": "organism"}

__all__ = ["AttentionSAE", "CLTConfig", "CLTLayer", "CrossLayerTranscoder", "Dictionary", "DictionaryConfig", "DictionaryLoadError", "DictionarySet", "Transcoder",
           "load_dictionaries", "load_folder"]


def load_folder(folder: Path, n_heads: int | None = None, model_name: str | None = None) -> DictionarySet:
    """Any supported local layout, detected from its files."""
    from circuits.dictionaries import formats
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.dictionaries.io import load_dictionary

    folder = Path(folder)
    if not folder.exists():
        raise DictionaryLoadError(f"no such dictionary folder {folder}")
    if not folder.is_dir():
        _check_folder(folder)
    if (folder / "set.json").exists():
        return DictionarySet.load(folder)
    if (folder / "cfg.json").exists():  # a SAELens folder, or one of our CLT folders (which has config.yaml too)
        dicts = [load_dictionary(folder, n_heads)]
    elif (folder / "config.yaml").exists():
        dicts = formats.load_circuit_tracer_folder(folder)
    else:
        dicts = []
        for p in sorted(folder.glob("*.pt")):
            if p.name.endswith("_log_feature_sparsity.pt"):
                continue
            if p.with_name(p.stem + "_cfg.json").exists():
                dicts.append(formats.load_kissane_attention_sae(p, n_heads))
            else:
                dicts.append(formats.load_dunefsky_transcoder(p))
        subfolders = [s for s in sorted(folder.iterdir()) if (s / "cfg.json").exists()]
        dicts += [load_dictionary(s, n_heads) for s in subfolders]
        if not dicts:
            raise DictionaryLoadError(f"{folder}: no dictionary files found (set.json, config.yaml, cfg.json or .pt)")
    return DictionarySet(model_name or dicts[0].cfg.model_name, {str(i): d for i, d in enumerate(dicts)}, folder)


def _download_public(name: str) -> Path:
    from circuits.model import hub_reachable

    repo = PUBLIC_SETS[name]
    if not hub_reachable():
        raise DictionaryLoadError(f"dictionary set {name!r} ({repo}) must be downloaded from the Hugging Face hub, "
                                  "which is unreachable (offline); use load_dictionaries('organism') or a local folder")
    from huggingface_hub import list_repo_files, snapshot_download

    files = list_repo_files(repo)
    if name == "gpt2-transcoders":
        wanted = [f for f in files if f.endswith(".pt") and "ln2.hook_normalized" in f and "sparsity" not in f]
    else:
        wanted = [f for f in files if "_Hcat_z_" in f and (f.endswith(".pt") or f.endswith("_cfg.json"))]
    return Path(snapshot_download(repo, allow_patterns=wanted))


def _family_sets() -> tuple[str, ...]:
    from circuits.dictionaries.set_names import ALIASES, NAMED_SETS

    return (*NAMED_SETS, *ALIASES)


def check_set_name(name: str) -> None:
    """`DictionaryLoadError` (one line) unless `name` is a known set (or alias) or a folder holding dictionary files:
    what `load_dictionaries` would refuse, found without reading a tensor (the CLI asks before loading a model)."""
    names = (*ORGANISM_SETS, *ORGANISM_ALIASES, *PUBLIC_SETS, *_family_sets())
    if name in names:
        return
    if not name.strip():
        raise DictionaryLoadError("empty set name; give a set name or a folder")
    folder = Path(name)
    if not folder.exists():
        raise DictionaryLoadError(f"{name}: no such dictionary set or folder; use {', '.join(names)} or a folder")
    _check_folder(folder)


def _check_folder(folder: Path) -> None:
    """A folder that holds dictionary files in a supported layout, or `DictionaryLoadError`."""
    if not folder.is_dir():
        raise DictionaryLoadError(f"{folder} is a file; give the folder that holds the dictionary files "
                                  "(set.json, config.yaml, cfg.json or .pt files)")
    if not any((folder / f).exists() for f in ("set.json", "cfg.json", "config.yaml")) \
            and not any(folder.glob("*.pt")) and not any((s / "cfg.json").exists() for s in folder.iterdir()):
        raise DictionaryLoadError(f"{folder}: no dictionary files in this folder (set.json, config.yaml, cfg.json "
                                  "or .pt files)")


def load_dictionaries(name: str = "organism", model=None) -> DictionarySet:
    """Load a dictionary set by name or path; checked against `model` (loaded by the set's model name if None) and
    moved to the device of `model`'s weights."""
    from circuits.dictionaries.dictset import DictionarySet
    from circuits.model import DATA_DIR, LoadedModel, load_model

    if isinstance(model, LoadedModel):  # load_model's pair, as returned: its model
        model = model.model
    if not isinstance(name, str | Path):
        raise DictionaryLoadError(f"the dictionary set is {name!r}; give a set's name (e.g. 'organism') or a folder")
    name = str(name) if isinstance(name, Path) else name
    name = ORGANISM_ALIASES.get(name, name)
    if name in ORGANISM_SETS:
        folder = DATA_DIR / "dictionaries" / name
        if not (folder / "set.json").exists():
            raise DictionaryLoadError(f"missing {folder / 'set.json'}; restore data/ with git or train the set "
                                      "with `circuits dicts train --model organism`")
        dset = DictionarySet.load(folder)
    elif name in PUBLIC_SETS:
        dset = load_folder(_download_public(name), model_name="gpt2")
    elif name in _family_sets():  # Gemma-2 / Llama-3.2 / Qwen3 sets: circuits.dictionaries.public_sets (issue 23)
        from circuits.dictionaries.public_sets import load_named

        dset, model = load_named(name, model)
    elif Path(name).exists():
        dset = load_folder(Path(name), n_heads=model.cfg.n_heads if model is not None else None)
    else:
        raise DictionaryLoadError(f"no dictionary set or folder {name!r}; use {', '.join((*ORGANISM_SETS, *ORGANISM_ALIASES))}, "
                                  f"{', '.join(PUBLIC_SETS)} or a folder")
    if model is None:
        model_name = "gpt2" if dset.model_name.startswith("gpt2") else dset.model_name
        model = load_model(model_name).model
    dset.check_against(model)
    first = next(model.parameters(), None) if hasattr(model, "parameters") else None
    if first is not None and first.device.type != "cpu":  # the set follows the model to its device
        for d in [*dset, *dset.clts]:
            d.to(first.device)
    return dset
