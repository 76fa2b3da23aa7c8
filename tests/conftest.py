"""Shared fixtures: a network guard and tiny seeded models."""

from __future__ import annotations

import os
import socket

import pytest

# Under pytest-xdist (`-n 2`, the README's test command) each worker process gets its share of the cores as torch
# threads, unless OMP_NUM_THREADS says otherwise: two workers with two threads each on a 2-core machine would
# oversubscribe it. Set before any test imports torch; CLI subprocesses of the tests inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, _workers))))


@pytest.fixture
def no_network(monkeypatch):
    """Block every outgoing connection (and DNS) for the duration of a test."""

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture
def app():
    """The explorer (app.py) under Streamlit's AppTest, opened and run once without an exception."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A seeded 2-layer HookedTransformer with the organism's tokenizer (d_model 32 != d_vocab)."""
    import torch

    from circuits.organism.tokenizer import build_tokenizer, save_tokenizer
    from circuits.organism.train import OrganismModelConfig, build_model

    folder = save_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")
    cfg = OrganismModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32,
                              d_vocab=build_tokenizer().get_vocab_size())
    model = build_model(cfg, seed=0, tokenizer_folder=folder)
    model.eval()
    torch.manual_seed(0)
    return model


def build_tiny(tmp_folder, n_layers=2, d_model=32, n_heads=4, d_mlp=64, n_ctx=32, dtype=None, seed=0,
               tokenizer=True, **overrides):
    """A seeded tiny HookedTransformer with the organism's tokenizer (float64 when asked)."""
    import torch
    from transformer_lens import HookedTransformer

    from circuits.organism.tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
    from circuits.organism.train import OrganismModelConfig, hooked_config

    folder = save_tokenizer(tmp_folder / "tokenizer")
    cfg = hooked_config(OrganismModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                                            d_head=d_model // n_heads, d_mlp=d_mlp, n_ctx=n_ctx,
                                            d_vocab=build_tokenizer().get_vocab_size()))
    cfg.dtype = dtype or torch.float32
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=load_tokenizer(folder) if tokenizer else None)
    with torch.no_grad():  # non-trivial LayerNorm weights and biases everywhere
        for name, p in model.named_parameters():
            if name.endswith(("ln1.w", "ln2.w", "ln_final.w")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(("ln1.b", "ln2.b", "ln_final.b", "b_V", "b_O", "b_in", "b_out", "b_U")):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def random_dictionaries(model, d_sae=48, k=6, seed=0, layers=None, kinds=("transcoder", "attention_sae"),
                        activation="topk"):
    """Random dictionaries for every (or the given) layer of `model`, in the model's dtype."""
    import torch

    from circuits.dictionaries.base import DictionaryConfig, make_dictionary

    torch.manual_seed(seed)
    cfg = model.cfg
    out = []
    for layer in (range(cfg.n_layers) if layers is None else layers):
        for kind in kinds:
            d_in = cfg.d_model if kind == "transcoder" else cfg.n_heads * cfg.d_head
            c = DictionaryConfig(kind, layer, d_in, d_sae, d_in if kind == "attention_sae" else cfg.d_model,
                                 activation=activation, k=k if activation != "relu" else None,
                                 n_heads=cfg.n_heads, context_size=cfg.n_ctx)
            d = make_dictionary(c, dtype=cfg.dtype)
            with torch.no_grad():
                for p in d.parameters():
                    p.normal_(0, 0.3)
            out.append(d.eval())
    return out


@pytest.fixture(scope="session")
def tiny64(tmp_path_factory):
    """(model, dictionaries): a float64 2-layer model with random transcoders and attention SAEs on every layer."""
    import torch

    model = build_tiny(tmp_path_factory.mktemp("tiny64"), dtype=torch.float64)
    return model, random_dictionaries(model)


@pytest.fixture(scope="session")
def rm64(tiny64):
    """The float64 tiny model with all its random dictionaries spliced in."""
    from circuits.replacement import ReplacementModel

    model, dicts = tiny64
    return ReplacementModel(model, dicts)


@pytest.fixture(scope="session")
def tiny_trained_set(tiny_model, tmp_path_factory):
    """Folder of a small trained set on `tiny_model` (BatchTopK, saved and reloaded), shared by the tests of the
    least-squares fits onto a set's errors (`test_skipfit`, `test_decoderfit`)."""
    from tests.test_finetune import _trained_set

    folder = tmp_path_factory.mktemp("tiny_trained_set")
    _trained_set(tiny_model, folder)
    return folder / "set"
