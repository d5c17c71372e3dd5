"""Arm verbs: `serve-arm` (driver + servo loop + wire protocol), `deploy` (the real-time controller), `keys`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_serve_arm(args: argparse.Namespace) -> int:
    """One arm server process: driver + 1 kHz servo loop + wire protocol (hardware/server.py)."""
    import logging
    import signal

    from hardware.drivers import make_driver
    from hardware.protocol import load_server_keys, parse_bind
    from hardware.server import ArmServer, ArmServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cpus:  # refuse before any work (ArmServerConfig checks it again)
        from robotstack.core.timing import usable_cpus

        try:
            usable_cpus(args.cpus)
        except ValueError as e:
            raise SystemExit(f"serve-arm: {e}") from None
    servo = {"rate_hz": args.rate, "heartbeat_timeout_s": args.heartbeat_timeout}
    if args.servo:  # more servo limits (hardware/servo.py ServoConfig), checked by name before anything starts
        from hardware.servo import ServoConfig
        from robotstack.core.errors import ConfigError

        try:
            extra = json.loads(args.servo)
            if not isinstance(extra, dict):
                raise ValueError("not a JSON object")
            servo |= extra
            ServoConfig.from_dict(servo, "serve-arm --servo")
        except (ValueError, ConfigError) as e:
            raise SystemExit(f"serve-arm --servo {args.servo!r}: {e}") from None
    kwargs, scenes = {}, None
    if args.driver in ("pybullet", "mujoco", "kinematic"):
        import sim
        from sim.scene_export import task_objects, task_scenes, twin_driver_kwargs

        env = sim.make(args.task)
        scenes = task_scenes(env, range(args.seed, args.seed + args.scenes))
        env.reset(seed=args.seed)
        if args.driver in ("pybullet", "kinematic"):  # kinematic refuses a task with objects to move
            kwargs = {"objects": task_objects(env)}
        else:
            kwargs = twin_driver_kwargs(env)
    elif args.host:
        kwargs = {"host": args.host}
    driver = make_driver(args.driver, **kwargs)
    if args.describe:
        print(json.dumps(driver.info.describe(), indent=2))
        return 0
    keys = load_server_keys(args.keys) if args.keys else None
    server = ArmServer(driver, parse_bind(args.bind), keys, servo=servo, scenes=scenes,
                       config=ArmServerConfig(robot_id=args.robot_id, state_rate_hz=args.state_rate,
                                              realtime=not args.no_realtime, servo_cpus=args.cpus))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())

    def announce():  # "ready" once the servo loop serves the sockets (driver connected, first scene applied)
        if server.ready.wait():
            print(f"serve-arm: {args.driver} arm {args.robot_id!r} on {args.bind} (servo {args.rate:g} Hz, state "
                  f"{args.state_rate:g} Hz, CURVE {'on' if keys else 'off: loopback only'}) ready", flush=True)

    import threading

    threading.Thread(target=announce, daemon=True).start()
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
    from robotstack.cli.deploy import deploy

    return deploy(args)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from hardware.protocol import allow_client, keys_generate

    names = tuple(n for n in args.names.split(",") if n)
    written = keys_generate(args.out, names=names, overwrite=args.overwrite)
    for name, (public, secret) in written.items():
        print(f"{name}: {public} {secret}")
    # the server's allow-list: every generated client key is admitted, so `serve-arm --keys OUT` works as is
    allowed = [allow_client(args.out, pub) for name, (pub, _) in written.items() if name != "server"]
    print(f"CURVE keypairs {', '.join(names)} written to {args.out} (secrets are 0600). Allow-list "
          f"{Path(args.out) / 'clients'}: {', '.join(p.name for p in allowed) or 'unchanged'}. Server: serve-arm "
          f"--keys {args.out}; a client on another host needs its <name>.secret and server.public only.")
    return 0


def add_verbs(sub) -> None:
    serve = sub.add_parser("serve-arm", help="run an arm server (driver + 1 kHz servo loop + ZMQ protocol)")
    serve.add_argument("--driver", required=True,
                       choices=["pybullet", "mujoco", "kinematic", "ur_rtde", "xarm", "franka"],
                       help="kinematic: an ideal physics-free Panda (reach-like tasks, runtime timing)")
    serve.add_argument("--task", default="push", help="sim drivers: task whose objects/scenes to load")
    serve.add_argument("--bind", default="tcp://127.0.0.1:6510",
                       help="tcp://HOST:PORT (state PORT, command PORT+1, control PORT+2) or ipc://DIR")
    serve.add_argument("--keys", default="", help="server CURVE key dir (server.secret, clients/*.public); "
                                                  "required for non-loopback binds")
    serve.add_argument("--rate", type=float, default=1000.0, help="servo rate, Hz")
    serve.add_argument("--state-rate", type=float, default=200.0, help="state publish rate, Hz")
    serve.add_argument("--heartbeat-timeout", type=float, default=0.5, help="s without heartbeat/target -> STOP")
    serve.add_argument("--servo", default="", help="servo limits as JSON (hardware/servo.py ServoConfig keys), e.g. "
                                                  "'{\"accel_scale\": 1.0}' (default: half the arm's rated "
                                                  "velocity and acceleration)")
    serve.add_argument("--robot-id", default="arm")
    serve.add_argument("--host", default="", help="real arms: controller address")
    serve.add_argument("--seed", type=int, default=0, help="sim drivers: seed of the first scene")
    serve.add_argument("--scenes", type=int, default=100, help="sim drivers: scenes cycled by reset(go_home)")
    serve.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (0 = until Ctrl-C)")
    serve.add_argument("--no-realtime", action="store_true", help="do not ask for SCHED_FIFO")
    serve.add_argument("--cpus", default="", help="pin the servo loop's thread to these CPUs, e.g. 0 (only it: the "
                                                  "socket I/O thread stays free); keep `deploy --cpus` on others")
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
    dep.add_argument("--best-of-n", type=int, default=None, metavar="N",
                     help="candidates per decision, the critic's best executed (an artifact exported with --critic; "
                          "default: its manifest critic.n); 1 = plain")
    dep.add_argument("--targets", default="auto", choices=["auto", "joint", "cartesian"],
                     help="cartesian: send the TCP target, the server's servo solves IK (no IK between state arrival "
                          "and target send); joint: IK in the controller; auto (default): cartesian when the server "
                          "offers it (its describe), else joint")
    dep.add_argument("--cpus", default="", help="pin the controller to these CPUs, e.g. 1 (keep serve-arm --cpus "
                                                "on others)")
    dep.add_argument("--rehearse-ms", type=float, default=1.5,
                     help="this long before the state a policy step acts on is due, run the state decode and target "
                          "encode once on the last ones (keeps that code in the CPU's caches); 0 = off")
    dep.add_argument("--seed", type=int, default=0, help="seed recorded for the first episode")
    dep.add_argument("--quiet", action="store_true", help="no live status line")
    dep.set_defaults(func=cmd_deploy)

    keys = sub.add_parser("keys", help="ZMQ CURVE keys for arm servers and controllers")
    keys_sub = keys.add_subparsers(dest="keys_verb", required=True)
    gen = keys_sub.add_parser("generate", help="write server/client keypairs (z85 files)")
    gen.add_argument("--out", required=True, help="key directory")
    gen.add_argument("--names", default="server,client", help="comma-separated keypair names")
    gen.add_argument("--overwrite", action="store_true")
    gen.set_defaults(func=cmd_keys_generate)
