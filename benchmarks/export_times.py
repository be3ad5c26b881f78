"""Per-format export time and peak memory for a recipe's merged model (default: the quickstart).

Re-runs only the export stage (earlier stages come from the run store's cache, or run first if missing):

    .venv/bin/python benchmarks/export_times.py [--recipe recipes/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.core.recipe import load_recipe  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.pipeline.runner import default_home, run_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.yaml")
    parser.add_argument("--home", type=Path, default=default_home())
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    run_id = run_recipe(recipe, args.home, stages=["export"], force=["export"])
    rows = [v for v in Store(args.home / "workbench.db").variants(run_id) if v.format != "hf"]
    print(f"\n{'variant':48} {'status':7} {'size MB':>8} {'seconds':>8} {'peak MB':>8}  fallbacks")
    for v in rows:
        fallbacks = len(v.meta.get("fallbacks", []))
        peak = f"{v.peak_mem_mb:.0f}" if v.peak_mem_mb else "-"
        seconds = f"{v.seconds:.1f}" if v.seconds else "-"
        print(f"{v.name:48} {v.status:7} {v.size / 1e6:>8.1f} {seconds:>8} {peak:>8}  {fallbacks}")


if __name__ == "__main__":
    main()
