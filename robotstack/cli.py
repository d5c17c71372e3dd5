"""The `robotstack` command. Each verb imports its heavy dependencies lazily so `--help` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering must be chosen before mujoco is imported
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def _cameras(text: str) -> tuple[str, ...]:
    return tuple(c for c in text.split(",") if c) if text else ()


def cmd_record(args: argparse.Namespace) -> int:
    import sim
    from robotstack.record import open_or_create_store, record_scripted, record_teleop

    env = sim.make(args.task, cameras=_cameras(args.cameras), image_size=args.image_size,
                   render_mode="rgb_array" if args.device != "scripted" else None)
    store = open_or_create_store(args.out, zarr_format=args.zarr_format)
    try:
        if args.device == "scripted":
            expert = sim.make_expert(env, noise=args.noise, seed=args.seed)
            stats = record_scripted(env, expert, store, args.task, args.episodes, args.seed, args.noise,
                                    realtime=args.realtime, show_progress=not args.quiet)
        else:
            from hardware.teleop import make_device

            device = make_device(args.device)
            live = Path(args.live_view) if args.live_view else Path(str(args.out).rstrip("/") + ".live.png")
            try:
                stats = record_teleop(env, device, store, args.task, args.episodes, args.seed, live_view=live)
            finally:
                device.close()
    finally:
        env.close()
    print(f"saved {stats.saved} episodes ({stats.frames} frames, success {stats.success_rate:.1%}, "
          f"{stats.frames_per_s:.0f} frames/s) to {args.out}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from robotstack.data.info import format_info, store_info

    info = store_info(args.path)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0


def cmd_data_merge(args: argparse.Namespace) -> int:
    from robotstack.data.merge import merge_stores

    n = merge_stores(args.inputs, args.out, zarr_format=args.zarr_format)
    print(f"merged {len(args.inputs)} stores into {args.out}: {n} episodes")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    import sim

    for name in sim.task_names():
        print(name)
    print("mw:<name>  any Meta-World v3 task, e.g. mw:pick-place-v3")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from hardware.protocol import keys_generate

    names = tuple(n for n in args.names.split(",") if n)
    written = keys_generate(args.out, names=names, overwrite=args.overwrite)
    for name, (public, secret) in written.items():
        print(f"{name}: {public} {secret}")
    print(f"CURVE keypairs {', '.join(names)} written to {args.out} (secrets are 0600; copy client public keys "
          f"into the server's {args.out}/clients/ allow-list)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robotstack", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    rec = sub.add_parser("record", help="record demos from a scripted expert or a person into a zarr store")
    rec.add_argument("--task", required=True, help="task name (see `robotstack tasks`)")
    rec.add_argument("--device", default="scripted", choices=["scripted", "keyboard", "spacemouse"])
    rec.add_argument("--episodes", type=int, default=10)
    rec.add_argument("--out", required=True, help="episode store path (created, or appended to)")
    rec.add_argument("--zarr-format", type=int, default=3, choices=[2, 3])
    rec.add_argument("--noise", type=float, default=0.0, help="scripted expert suboptimality in [0, 1]")
    rec.add_argument("--seed", type=int, default=0, help="seed of the first episode (then seed+1, ...)")
    rec.add_argument("--cameras", default="", help="comma-separated cameras to record as RGB, e.g. front,wrist")
    rec.add_argument("--image-size", type=int, default=96)
    rec.add_argument("--realtime", action="store_true", help="pace scripted recording at the control rate")
    rec.add_argument("--live-view", default="", help="PNG path refreshed with the scene (teleop devices)")
    rec.add_argument("--quiet", action="store_true")
    rec.set_defaults(func=cmd_record)

    data = sub.add_parser("data", help="inspect and combine episode stores")
    data_sub = data.add_subparsers(dest="data_verb", required=True)
    info = data_sub.add_parser("info", help="episodes, frames, keys, success, sources, timing quality")
    info.add_argument("path")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_data_info)
    merge = data_sub.add_parser("merge", help="concatenate stores with the same keys")
    merge.add_argument("inputs", nargs="+")
    merge.add_argument("--out", required=True)
    merge.add_argument("--zarr-format", type=int, default=3, choices=[2, 3])
    merge.set_defaults(func=cmd_data_merge)

    tasks = sub.add_parser("tasks", help="list the registered tasks")
    tasks.set_defaults(func=cmd_tasks)
    keys = sub.add_parser("keys", help="ZMQ CURVE keys for arm servers and controllers")
    keys_sub = keys.add_subparsers(dest="keys_verb", required=True)
    gen = keys_sub.add_parser("generate", help="write server/client keypairs (z85 files)")
    gen.add_argument("--out", required=True, help="key directory")
    gen.add_argument("--names", default="server,client", help="comma-separated keypair names")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=cmd_keys_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from robotstack.core.errors import RobotstackError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RobotstackError as exc:
        print(f"robotstack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robotstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
