"""Compatibility shim: let eth-brownie 1.22.2 compile Vyper 0.4 contracts.

Vyper 0.4 returns ``evm.deployedBytecode.sourceMap`` as a dict and keeps the
compressed source-map string that brownie expects under ``pc_pos_map_compressed``.
Brownie passes the dict straight to ``expand_source_map`` and fails with
``TypeError: str object expected; got dict``.

Brownie is compiled with mypyc, so its own functions cannot be monkeypatched
(calls inside the compiled module bypass module attributes). Brownie reaches
the Vyper compiler through ``vyper.cli.vyper_json.compile_json``, a plain Python
attribute lookup, so the shim wraps that function instead and rewrites each
contract's ``sourceMap`` to the compressed string.

The setup (``make deps``) copies this file into the virtualenv's site-packages
together with a one-line ``.pth`` file, so every Python process (``brownie``
CLI, pytest plugin, our scripts) gets the fix. The patch is applied lazily,
only when ``brownie.project.compiler.vyper`` is imported, so unrelated
processes (and the plain ``vyper`` CLI) see Vyper's output unchanged.
"""

import importlib.abc
import importlib.machinery
import sys

TARGET = "brownie.project.compiler.vyper"
PATCHED_FLAG = "_opinfer_vyper04_patched"


def normalise_source_maps(output: dict) -> dict:
    """Rewrite every ``deployedBytecode.sourceMap`` dict in a standard-JSON output
    to the compressed string that brownie expects (in place; returns ``output``)."""
    for contracts in output.get("contracts", {}).values():
        for contract in contracts.values():
            deployed = contract.get("evm", {}).get("deployedBytecode", {})
            source_map = deployed.get("sourceMap")
            if isinstance(source_map, dict):
                deployed["sourceMap"] = source_map["pc_pos_map_compressed"]
    return output


def patch(_brownie_vyper_module=None) -> None:
    """Wrap ``vyper.cli.vyper_json.compile_json`` once."""
    from vyper.cli import vyper_json

    if getattr(vyper_json, PATCHED_FLAG, False):
        return
    original = vyper_json.compile_json

    def compile_json(*args, **kwargs):
        return normalise_source_maps(original(*args, **kwargs))

    vyper_json.compile_json = compile_json
    setattr(vyper_json, PATCHED_FLAG, True)


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped):
        self._wrapped = wrapped

    def create_module(self, spec):
        return self._wrapped.create_module(spec)

    def exec_module(self, module):
        self._wrapped.exec_module(module)
        patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


def install() -> None:
    if TARGET in sys.modules:
        patch(sys.modules[TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
