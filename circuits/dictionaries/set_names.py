"""The public dictionary sets known by name (circuit-tracer's model families), as plain data: the CLI checks a
set name against them before anything loads, so this module imports no tensor library. Loading them is
`circuits.dictionaries.public_sets`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NamedSet:
    """A public set: its Hugging Face repository (with circuit-tracer's ``config.yaml``), model and kind."""

    repo: str
    model: str  # a name in circuits.families.PUBLIC_MODELS
    kind: str  # "transcoders" (per layer) or "clt"
    description: str


NAMED_SETS: dict[str, NamedSet] = {
    "gemma-2-2b-transcoders": NamedSet("mwhanna/gemma-scope-transcoders", "gemma-2-2b", "transcoders",
                                       "Gemma Scope 16k JumpReLU transcoders, lowest L0 per layer (circuit-tracer "
                                       "'gemma')"),
    "gemma-2-2b-clt-426k": NamedSet("mntss/clt-gemma-2-2b-426k", "gemma-2-2b", "clt",
                                    "cross-layer transcoder, 16,384 features per layer"),
    "gemma-2-2b-clt-2.5m": NamedSet("mntss/clt-gemma-2-2b-2.5M", "gemma-2-2b", "clt",
                                    "cross-layer transcoder, 2.5M features"),
    "llama-3.2-1b-transcoders": NamedSet("mntss/transcoder-Llama-3.2-1B", "llama-3.2-1b", "transcoders",
                                         "per-layer skip transcoders (circuit-tracer 'llama')"),
    "llama-3.2-1b-clt-524k": NamedSet("mntss/clt-llama-3.2-1b-524k", "llama-3.2-1b", "clt",
                                      "cross-layer transcoder, 32,768 features per layer"),
    "qwen3-0.6b-transcoders": NamedSet("mwhanna/qwen3-0.6b-transcoders-lowl0", "qwen3-0.6b", "transcoders",
                                       "per-layer transcoders, low L0"),
    "qwen3-1.7b-transcoders": NamedSet("mwhanna/qwen3-1.7b-transcoders-lowl0", "qwen3-1.7b", "transcoders",
                                       "per-layer transcoders, low L0"),
    "qwen3-4b-transcoders": NamedSet("mwhanna/qwen3-4b-transcoders", "qwen3-4b", "transcoders",
                                     "per-layer transcoders"),
}
#: circuit-tracer's legacy short names
ALIASES = {"gemma": "gemma-2-2b-transcoders", "llama": "llama-3.2-1b-transcoders"}
