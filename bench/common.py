"""What every benchmark's command line shares: `--json` prints one JSON
object, otherwise a readable report; the exit status says whether every
section met its target."""

from __future__ import annotations

import argparse
import json
from typing import Callable


def _sections_met(result: dict) -> bool:
    return all(section.get("meets_target", True) for section in result.values() if isinstance(section, dict))


def run(argv, doc: str, compute: Callable[[], dict], report: Callable[[dict], None],
        passed: Callable[[dict], bool] = _sections_met) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = compute()
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0 if passed(result) else 1


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
