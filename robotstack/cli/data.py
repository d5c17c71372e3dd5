"""Data capture verbs: `record` (scripted expert, keyboard, spacemouse; sim or arm), `data info|merge`, `tasks`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from robotstack.core.keys import RECORD_LABELS


def _cameras(text: str) -> tuple[str, ...]:
    return tuple(c for c in text.split(",") if c) if text else ()


def _randomize(text: str) -> dict | None:
    """--randomize JSON -> the sim's Randomize dict, checked before any store is touched."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"robotstack record --randomize {text!r}: not JSON ({exc.msg}); expected e.g. "
                         '\'{"friction": 0.4, "mass": 0.5}\'') from exc
    from robotstack.core.errors import ConfigError
    from sim.base_env import Randomize

    try:
        Randomize.read(doc)
    except ConfigError as exc:
        raise SystemExit(f"robotstack record --randomize: {exc}") from exc
    return doc


def cmd_record(args: argparse.Namespace) -> int:
    if args.labels == "clean" and args.device != "scripted":
        raise SystemExit(f"robotstack record --labels clean: needs --device scripted (only a scripted expert knows "
                         f"the clean action), got --device {args.device}")
    if getattr(args, "arm", ""):  # teleop through an arm server (robotstack/cli/deploy.py)
        if args.randomize:
            raise SystemExit("robotstack record --arm: --randomize is sim-only (a real arm's physics is what it is)")
        if args.device == "scripted":
            raise SystemExit("robotstack record --arm: needs --device keyboard or spacemouse")
        if args.action_mode != "delta":
            raise SystemExit(f"robotstack record --arm: --action-mode {args.action_mode} is sim-only; arm teleop "
                             "records delta actions")
        from robotstack.cli.deploy import record_arm

        return record_arm(args)
    randomize = _randomize(args.randomize)
    import sim
    from robotstack.cli.record import record_teleop
    from robotstack.data.recording import open_or_create_store, record_scripted

    env = sim.make(args.task, cameras=_cameras(args.cameras), image_size=args.image_size,
                   render_mode="rgb_array" if args.device != "scripted" else None, action_mode=args.action_mode,
                   **({"randomize": randomize} if randomize else {}))
    store = open_or_create_store(args.out, zarr_format=args.zarr_format)
    try:
        if args.device == "scripted":
            expert = sim.make_expert(env, noise=args.noise, seed=args.seed)
            stats = record_scripted(env, expert, store, args.task, args.episodes, args.seed, args.noise,
                                    realtime=args.realtime, show_progress=not args.quiet, labels=args.labels)
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
    from robotstack.core.joint_motion import SERVO_TASK_SUFFIX

    for name in sim.task_names():
        print(name)
    print(f"<task>{SERVO_TASK_SUFFIX}  any task above with the arm server's servo arm (velocity and acceleration "
          "limits), e.g. push@servo")
    print("mw:<name>  any Meta-World v3 task, e.g. mw:pick-place-v3")
    return 0


def add_verbs(sub) -> None:
    rec = sub.add_parser("record", help="record demos from a scripted expert or a person into a zarr store")
    rec.add_argument("--task", required=True, help="task name (see `robotstack tasks`)")
    rec.add_argument("--device", default="scripted", choices=["scripted", "keyboard", "spacemouse"])
    rec.add_argument("--episodes", type=int, default=10)
    rec.add_argument("--out", required=True, help="episode store path (created, or appended to)")
    rec.add_argument("--zarr-format", type=int, default=3, choices=[2, 3])
    rec.add_argument("--noise", type=float, default=0.0, help="scripted expert suboptimality in [0, 1]")
    rec.add_argument("--labels", default="executed", choices=RECORD_LABELS,
                     help="scripted: record the executed (noisy) action, or the expert's clean action in each state "
                          "while the noisy one is executed (DART: noise widens the visited states, labels stay clean)")
    rec.add_argument("--seed", type=int, default=0, help="seed of the first episode (then seed+1, ...)")
    rec.add_argument("--cameras", default="", help="comma-separated cameras to record as RGB, e.g. front,wrist")
    rec.add_argument("--image-size", type=int, default=96)
    rec.add_argument("--realtime", action="store_true", help="pace scripted recording at the control rate")
    rec.add_argument("--action-mode", default="delta", choices=["delta", "absolute"],
                     help="end-effector action mode of the recorded actions (core/ee_action.py); the store records "
                          "it and training refuses a config of the other mode")
    rec.add_argument("--randomize", default="",
                     help='sim domain randomisation while recording, JSON of sim Randomize keys (object_pose, friction, '
                          'mass, action_latency_steps, obs_noise), e.g. \'{"friction": 0.4, "mass": 0.5}\'; recorded '
                          "in each episode's policy_id")
    rec.add_argument("--live-view", default="", help="PNG path refreshed with the scene (teleop devices)")
    rec.add_argument("--quiet", action="store_true")
    rec.add_argument("--arm", default="", help="drive an arm server (tcp://HOST:PORT) instead of the sim")
    rec.add_argument("--keys", default="", help="with --arm: client CURVE key dir (client.secret, server.public)")
    rec.add_argument("--max-steps", type=int, default=400, help="with --arm: steps per episode")
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
