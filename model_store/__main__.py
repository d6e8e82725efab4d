"""Command line of the model store.

    python -m model_store list
    python -m model_store build-demo [MODEL_ID ...]
    python -m model_store build-stand-in MODEL_ID --forward-ms 150   (benchmarks: model_store/standin.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import SettingsError
from common.settings import get_settings
from model_store.demo import build_demo
from model_store.store import ModelStore


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_list(store: ModelStore) -> int:
    models = store.list()
    if not models:
        print(f"no models in {store.root} (run: python -m model_store build-demo)")
        return 0
    print(f"{'MODEL_ID':<28} {'TASK':<24} {'SIZE':>10}  STATUS")
    for info in models:
        status = "complete" if info.complete else f"incomplete: {info.problem}"
        print(f"{info.model_id:<28} {info.task or '?':<24} {_size(info.size_bytes):>10}  {status}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_store", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="the store (default: MODEL_DIR, else ./models)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the models in the store")
    build = sub.add_parser("build-demo", help="build the demo models (once; later runs keep them)")
    build.add_argument("models", nargs="*", help="only these demo models")
    stand_in = sub.add_parser("build-stand-in", help="a benchmark's stand-in model: each batch lasts --forward-ms")
    stand_in.add_argument("model_id")
    stand_in.add_argument("--forward-ms", type=float, required=True, help="milliseconds each batch lasts")
    args = parser.parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = settings.model_dir if args.model_dir is None else Path(args.model_dir)
    if args.command == "list":
        return cmd_list(ModelStore(root))
    if args.command == "build-stand-in":
        from model_store.standin import build_stand_in

        build_demo(root, ["minilm"])  # its tokenizer
        build_stand_in(root / args.model_id, root / "minilm", args.forward_ms / 1000)
        print(f"{args.model_id}: stand-in model, {args.forward_ms:g} ms per batch, in {root}")
        return 0
    build_demo(root, args.models or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
