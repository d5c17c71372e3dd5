"""The pipeline's config (configs/pipeline/<task>.yaml): one strict dataclass, read by robotstack/core/config.py.

Stage configs are referenced by path, RELATIVE TO THE PIPELINE YAML (like `base:`), so a pipeline file works
from any working directory; absolute paths work too. Every referenced file must exist and must not name another
task than the pipeline (checked here, before any work); the stage configs themselves are resolved by their own
stage modules before any work too (stages.check_plan).

The data recipe (rl100.md §4.1, §4.6; issue 11 item 2) is explicit in the config:
  demos.*    noisy scripted demos (the expert with action noise: mostly successes, some failures)
  collect.*  after each offline round, rollouts of the gate-accepted policy, successes AND failures, recorded
             with source=policy and policy_id=<the offline stage>, merged into a NEW store (D_{m+1} = D_m + D_new)
  rounds     M outer rounds (the sources are silent on M; rl100.md §13)

Chunked critics (issue 12) beside IQL: `critic.kind` none (default: no critic stage, the plan is exactly the one
without the section) | dqc | qc | ns | os (best-of-N at deployment) | aloe (an evaluation of the final policy).
See stages.py for what each kind adds to the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from robotstack.core.config import load_config, read_yaml_with_base
from robotstack.core.errors import ConfigError
from robotstack.core.joint_motion import base_task
from robotstack.core.keys import RECORD_LABELS
from robotstack.core.manifest import BEST_OF_N_SAMPLERS


@dataclass
class StageRef:
    config: str = ""  # stage YAML, relative to the pipeline YAML (or absolute)
    overrides: list[str] = field(default_factory=list)  # dotted overrides passed to the stage (after the pipeline's)


@dataclass
class DemosSection:
    episodes: int = 50
    noise: float = 0.2  # the scripted expert's action noise: mixed-quality data on purpose
    labels: str = "executed"  # executed (noisy) actions, or "clean": DART labels (data/recording.py)
    seed: int = 0  # episode i is recorded with seed + i


# export samplers that ship the diffusion teacher itself, not a distilled student; also what collect.arm may export
# (the rounds' policies are teachers: no student exists yet)
TEACHER_SAMPLERS = ("rti", "ddim")


@dataclass
class CollectSection:
    episodes: int = 50  # rollouts of the accepted policy per round (rl100.md §13: not given by the sources)
    seed: int = 200_000  # round m uses seed + 10_000 m: away from the demos (0..) and the evaluations (100_000..)
    num_envs: int = 1  # sim rollouts only
    # Rollouts on an arm server instead of the sim (rl100.md §4.6: "in sim or on the robot"): the address the
    # server was started with (its --bind, tcp://HOST:PORT or ipc://DIR); "" = sim. The user starts the server.
    # The accepted policy is exported (`sampler`) and run by the real-time controller as `deploy --record` runs
    # it; merge_m keeps the keys both stores have (the telemetry stays in collect_m). Seeds are labels there.
    arm: str = ""
    keys: str = ""  # CURVE client key dir for the arm server (client.secret, server.public); "" = none (loopback)
    sampler: str = "rti"  # the artifact the arm runs: rti (the export default) or ddim; both export the teacher
    max_steps: int = 0  # policy steps per arm episode; 0 = the task's time limit


@dataclass
class OnlineSection(StageRef):
    enabled: bool = True


@dataclass
class CoverageSection:
    """Sim states for the one-step student beyond the final store: the scripted expert with action noise in
    randomised scenes, recorded by a `coverage` stage before distill and added to its data. rl100 distillation
    reads observations only (the teacher labels them), so the expert's noisy actions never reach the student.
    Why: the student follows its teacher only on the states it was distilled on (bench_student_gap: 5-7x farther
    from its teacher on arm-server states than on MuJoCo ones). Measured on push@servo with 100 episodes of
    noise 0.5 and randomize {object_pose: 0.02, friction: 0.6, mass: 0.7, obs_noise: 0.002}: CM-1 91% in MuJoCo
    against 81% without (its teacher 90%) and 67% vs 58% on the PyBullet arm server; on push (fast arm) the same
    recipe changed nothing (89% vs 90%; docs/benchmarks.md, "Deployment transfer")."""

    episodes: int = 0  # 0 = no coverage stage (the plan is exactly the one without the section)
    noise: float = 0.5  # the expert's action noise: states off the expert's path, failures included
    randomize: dict = field(default_factory=dict)  # sim Randomize keys (object_pose, friction, mass, obs_noise, ...)
    seed: int = 400_000  # its own seeds: away from demos (0..), evals (100_000..), rollouts (200_000..), select


@dataclass
class DistillSection(StageRef):
    enabled: bool = True  # still skipped at run time when the RL stage's joint student kept up with its teacher:
    # its evaluated success within joint_tolerance of the teacher's (the CM-1 target: 2 points)
    joint_tolerance: float = 0.02
    # More stores whose observations the student is distilled on, beside the final store: states of the arm the
    # artifact will drive (e.g. `deploy --record` episodes), which sim data does not cover. rl100 distillation
    # uses only observations (the teacher labels them), so these stores' actions never reach the student.
    extra_data: list[str] = field(default_factory=list)
    coverage: CoverageSection = field(default_factory=CoverageSection)


@dataclass
class ExportSection:
    # cm1 / cm3 / cm_warm: the student (cm_warm: one call per action, warm-started from its previous chunk,
    # policies/consistency/warm.py); ddim / rti: the teacher itself (rti: warm-started, 3 calls at the export
    # default [20, 10, 0]). On the arm server the randomised push@servo teacher kept 0.86 of its sim success as
    # rti, its CM-1 student 0.66 and the same student as cm_warm 0.82 (docs/benchmarks.md, "Deployment transfer")
    sampler: Literal["cm1", "cm3", "ddim", "rti", "cm_warm"] = "cm1"


@dataclass
class RoundGateSection:
    """After round m, select_{m+1} keeps il_{m+1} (IL re-trained on the grown store) only if it succeeds in sim at
    least as often as the policy round m rolled out (stages._run_select). RL-100's Alg. 1 re-imitates without a
    check; measured here, re-imitation alone lowered push_t from 69% to 53% at the shipped IL steps (70% at twice
    the steps; bench_outer_round) and the demo-sized reach pipeline from 98% to 86% (bench_rl100), while only the
    offline PPO step had a gate."""

    episodes: int = 50  # per policy; 0 = no select stage (Alg. 1 as written: il_{m+1} always goes on)
    seed: int = 300_000  # its own seeds: away from demos (0..), evaluations (100_000..) and rollouts (200_000..)


@dataclass
class EvalSection:
    episodes: int = 100  # passed to every stage as eval.episodes, and the artifact's evaluation
    seed: int = 100_000  # the artifact's first evaluation episode


CRITIC_KINDS = ("none", "dqc", "qc", "ns", "os", "aloe")
BEST_OF_N_KINDS = ("dqc", "qc", "ns", "os")  # the partial/chunk critics whose scorer picks among N candidates
DEFAULT_BEST_OF_N = 32  # the deployment N (bench_best_of_n measures 1, 8, 32)
CRITIC_PRESETS = Path(__file__).resolve().parents[2] / "configs" / "critic"


@dataclass
class CriticSection(StageRef):
    """The chunked critic trained on the final store against the final policy (configs/critic/<kind>.yaml).

    config "" = the shipped preset configs/critic/<kind>.yaml (so `critic.kind=dqc` alone is a complete choice);
    otherwise a path relative to the pipeline YAML, like every stage config. The preset's method/variant must be
    the kind's (checked before any work: a qc.yaml under kind dqc would silently train another critic).
    best_of_n: candidates per decision of the exported artifact (dqc/qc/ns/os only; None = DEFAULT_BEST_OF_N).
    An ALOE critic evaluates the policy that generated its bootstrap chunks; it is not a best-of-N scorer here, so
    aloe refuses best_of_n. value_samples: policy chunks per start state of the ALOE value estimate."""

    kind: str = "none"
    best_of_n: int | None = None
    value_samples: int = 16


@dataclass
class PipelineConfig:
    task: str = ""
    rounds: int = 2  # M outer offline rounds; 0 = IL -> online directly
    # the policy the offline rounds hand on (to online, or to distill/export when online is off):
    # il = IL re-trained on the grown store (Alg. 1 line 13); offline = the last round's gate-accepted policy
    rounds_output: Literal["il", "offline"] = "il"
    # which episodes of the grown store il_{m+1} imitates: successes (filtered BC: demos + successful rollouts) or
    # all (Alg. 1 line 13 read literally). Measured on the demo-sized reach pipeline with `all`: il_0 98% ->
    # il_1 86% after 5 failed rollouts joined 45 successes (bench_rl100, 50 episodes) — hence successes by default;
    # the offline critics always see every episode (they need the failures).
    reimitate: Literal["successes", "all"] = "successes"
    round_gate: RoundGateSection = field(default_factory=RoundGateSection)
    num_threads: int = 1  # torch threads of the pipeline's own rollouts and export (each stage sets its own)
    eval: EvalSection = field(default_factory=EvalSection)
    demos: DemosSection = field(default_factory=DemosSection)
    il: StageRef = field(default_factory=StageRef)
    offline: StageRef = field(default_factory=StageRef)
    collect: CollectSection = field(default_factory=CollectSection)
    online: OnlineSection = field(default_factory=OnlineSection)
    distill: DistillSection = field(default_factory=DistillSection)
    export: ExportSection = field(default_factory=ExportSection)
    critic: CriticSection = field(default_factory=CriticSection)

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("task: required (e.g. task: push, or task: mw:push-v3)")
        for name, value, lo in (("rounds", self.rounds, 0), ("demos.episodes", self.demos.episodes, 1),
                                ("collect.episodes", self.collect.episodes, 1), ("eval.episodes", self.eval.episodes, 0),
                                ("collect.num_envs", self.collect.num_envs, 1), ("num_threads", self.num_threads, 1),
                                ("round_gate.episodes", self.round_gate.episodes, 0)):
            if value < lo:
                raise ConfigError(f"{name}: expected >= {lo}, got {value}")
        self._check_arm()
        if not 0.0 <= self.demos.noise <= 1.0:
            raise ConfigError(f"demos.noise: expected in [0, 1], got {self.demos.noise}")
        if self.demos.labels not in RECORD_LABELS:
            raise ConfigError(f"demos.labels: expected one of {RECORD_LABELS}, got {self.demos.labels!r}")
        c = self.critic
        if c.kind not in CRITIC_KINDS:
            raise ConfigError(f"critic.kind: {c.kind!r}, expected one of {list(CRITIC_KINDS)}")
        if c.best_of_n is not None:
            if c.kind not in BEST_OF_N_KINDS:
                raise ConfigError(f"critic.best_of_n: {c.best_of_n} with critic.kind {c.kind!r}; best-of-N needs a "
                                  f"scorer critic ({', '.join(BEST_OF_N_KINDS)}); aloe evaluates the policy instead")
            if c.best_of_n < 1:
                raise ConfigError(f"critic.best_of_n: expected >= 1 (1 = plain), got {c.best_of_n}")
        if c.kind in BEST_OF_N_KINDS and self.export.sampler not in BEST_OF_N_SAMPLERS:  # the artifact's own rule
            raise ConfigError(f"export.sampler: {self.export.sampler} with critic.kind {c.kind!r}; best-of-N needs "
                              f"independent candidates per decision, one of {list(BEST_OF_N_SAMPLERS)}")
        if c.value_samples < 1:
            raise ConfigError(f"critic.value_samples: expected >= 1, got {c.value_samples}")
        self._check_coverage()
        for i, store in enumerate(self.distill.extra_data):
            if not Path(store).is_dir():
                raise ConfigError(f"distill.extra_data[{i}]: {store} is not an episode store directory")

    def _check_coverage(self) -> None:
        c = self.distill.coverage
        if c.episodes < 0:
            raise ConfigError(f"distill.coverage.episodes: expected >= 0 (0 = none), got {c.episodes}")
        if not 0.0 <= c.noise <= 1.0:
            raise ConfigError(f"distill.coverage.noise: expected in [0, 1], got {c.noise}")
        if c.randomize:
            from sim.base_env import Randomize  # the sim's own reader: keys and ranges, before any work

            try:
                Randomize.read(c.randomize)
            except ConfigError as exc:
                raise ConfigError(f"distill.coverage.{exc}") from None

    def _check_arm(self) -> None:
        c = self.collect
        if not c.arm:
            if c.keys:
                raise ConfigError(f"collect.keys: {c.keys!r} without collect.arm (the keys are for an arm server)")
            return
        from robotstack.runtime.client import arm_endpoints  # the runtime's own address rules (only with an arm)

        try:
            arm_endpoints(c.arm)
        except ValueError as e:
            raise ConfigError(f"collect.arm: {e}") from None
        if c.keys and not Path(c.keys).is_dir():
            raise ConfigError(f"collect.keys: {c.keys} is not a directory (robotstack keys generate --out DIR)")
        if c.sampler not in TEACHER_SAMPLERS:
            raise ConfigError(f"collect.sampler: {c.sampler!r}, expected one of {list(TEACHER_SAMPLERS)} (the "
                              "teacher's own samplers: the rounds have no one-step student yet)")
        if c.max_steps < 0:
            raise ConfigError(f"collect.max_steps: expected >= 0 (0 = the task's time limit), got {c.max_steps}")

    @property
    def critic_n(self) -> int:
        """The exported artifact's default candidates per decision (best-of-N kinds only)."""
        return self.critic.best_of_n if self.critic.best_of_n is not None else DEFAULT_BEST_OF_N

    def used_stage_refs(self) -> dict[str, StageRef]:
        """The stage configs this pipeline will run (disabled stages need no file)."""
        refs = {"il": self.il}
        if self.rounds:
            refs["offline"] = self.offline
        if self.online.enabled:
            refs["online"] = self.online
        if self.distill.enabled:
            refs["distill"] = self.distill
        if self.critic.kind != "none":
            refs["critic"] = self.critic
        return refs


def load_pipeline_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    """Read + validate; stage config paths come back absolute. Fails (naming the key and file) on unknown keys,
    missing stage config files and a stage config of another task."""
    path = Path(path)
    cfg = load_config(PipelineConfig, path, list(overrides))
    cfg.distill.extra_data = [str(Path(p).resolve()) for p in cfg.distill.extra_data]  # like --data: from the CWD
    if cfg.critic.kind != "none" and not cfg.critic.config:
        cfg.critic.config = str(CRITIC_PRESETS / f"{cfg.critic.kind}.yaml")  # CriticSection's docstring says why
    for name, ref in cfg.used_stage_refs().items():
        if not ref.config:
            raise ConfigError(f"{path}: {name}.config: required (the {name} stage's YAML, relative to {path.parent})")
        stage_file = Path(ref.config) if Path(ref.config).is_absolute() else (path.parent / ref.config)
        stage_file = stage_file.resolve()
        if not stage_file.is_file():
            raise ConfigError(f"{path}: {name}.config: {ref.config} -> {stage_file} does not exist")
        ref.config = str(stage_file)
        stage_task = read_yaml_with_base(stage_file).get("task")
        if stage_task not in (None, "", cfg.task, base_task(cfg.task)):  # push@servo runs push's stage configs
            raise ConfigError(f"{path}: task {cfg.task!r} but {name}.config {stage_file} is for task {stage_task!r}")
    return cfg
