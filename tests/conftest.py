"""Shared fixtures: a network guard and tiny seeded models."""

from __future__ import annotations

import socket

import pytest


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
