from dataclasses import dataclass, field

import pytest

from robotstack.core.config import load_config, save_config, from_dict, to_dict
from robotstack.core.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    task: str = "push"
    steps: int = 100
    optim: Optim = field(default_factory=Optim)
    cameras: tuple[str, ...] = ()
    note: str | None = None


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: reach\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, path, ["steps=5", "optim.betas=[0.5, 0.6]", "cameras=[front, wrist]"])
    assert cfg.task == "reach" and cfg.steps == 5 and cfg.optim.lr == 0.01
    assert cfg.optim.betas == (0.5, 0.6) and cfg.cameras == ("front", "wrist")
    save_config(cfg, tmp_path / "resolved.json")
    import json
    assert from_dict(Run, json.loads((tmp_path / "resolved.json").read_text())) == cfg


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*optim.*unknown key\(s\) \['lrr'\]"):
        load_config(Run, path)


def test_unknown_override_and_bad_type():
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Run, None, ["optim.momentum=0.9"])
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load_config(Run, None, ["steps=fast"])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(Run, None, ["steps"])


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, "/nonexistent/x.yaml")


def test_round_trip_dict():
    cfg = Run(cameras=("a",))
    assert from_dict(Run, to_dict(cfg)) == cfg


def test_exponent_floats_without_a_dot(tmp_path):
    # YAML 1.1 would read these as strings; our JSON dumps write them this way (1e-06)
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-06\n")
    assert load_config(Run, path).optim.lr == 1e-6
    assert load_config(Run, None, ["optim.lr=3e-4"]).optim.lr == 3e-4
    assert load_config(Run, None, ["task=1e3x"]).task == "1e3x"
