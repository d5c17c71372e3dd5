"""robotstack.core.config: the one strict dataclass reader, and every consumer's bad-input message."""

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import pytest

from robotstack.core.config import from_dict, load_config, save_config, to_dict, type_name
from robotstack.core.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Stage:
    name: str
    lr: float = 1e-3


@dataclass
class Run:
    task: str = "push"
    steps: int = 100
    optim: Optim = field(default_factory=Optim)
    cameras: tuple[str, ...] = ()
    note: str | None = None


@dataclass
class Everything:
    """One field per supported annotation."""

    size: int  # required
    stages: list[Stage] = field(default_factory=list)
    dims: tuple[int, ...] = ()
    crop: tuple[int, ...] | None = None
    legacy: Optional[float] = None  # noqa: UP007 - typing.Optional must read like `float | None`
    either: int | str = 0
    mode: Literal["reject", "clamp"] = "reject"
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    scale: float = 1.0
    flag: bool = False
    pose: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ConfigError(f"size must be >= 0, got {self.size}")


def read(**data):
    return from_dict(Everything, {"size": 1, **data}, "e.yaml")


# --- YAML files and overrides --------------------------------------------------------------------------------------
def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: reach\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, path, ["steps=5", "optim.betas=[0.5, 0.6]", "cameras=[front, wrist]"])
    assert cfg.task == "reach" and cfg.steps == 5 and cfg.optim.lr == 0.01
    assert cfg.optim.betas == (0.5, 0.6) and cfg.cameras == ("front", "wrist")
    save_config(cfg, tmp_path / "resolved.json")
    assert from_dict(Run, json.loads((tmp_path / "resolved.json").read_text())) == cfg


def test_unknown_key_names_file_dotted_key_and_allowed_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'optim\.lrr'; allowed keys in 'optim' "
                                          r"\(Optim\): betas, lr$"):
        load_config(Run, path)
    with pytest.raises(ConfigError, match=r"unknown key 'stages\[1\]\.rate'; allowed keys in 'stages\[1\]' "
                                          r"\(Stage\): lr, name"):
        read(stages=[{"name": "a"}, {"name": "b", "rate": 1}])


def test_unknown_override_and_bad_type():
    with pytest.raises(ConfigError, match=r"overrides \['optim.momentum=0.9'\]: unknown key 'optim.momentum'"):
        load_config(Run, None, ["optim.momentum=0.9"])
    with pytest.raises(ConfigError, match=r"key 'steps' = 'fast': expected int$"):
        load_config(Run, None, ["steps=fast"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(Run, None, ["steps"])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, "/nonexistent/x.yaml")
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="l.yaml: expected a mapping at the top level, got list"):
        load_config(Run, tmp_path / "l.yaml")


def test_round_trip_dict():
    cfg = Run(cameras=("a",))
    assert from_dict(Run, to_dict(cfg)) == cfg
    e = read(stages=[{"name": "a"}], crop=[2, 3], shapes={"a": [1, 2]}, pose=[1, 2, 3])
    back = from_dict(Everything, json.loads(json.dumps(to_dict(e))))
    assert back.stages == e.stages and back.shapes == e.shapes and back.crop == (2, 3)
    np.testing.assert_array_equal(back.pose, [1.0, 2.0, 3.0])


def test_exponent_floats_without_a_dot(tmp_path):
    # YAML 1.1 would read these as strings; our JSON dumps write them this way (1e-06)
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-06\n")
    assert load_config(Run, path).optim.lr == 1e-6
    assert load_config(Run, None, ["optim.lr=3e-4"]).optim.lr == 3e-4
    assert load_config(Run, None, ["task=1e3x"]).task == "1e3x"


def test_a_required_key_may_come_from_an_override(tmp_path):
    (tmp_path / "e.yaml").write_text("scale: 2\n")
    assert load_config(Everything, tmp_path / "e.yaml", ["size=3"]).size == 3


# --- missing keys, numbers -----------------------------------------------------------------------------------------
def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"e.yaml: missing required key 'size' \(Everything\)"):
        from_dict(Everything, {}, "e.yaml")
    with pytest.raises(ConfigError, match=r"missing required key 'stages\[0\]\.name' \(Stage\)"):
        read(stages=[{"lr": 0.1}])


def test_ints_are_floats_but_bools_are_not_numbers():
    cfg = read(scale=2)
    assert cfg.scale == 2.0 and type(cfg.scale) is float
    with pytest.raises(ConfigError, match=r"key 'size' = True: expected int$"):
        read(size=True)
    with pytest.raises(ConfigError, match=r"key 'scale' = False: expected float$"):
        read(scale=False)
    with pytest.raises(ConfigError, match=r"key 'size' = 1\.5: expected int$"):
        read(size=1.5)
    with pytest.raises(ConfigError, match=r"key 'flag' = 1: expected bool$"):
        read(flag=1)
    with pytest.raises(ConfigError, match=r"key 'scale' = '1e-4': expected float$"):
        read(scale="1e-4")  # a string stays a string (YAML/JSON give numbers already)
    assert read(size=np.int64(3)).size == 3  # numpy scalars from code paths are numbers


# --- sequences, dicts, unions, Literal -----------------------------------------------------------------------------
def test_lists_and_tuples_of_scalars_and_dataclasses():
    cfg = read(stages=[{"name": "a"}, {"name": "b", "lr": 1}], dims=[1, 2, 3])
    assert cfg.stages == [Stage("a"), Stage("b", 1.0)] and cfg.dims == (1, 2, 3)
    with pytest.raises(ConfigError, match=r"key 'dims\[1\]' = 'x': expected int$"):
        read(dims=[1, "x"])
    with pytest.raises(ConfigError, match=r"key 'dims' = 3: expected tuple\[int, \.\.\.\] \(a list\)"):
        read(dims=3)
    with pytest.raises(ConfigError, match=r"key 'stages\[0\]' = 'a': expected Stage \(a mapping\)"):
        read(stages=["a"])
    with pytest.raises(ConfigError, match=r"key 'optim\.betas' = \[0\.5\]: expected tuple\[float, float\] "
                                          r"\(2 items, got 1\)"):
        from_dict(Run, {"optim": {"betas": [0.5]}})


def test_dict_of_str_to_x():
    cfg = read(shapes={"image": [84, 84, 3], "state": [7]})
    assert cfg.shapes == {"image": (84, 84, 3), "state": (7,)}
    with pytest.raises(ConfigError, match=r"key 'shapes\.state\[0\]' = 'seven': expected int$"):
        read(shapes={"state": ["seven"]})
    with pytest.raises(ConfigError, match=r"key 'shapes' = 1: expected str$"):
        read(shapes={1: [7]})  # YAML `1: [7]` gives an int key
    with pytest.raises(ConfigError, match=r"key 'shapes' = \[1\]: expected dict\[str, tuple\[int, \.\.\.\]\]"):
        read(shapes=[1])


def test_optional_and_unions():
    assert read(crop=None).crop is None and read(crop=[2, 3]).crop == (2, 3)
    assert read(legacy=None).legacy is None and read(legacy=1).legacy == 1.0
    assert read(either=3).either == 3 and read(either="auto").either == "auto"
    with pytest.raises(ConfigError, match=r"key 'crop\[0\]' = 'a': expected int$"):  # Optional: X's message
        read(crop=["a"])
    with pytest.raises(ConfigError, match=r"key 'legacy' = 'x': expected float$"):
        read(legacy="x")
    with pytest.raises(ConfigError, match=r"key 'either' = 1\.5: expected int \| str$"):
        read(either=1.5)
    assert type_name(tuple[int, ...] | None) == "tuple[int, ...] | None"


def test_literal():
    assert read(mode="clamp").mode == "clamp"
    with pytest.raises(ConfigError, match=r"key 'mode' = 'clip': expected one of \['reject', 'clamp'\]"):
        read(mode="clip")

    @dataclass
    class Ones:
        x: Literal[1, 2] = 1

    with pytest.raises(ConfigError, match="expected one of"):
        from_dict(Ones, {"x": True})  # True == 1 in Python, not in a config


def test_ndarray_fields_take_numbers_only():
    assert read(pose=[1, 2, 3]).pose.dtype == np.float64
    with pytest.raises(ConfigError, match=r"key 'pose' = \['a', 1\]: expected ndarray \(numbers\)"):
        read(pose=["a", 1])
    with pytest.raises(ConfigError, match=r"expected ndarray \(numbers\)"):
        read(pose=[True, False])


def test_post_init_domain_errors_name_the_source():
    with pytest.raises(ConfigError, match=r"^e.yaml: size must be >= 0, got -1$"):
        read(size=-1)

    @dataclass
    class Outer:
        inner: Everything

    with pytest.raises(ConfigError, match=r"^o.json: in 'inner': size must be >= 0"):
        from_dict(Outer, {"inner": {"size": -1}}, "o.json")


def test_unsupported_annotation_is_a_programming_error():
    @dataclass
    class Odd:
        x: set[int] = field(default_factory=set)

    with pytest.raises(TypeError, match="cannot read fields annotated"):
        from_dict(Odd, {"x": [1]})


def test_importable_without_torch():
    code = ("import sys, robotstack.core.config as c; "
            "assert not {'torch', 'policies'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- every consumer goes through the reader ------------------------------------------------------------------------
def test_servo_config_messages():
    from hardware.servo import ServoConfig

    with pytest.raises(ConfigError, match=r"servo config: unknown key 'rate'; allowed keys \(ServoConfig\):.*rate_hz"):
        ServoConfig.from_dict({"rate": 1000})
    with pytest.raises(ConfigError, match=r"servo config: key 'rate_hz' = '1k': expected float$"):
        ServoConfig.from_dict({"rate_hz": "1k"})
    with pytest.raises(ConfigError, match=r"key 'workspace' = \[\[0, 0\], \[1, 1\]\]: expected "
                                          r"tuple\[tuple\[float, float, float\], .*\] \| str \| None"):
        ServoConfig.from_dict({"workspace": [[0, 0], [1, 1]]})
    with pytest.raises(ConfigError, match=r"^servo config: velocity_scale=2\.0: expected in \(0, 1\]$"):
        ServoConfig.from_dict({"velocity_scale": 2.0})
    with pytest.raises(ConfigError, match="initial_mode"):  # domain checks also run on direct construction
        ServoConfig(initial_mode="fly")
    assert ServoConfig.from_dict({"workspace": [[0, 0, 0], [1, 1, 1]]}).workspace == ((0, 0, 0), (1, 1, 1))
    assert ServoConfig.from_dict(None) == ServoConfig()


def test_object_spec_messages():
    from hardware.drivers.base import ObjectSpec, parse_objects

    cube = {"name": "cube", "shape": "box", "size": [0.02, 0.02, 0.02], "pose": [0.5, 0.0, 0.021]}
    with pytest.raises(ConfigError, match=r"objects\[0\]: key 'mass' = 'heavy': expected float$"):
        parse_objects([{**cube, "mass": "heavy"}])
    with pytest.raises(ConfigError, match=r"objects\[0\]: key 'rgba' = \[1, 0, 0\]: expected tuple\[float, "
                                          r"float, float, float\] \(4 items, got 3\)"):
        parse_objects([{**cube, "rgba": [1, 0, 0]}])
    with pytest.raises(ConfigError, match=r"objects\[0\]: missing required key 'shape'"):
        parse_objects([{"name": "cube"}])
    with pytest.raises(ConfigError, match=r"object 'cube': shape='cone': expected one of"):
        parse_objects([{**cube, "shape": "cone"}])
    tee = {"name": "tee", "shape": "compound", "parts": [{"shape": "box", "size": [1, 1, 1], "posn": [0, 0, 0]}]}
    with pytest.raises(ConfigError, match=r"object 'tee': unknown key 'parts\[0\]\.posn'; allowed keys in "
                                          r"'parts\[0\]' \(ObjectPart\): pos, quat, shape, size"):
        parse_objects([tee])
    spec = ObjectSpec.from_dict({**tee, "parts": [{"shape": "sphere", "size": [0.1]}]}, "t")
    assert spec.parts == ({"shape": "sphere", "size": [0.1], "pos": [0.0, 0.0, 0.0], "quat": [1.0, 0.0, 0.0, 0.0]},)
    np.testing.assert_array_equal(spec.pose, [0, 0, 0, 1, 0, 0, 0])


# a config.json as saved by checkpoints before the reader moved to core (keys, nulls and lists as written then)
OLD_DIFFUSION_DOC = {
    "format": "robotstack.policy", "version": 1, "policy": "diffusion", "extra": {"task": "push"},
    "config": {
        "obs_shapes": {"robot_eef_pos": [3], "image_front": [84, 84, 3]}, "action_dim": 4, "n_obs_steps": 2,
        "horizon": 8, "n_action_steps": 4, "action_start": 1,
        "denoiser": {"kind": "unet", "mlp_width": 64, "mlp_depth": 2, "mlp_time_dim": 32,
                     "unet_down_dims": [64, 128], "unet_kernel_size": 5, "unet_n_groups": 8,
                     "unet_step_embed_dim": 128},
        "encoder": {"state_encoder": "mlp", "state_hidden": [64], "state_feature_dim": 32,
                    "rgb_channels": [32, 32, 32], "rgb_strides": [2, 2, 1], "rgb_num_keypoints": 32,
                    "rgb_feature_dim": 64, "rgb_groups": 8, "rgb_crop": [76, 76], "share_rgb_encoder": False,
                    "vib": False, "vib_dim": None, "recon": False, "recon_hidden": [256]},
        "scheduler": {"num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True,
                      "clip_sample_range": 1.0, "prediction_type": "epsilon", "set_alpha_to_one": True,
                      "steps_offset": 0, "num_inference_steps": 10, "default_sampler": "ddim", "ddim_eta": 0.0,
                      "rl_eta": 1.0, "sigma_min": 0.01, "sigma_max": 0.1, "prev_timestep_clamp": False},
        "obs_norm": "minmax", "action_norm": "minmax", "beta_kl": 0.001, "beta_recon": 0.5}}


def test_policy_config_json_old_files_load_and_bad_ones_name_file_and_key(tmp_path):
    pytest.importorskip("torch")
    from policies.checkpoint import read_config

    (tmp_path / "config.json").write_text(json.dumps(OLD_DIFFUSION_DOC))
    name, cfg, extra = read_config(tmp_path)
    assert name == "diffusion" and extra == {"task": "push"}
    assert cfg.encoder.rgb_crop == (76, 76) and cfg.scheduler.sigma_max == 0.1
    assert cfg.obs_shapes["image_front"] == (84, 84, 3)
    # every stored value round-trips; keys added since (scheduler.timestep_spacing, gripper_factor, obs_std_floor,
    # obs_features) take their defaults
    resolved = cfg.to_dict()
    added = set(resolved["scheduler"]) - set(OLD_DIFFUSION_DOC["config"]["scheduler"])
    assert added == {"timestep_spacing"}
    resolved["scheduler"] = {k: v for k, v in resolved["scheduler"].items() if k not in added}
    assert resolved.pop("gripper_factor") == 1.0
    # the std floor and derived features added later default to what old checkpoints were trained with
    assert resolved.pop("obs_std_floor") == 1e-6 and resolved.pop("obs_features") == []
    assert resolved == OLD_DIFFUSION_DOC["config"]

    doc = json.loads(json.dumps(OLD_DIFFUSION_DOC))
    del doc["config"]["action_dim"]
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"config\.json: missing required key 'config\.action_dim' "
                                          r"\(DiffusionPolicyConfig\)"):
        read_config(tmp_path)
    doc = json.loads(json.dumps(OLD_DIFFUSION_DOC))
    doc["config"]["scheduler"]["clip_sample"] = "yes"
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"config\.json: key 'config\.scheduler\.clip_sample' = 'yes': "
                                          r"expected bool"):
        read_config(tmp_path)


def test_student_config_json_names_file_and_key(tmp_path):
    pytest.importorskip("torch")
    from policies.checkpoint import load_checkpoint

    doc = {"format": "robotstack.policy", "version": 1, "policy": "consistency",
           "config": {"base": OLD_DIFFUSION_DOC["config"], "consistency": {"method": "ctm", "bins": "80"}}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"config\.json: key 'config\.consistency\.bins' = '80': expected int"):
        load_checkpoint(tmp_path)


def test_stage_configs_use_the_reader(tmp_path):
    pytest.importorskip("torch")
    from robotstack.train.distill import main as distill_main

    out = str(tmp_path / "out")
    with pytest.raises(ConfigError, match=r"key 'train\.batch_size' = 'many': expected int"):
        distill_main(None, ["teacher=ckpt", "train.batch_size=many"], out=out, show_progress=False)
    with pytest.raises(ConfigError, match=r"unknown key 'train\.batchsize'"):
        distill_main(None, ["teacher=ckpt", "train.batchsize=64"], out=out, show_progress=False)
