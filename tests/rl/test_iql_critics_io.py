"""IQL critics round-trip through their on-disk format, and a mismatched file is refused by name."""

import json

import pytest
import torch

from policies.rl.critics import DoubleQ, ValueNet, load_iql_critics, save_iql_critics


def test_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    q, v = DoubleQ(6, 8, (16, 16)), ValueNet(6, (16, 16))
    meta = {"feat_dim": 6, "action_size": 8, "hidden": [16, 16], "layer_norm": False, "gamma": 0.99, "n_c": 4}
    save_iql_critics(tmp_path / "c", q, v, meta)
    q2, v2, meta2 = load_iql_critics(tmp_path / "c")
    f, a = torch.randn(5, 6), torch.randn(5, 8)
    assert torch.equal(q(f, a)[0], q2(f, a)[0]) and torch.equal(v(f), v2(f))
    assert meta2 == meta
    (tmp_path / "c" / "critics.json").write_text(json.dumps(meta | {"feat_dim": 7}))
    with pytest.raises(ValueError, match="v.safetensors|q.safetensors"):
        load_iql_critics(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="critics.json"):
        load_iql_critics(tmp_path / "nothing")
