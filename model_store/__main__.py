"""Command line of the model store, and of where its models run.

    python -m model_store list
    python -m model_store build-demo [MODEL_ID ...]
    python -m model_store build-stand-in MODEL_ID --forward-ms 150   (benchmarks: model_store/standin.py)
    python -m model_store place MODEL_ID (--replicas N | --workers NAME[,NAME...]) [--task TASK]
    python -m model_store unplace MODEL_ID
    python -m model_store placements

`place` records a model placement in Redis (REDIS_URL), as
PUT /models/<id>/placement does, and runs one assignment round; the
workers converge on it within a few heartbeats. `unplace` removes it and
takes the model off every worker. `placements` shows each placement,
desired and actual.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import redis

from common.assignment import Assigner, live_entries, statuses
from common.errors import SettingsError, ValidationFailed
from common.params import normalize_task
from common.placement import MAX_REPLICAS, ModelPlacement, ModelPlacements, check_placement
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


def cmd_place(store: ModelStore, settings, args) -> int:
    """Record a model placement (the same checks as PUT /models/<id>/placement) and assign it once."""
    if not store.exists(args.model_id):
        print(f"error: model {args.model_id!r} is not in the store ({store.root})", file=sys.stderr)
        return 2
    workers = [w.strip() for w in args.workers.split(",")] if args.workers is not None else None
    problem = check_placement(args.replicas, workers)
    try:
        task = normalize_task(args.task)
    except ValidationFailed as exc:
        problem = problem or exc.message.replace("model_type", "--task", 1)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    placement = ModelPlacement(args.model_id, replicas=args.replicas,
                               workers=tuple(workers) if workers is not None else None, task=task)
    ModelPlacements(client).put(placement)
    if placement.wanted == 0:
        print(f"{args.model_id}: placement removed; the workers unload it within a few heartbeats")
        return 0
    Assigner(client, settings.heartbeat_s, size_of=lambda m: store.describe(m).size_bytes).run_once(force=True)
    return cmd_placements(client, settings, only=args.model_id)


def cmd_unplace(settings, model_id: str) -> int:
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    had = ModelPlacements(client).remove(model_id)
    print(f"{model_id}: " + ("placement removed; the workers unload it within a few heartbeats" if had
                             else "had no placement; taken off every worker's placement all the same"))
    return 0


def cmd_placements(client: redis.Redis, settings, only: str | None = None) -> int:
    """One line per placement: desired, assigned, serving, converged."""
    placements = ModelPlacements(client).all()
    if only is not None:
        placements = {m: p for m, p in placements.items() if m == only}
    if not placements:
        print("no model placements (python -m model_store place MODEL_ID --replicas N)")
        return 0
    print(f"{'MODEL_ID':<28} {'DESIRED':<24} {'ASSIGNED TO':<30} {'SERVING ON':<30} CONVERGED")
    for model_id, status in sorted(statuses(client, placements, live_entries(client, settings.heartbeat_s)).items()):
        desired = f"workers {','.join(status['workers'])}" if "workers" in status else f"{status['replicas']} replicas"
        print(f"{model_id:<28} {desired:<24} {','.join(status['assigned_to']) or '-':<30} "
              f"{','.join(status['serving_on']) or '-':<30} {'yes' if status['converged'] else 'no'}")
    return 0


def _replicas(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


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
    place = sub.add_parser("place", help="serve a model on N workers, or on named workers (kept in Redis)")
    place.add_argument("model_id")
    how = place.add_mutually_exclusive_group(required=True)
    how.add_argument("--replicas", type=_replicas, help=f"this many live workers (0 to {MAX_REPLICAS}; 0 removes it)")
    how.add_argument("--workers", help="these workers, comma-separated (e.g. cuda0@gpu1,cuda0@gpu2)")
    place.add_argument("--task", help="pipeline task to load it as (default: from its config)")
    unplace = sub.add_parser("unplace", help="remove a model's placement and unload it from every worker")
    unplace.add_argument("model_id")
    sub.add_parser("placements", help="each model placement: desired, assigned, serving, converged")
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
    if args.command == "build-demo":
        build_demo(root, args.models or None)
        return 0
    try:
        if args.command == "place":
            return cmd_place(ModelStore(root), settings, args)
        if args.command == "unplace":
            return cmd_unplace(settings, args.model_id)
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
        return cmd_placements(client, settings)
    except (redis.RedisError, OSError) as exc:
        print(f"error: cannot reach Redis at REDIS_URL: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
