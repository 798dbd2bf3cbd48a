"""The contracts' ABIs shipped inside the package (opinfer/chain/abi/, read by
the SDK and every service) are the ones the contracts compile to: `make test`
compiles build/ afresh first, so an ABI that drifted from its contract fails here."""

import json

from opinfer.chain import artifacts


def test_shipped_abis_equal_the_compiled_ones():
    shipped = sorted(p.stem for p in artifacts.ABI_DIR.glob("*.json"))
    assert shipped == sorted(artifacts.CONTRACTS)
    for name in artifacts.CONTRACTS:
        compiled = artifacts.load(name).abi
        assert artifacts.abi(name) == compiled, (
            f"opinfer/chain/abi/{name}.json differs from build/: run `make compile` "
            "(or `python -m opinfer.chain.artifacts export`) and commit the result")
        # and byte for byte in the generated form, so regenerating changes nothing
        assert (artifacts.ABI_DIR / f"{name}.json").read_text() == artifacts.render(compiled)


def test_shipped_abis_are_package_data(tmp_path):
    # what `pip install` copies: the pyproject's package data names the folder
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "abi/*.json" in pyproject["tool"]["setuptools"]["package-data"]["opinfer.chain"]
    assert json.loads((artifacts.ABI_DIR / "ResultRollup.json").read_text())
