"""A set of dictionaries for one model (one transcoder per MLP, one attention SAE per attention layer, or any
subset), saved as a folder of SAELens folders plus ``set.json``, and checked against the model it splices into.

A cross-layer transcoder enters a set whole: its layers become the set's ``transcoder_L{l}`` members (one
`CLTLayer` per layer) and it is saved once, as the folder ``clt`` (see `circuits.dictionaries.io.save_clt`).

A member of ``set.json`` is a folder path relative to the set's folder, so sets can share dictionaries without
copying them: ``organism-skip`` and ``organism-clt`` list ``../organism/attn_sae_L0`` etc. (`save(links=...)`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from circuits.dictionaries.base import Dictionary
from circuits.dictionaries.clt import CLTLayer, CrossLayerTranscoder
from circuits.dictionaries.io import DictionaryLoadError, load_dictionary, save_clt, save_dictionary

SET_FILE = "set.json"


def dictionary_name(d: Dictionary) -> str:
    """Folder name of a dictionary in a set: ``transcoder_L0``, ``attn_sae_L2``."""
    return d.cfg.name


@dataclass
class DictionarySet:
    """Dictionaries keyed by name; at most one transcoder and one attention SAE per layer."""

    model_name: str
    dictionaries: dict[str, Dictionary] = field(default_factory=dict)
    folder: Path | None = None  # where the set was read from (named in errors); None when built in memory

    def __post_init__(self):
        members: list[Dictionary] = []
        for d in self.dictionaries.values():
            members += list(d.layers) if isinstance(d, CrossLayerTranscoder) else [d]
        names = [dictionary_name(d) for d in members]
        if len(set(names)) != len(names):
            raise ValueError("a set holds at most one transcoder and one attention SAE per layer")
        self.dictionaries = {dictionary_name(d): d for d in members}
        for clt in self.clts:
            missing = [layer.cfg.name for layer in clt.layers if self.dictionaries.get(layer.cfg.name) is not layer]
            if missing:
                raise ValueError(f"a cross-layer transcoder enters a set whole; missing layers {missing}")

    @property
    def clts(self) -> list[CrossLayerTranscoder]:
        """The cross-layer transcoders of the set (their layers are members as ``transcoder_L{l}``)."""
        out: list[CrossLayerTranscoder] = []
        for d in self.dictionaries.values():
            if isinstance(d, CLTLayer) and all(d.clt is not c for c in out):
                out.append(d.clt)
        return out

    def __iter__(self) -> Iterator[Dictionary]:
        return iter(sorted(self.dictionaries.values(), key=lambda d: (d.cfg.layer, d.cfg.kind != "attention_sae")))

    def __len__(self) -> int:
        return len(self.dictionaries)

    def transcoder(self, layer: int) -> Dictionary | None:
        return self.dictionaries.get(f"transcoder_L{layer}")

    def attention_sae(self, layer: int) -> Dictionary | None:
        return self.dictionaries.get(f"attn_sae_L{layer}")

    def check_against(self, model) -> None:
        """Raise DictionaryLoadError unless every dictionary fits `model` (hooks exist, widths match)."""
        cfg = model.cfg
        for d in self:
            c = d.cfg
            where = f"dictionary {dictionary_name(d)}" + (f" (in {self.folder})" if self.folder else "")
            if c.layer >= cfg.n_layers:
                raise DictionaryLoadError(f"{where}: layer {c.layer} but the model has {cfg.n_layers} layers")
            if isinstance(d, CLTLayer) and d.clt.cfg.n_layers != cfg.n_layers:
                raise DictionaryLoadError(f"{where}: a cross-layer transcoder over {d.clt.cfg.n_layers} layers "
                                          f"but the model has {cfg.n_layers}")
            for hook in (c.hook_in, c.hook_out):
                if hook not in model.hook_dict:
                    raise DictionaryLoadError(f"{where}: hook {hook!r} does not exist in the model")
            if c.kind == "transcoder":
                if c.d_in != cfg.d_model or c.d_out != cfg.d_model:
                    raise DictionaryLoadError(
                        f"{where}: d_in {c.d_in} / d_out {c.d_out} do not match the model's d_model {cfg.d_model}")
            else:
                z = cfg.n_heads * cfg.d_head
                if c.d_in != z or (c.n_heads and c.n_heads != cfg.n_heads):
                    raise DictionaryLoadError(
                        f"{where}: d_in {c.d_in} does not match the model's n_heads*d_head = "
                        f"{cfg.n_heads}*{cfg.d_head} = {z} (hook_z flattened over heads)")

    def save(self, folder: Path, links: dict[str, str] | None = None) -> Path:
        """Write every member's folder and ``set.json``. `links` {member name: folder path relative to `folder`}:
        members written as a reference to a folder that already holds them (it must exist), not copied."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        links = dict(links or {})
        unknown = sorted(set(links) - set(self.dictionaries))
        if unknown:
            raise ValueError(f"links name {unknown}, which are not members of the set")
        for name, rel in links.items():
            if not (folder / rel / "cfg.json").exists():
                raise DictionaryLoadError(f"link {name} -> {folder / rel}: no dictionary folder there")
        names = []
        for d in self:
            if dictionary_name(d) in links:
                names.append(links[dictionary_name(d)])
                continue
            if isinstance(d, CLTLayer):
                if d.cfg.layer == 0:
                    save_clt(d.clt, folder / d.clt.name)
                    names.append(d.clt.name)
                continue
            save_dictionary(d, folder / dictionary_name(d))
            names.append(dictionary_name(d))
        meta = {"format": "circuits-dictionary-set/1", "model_name": self.model_name, "dictionaries": names}
        tmp = folder / (SET_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(folder / SET_FILE)
        return folder

    @classmethod
    def load(cls, folder: Path) -> DictionarySet:
        folder = Path(folder)
        set_path = folder / SET_FILE
        if not set_path.exists():
            raise DictionaryLoadError(f"missing {set_path}: not a dictionary set folder "
                                      "(convert public files with `circuits dicts convert`)")
        try:
            meta = json.loads(set_path.read_text())
            names = list(meta["dictionaries"])
            model_name = str(meta["model_name"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DictionaryLoadError(f"{set_path}: malformed set file ({e})") from None
        loaded = {name: load_dictionary(folder / name) for name in names}
        return cls(model_name, loaded, folder)
