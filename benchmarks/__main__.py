"""Run every benchmark module in this folder (each has a ``main()``), in name order."""

import importlib
import os
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "unitscope.settings.local")


def main() -> None:
    import benchmarks

    names = sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.name.startswith("bench_"))
    selected = sys.argv[1:] or names
    for name in selected:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}")
        module.main()


if __name__ == "__main__":
    main()
