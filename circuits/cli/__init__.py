"""The `circuits` command (console script `circuits.cli:main`): one module per command group, see `main`."""

from circuits.cli.dicts import _site_values, organism_dictionary_configs
from circuits.cli.main import build_parser, main

__all__ = ["main", "build_parser", "organism_dictionary_configs", "_site_values"]
