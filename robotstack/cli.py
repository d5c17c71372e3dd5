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
    if getattr(args, "arm", ""):  # teleop through an arm server (robotstack/deploy.py)
        if args.device == "scripted":
            raise SystemExit("robotstack record --arm: needs --device keyboard or spacemouse")
        from robotstack.deploy import record_arm

        return record_arm(args)
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


def cmd_train_il(args: argparse.Namespace) -> int:
    from robotstack.train.il import main as train_il

    train_il(args.config, args.overrides, resume=args.resume, out=args.out, show_progress=not args.quiet)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from robotstack.eval.rollout import evaluate_checkpoint

    result, out = evaluate_checkpoint(args.checkpoint, args.episodes, ema=args.ema, task=args.task or None,
                                      out_dir=args.out or None, seed=args.seed, num_envs=args.num_envs,
                                      sampler=args.sampler, steps=args.steps,
                                      max_episode_steps=args.max_episode_steps or None,
                                      video_episodes=args.video_episodes if args.video else 0,
                                      show_progress=not args.quiet)
    s = result.summary()
    table = Table(title=f"eval {args.checkpoint}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("success rate", f"{s['success_rate']:.1%} ({s['successes']}/{s['episodes']})")
    table.add_row("95% CI (Wilson)", f"[{s['ci95_low']:.1%}, {s['ci95_high']:.1%}]")
    table.add_row("mean episode length", f"{s['mean_length']:.1f}")
    table.add_row("mean return", f"{s['mean_return']:.3f}")
    table.add_row("wall time", f"{s['wall_s']:.1f} s ({s['env_steps_per_s']:.0f} env steps/s)")
    Console().print(table)
    print(f"per-episode results: {out / 'episodes.json'}"
          + (f"; videos: {out / 'videos'}" if result.videos else ""))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from robotstack.eval.plots import plot_run

    for path in plot_run(args.run_dir):
        print(f"wrote {path}")
    return 0


def cmd_serve_arm(args: argparse.Namespace) -> int:
    """One arm server process: driver + 1 kHz servo loop + wire protocol (hardware/server.py)."""
    import logging
    import signal

    from hardware.drivers import make_driver
    from hardware.protocol import load_server_keys
    from hardware.server import ArmServer, ArmServerConfig, parse_bind

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kwargs, scenes = {}, None
    if args.driver in ("pybullet", "mujoco"):
        import sim
        from sim.scene_export import task_objects, task_scenes

        env = sim.make(args.task)
        scenes = task_scenes(env, range(args.seed, args.seed + args.scenes))
        env.reset(seed=args.seed)
        if args.driver == "pybullet":
            kwargs = {"objects": task_objects(env)}
        else:
            from sim import panda_scene as ps

            base, P = env.unwrapped, ps.PREFIX
            kwargs = dict(model=base.model, data=base.data, arm_joints=[P + j for j in ps.ARM_JOINTS],
                          arm_actuators=[P + j + "_act" for j in ps.ARM_JOINTS],
                          finger_joints=[P + j for j in ps.FINGER_JOINTS],
                          finger_actuators=[P + j + "_act" for j in ps.FINGER_JOINTS], tcp_site=P + "tcp",
                          object_bodies=[b for b in base.task.object_bodies
                                         if base.model.body(b).mocapid[0] < 0], kinematics="panda")
    elif args.host:
        kwargs = {"host": args.host}
    driver = make_driver(args.driver, **kwargs)
    if args.describe:
        print(json.dumps(driver.info.describe(), indent=2))
        return 0
    keys = load_server_keys(args.keys) if args.keys else None
    servo = {"rate_hz": args.rate, "heartbeat_timeout_s": args.heartbeat_timeout}
    server = ArmServer(driver, parse_bind(args.bind), keys, servo=servo, scenes=scenes,
                       config=ArmServerConfig(robot_id=args.robot_id, state_rate_hz=args.state_rate,
                                              realtime=not args.no_realtime))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    print(f"serve-arm: {args.driver} arm {args.robot_id!r} on {args.bind} (servo {args.rate:g} Hz, state "
          f"{args.state_rate:g} Hz, CURVE {'on' if keys else 'off: loopback only'}) ready", flush=True)
    try:
        stats = server.run(args.duration or None)
    finally:
        server.close()
    if args.stats_out:
        Path(args.stats_out).write_text(json.dumps({"loop": stats, "counters": server.core.counters.as_dict()},
                                                   indent=2, default=str))
    p = stats.get("period_us", {})
    print(f"serve-arm: stopped after {stats['ticks']} ticks; period p50 {p.get('p50', 0):.0f} us, p99 "
          f"{p.get('p99', 0):.0f} us, max {p.get('max', 0):.0f} us; late ticks {stats['late_ticks']}; "
          f"realtime {stats['realtime']}", flush=True)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Run an exported policy on an arm server (robotstack/runtime; torch is never imported)."""
    from robotstack.deploy import deploy

    return deploy(args)


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

    train = sub.add_parser("train", help="training stages")
    train_sub = train.add_subparsers(dest="train_verb", required=True)
    il = train_sub.add_parser("il", help="imitation learning of a diffusion policy from an episode store",
                              description="robotstack train il --config configs/il/push.yaml [dotted.key=value ...]"
                                          " ; under torchrun the same command trains with DDP")
    il.add_argument("--config", help="YAML config (configs/il/*.yaml); not needed with --resume")
    il.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 train.lr=3e-4")
    il.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue RUN_DIR from checkpoints/latest")
    il.add_argument("--out", default=None, metavar="RUN_DIR", help="run dir (default runs/il/<task>_<time>)")
    il.add_argument("--quiet", action="store_true", help="no progress bar")
    il.set_defaults(func=cmd_train_il)

    ev = sub.add_parser("eval", help="roll out a checkpoint in sim: success rate (95%% Wilson CI), lengths")
    ev.add_argument("--checkpoint", required=True, help="checkpoint dir, e.g. RUN_DIR/checkpoints/latest")
    ev.add_argument("--episodes", type=int, default=100)
    ev.add_argument("--task", default="", help="override the task stored in the checkpoint")
    ev.add_argument("--seed", type=int, default=100_000, help="seed of the first episode (then seed+1, ...)")
    ev.add_argument("--sampler", default=None, choices=["ddim", "ddpm"], help="default: the policy's")
    ev.add_argument("--steps", type=int, default=None, help="denoising steps (default: the policy's)")
    ev.add_argument("--num-envs", type=int, default=1, help="> 1: parallel envs in subprocesses")
    ev.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                    help="EMA weights (default: EMA when the checkpoint has them)")
    ev.add_argument("--max-episode-steps", type=int, default=0, help="0 = the task's time limit")
    ev.add_argument("--video", action="store_true", help="write rollout videos (mp4 with imageio-ffmpeg, else GIF)")
    ev.add_argument("--video-episodes", type=int, default=4, help="how many episodes --video records")
    ev.add_argument("--out", default="", help="output dir (default CHECKPOINT/eval)")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    plot = sub.add_parser("plot", help="learning curves and success over training as PNG (RUN_DIR/plots)")
    plot.add_argument("run_dir")
    plot.set_defaults(func=cmd_plot)

    serve = sub.add_parser("serve-arm", help="run an arm server (driver + 1 kHz servo loop + ZMQ protocol)")
    serve.add_argument("--driver", required=True, choices=["pybullet", "mujoco", "ur_rtde", "xarm", "franka"])
    serve.add_argument("--task", default="push", help="sim drivers: task whose objects/scenes to load")
    serve.add_argument("--bind", default="tcp://127.0.0.1:6510",
                       help="tcp://HOST:PORT (state PORT, command PORT+1, control PORT+2) or ipc://DIR")
    serve.add_argument("--keys", default="", help="server CURVE key dir (server.secret, clients/*.public); "
                                                  "required for non-loopback binds")
    serve.add_argument("--rate", type=float, default=1000.0, help="servo rate, Hz")
    serve.add_argument("--state-rate", type=float, default=200.0, help="state publish rate, Hz")
    serve.add_argument("--heartbeat-timeout", type=float, default=0.5, help="s without heartbeat/target -> STOP")
    serve.add_argument("--robot-id", default="arm")
    serve.add_argument("--host", default="", help="real arms: controller address")
    serve.add_argument("--seed", type=int, default=0, help="sim drivers: seed of the first scene")
    serve.add_argument("--scenes", type=int, default=100, help="sim drivers: scenes cycled by reset(go_home)")
    serve.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0 = until Ctrl-C)")
    serve.add_argument("--no-realtime", action="store_true", help="do not ask for SCHED_FIFO")
    serve.add_argument("--describe", action="store_true", help="print the driver's description and exit")
    serve.add_argument("--stats-out", default="", help="write servo loop stats + counters as JSON at exit")
    serve.set_defaults(func=cmd_serve_arm)
    dep = sub.add_parser("deploy", help="run an exported ONNX policy on an arm server (real-time controller)")
    dep.add_argument("--artifact", required=True, help="export dir: policy.onnx + manifest.json (SIGHUP reloads it)")
    dep.add_argument("--arm", default="tcp://127.0.0.1:6510", help="arm server tcp://HOST:PORT (as its --bind)")
    dep.add_argument("--keys", default="", help="client CURVE key dir (client.secret, server.public)")
    dep.add_argument("--record", default="", help="episode store to append every run to (zarr)")
    dep.add_argument("--episodes", type=int, default=1)
    dep.add_argument("--duration", type=float, default=0.0, help="seconds per episode (0 = until --max-steps)")
    dep.add_argument("--max-steps", type=int, default=0, help="policy steps per episode (0 = no limit)")
    dep.add_argument("--takeover", default="", choices=["", "keyboard", "spacemouse"],
                     help="teleop device that overrides the policy while engaged (flagged as interventions)")
    dep.add_argument("--command-hz", type=float, default=100.0, help="controller loop / target rate")
    dep.add_argument("--target-expiry", type=float, default=0.03, help="s a target stays valid on the server")
    dep.add_argument("--max-delta", type=float, default=0.5, help="max action change per step (0 = off)")
    dep.add_argument("--robot-id", default="arm")
    dep.add_argument("--seed", type=int, default=0, help="seed recorded for the first episode")
    dep.add_argument("--quiet", action="store_true", help="no live status line")
    dep.set_defaults(func=cmd_deploy)
    tasks = sub.add_parser("tasks", help="list the registered tasks")
    tasks.set_defaults(func=cmd_tasks)
    keys = sub.add_parser("keys", help="ZMQ CURVE keys for arm servers and controllers")
    keys_sub = keys.add_subparsers(dest="keys_verb", required=True)
    gen = keys_sub.add_parser("generate", help="write server/client keypairs (z85 files)")
    gen.add_argument("--out", required=True, help="key directory")
    gen.add_argument("--names", default="server,client", help="comma-separated keypair names")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=cmd_keys_generate)

    from robotstack.cli_inference import add_fast_inference_verbs  # distill, export, rti choose-k, eval-artifact

    add_fast_inference_verbs(sub)
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
