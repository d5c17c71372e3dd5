"""bench_deploy's pooled rows: an artifact's successes summed over the scene sets it ran on."""

from __future__ import annotations

from bench.bench_deploy import pooled_rows


def row(artifact: str, seed0, pb: float, mj: float, episodes: int = 50, targets: str = "cartesian",
        graphs: dict | None = None) -> dict:
    r = {"artifact": artifact, "task": "push@servo", "targets": targets, "servo": {}, "seed0": seed0,
         "episodes": episodes, "pybullet_success": pb, "mujoco_success": mj}
    return r if graphs is None else r | {"graphs": graphs}


def test_pools_one_row_per_scene_set_of_the_same_artifact():
    results = {
        "a, scenes 1001-1050": row("art/a", 1000, 0.64, 0.94),
        "a, scenes 2001-2050": row("art/a", 2000, 0.52, 0.88),
        "a, scenes 1001-1050 again": row("art/a", 1000, 0.10, 0.10),  # a rerun: the first row of a scene set counts
        "a, joint targets": row("art/a", 2000, 0.0, 0.0, targets="joint"),  # another setup: not pooled with it
        "b, one scene set only": row("art/b", 1000, 0.5, 0.5),
        "c, before seed0 was recorded": row("art/c", None, 0.5, 0.5),
        "c, scenes 2001-2050": row("art/c", 2000, 0.5, 0.5),
    }
    rows = pooled_rows(results)
    assert len(rows) == 1
    label, scenes, n, arm, sim, ratio = rows[0]
    assert label == "a, scenes 1001-1050" and scenes == "1001-1050, 2001-2050" and n == 100
    assert arm.startswith("58% [") and sim.startswith("91% [") and ratio == f"{58 / 91:.2f}"


def test_a_new_export_into_the_same_dir_is_another_artifact():
    """A re-run pipeline exports into the same dir: rows pool only when their graphs' sha256 match."""
    old, new = {"policy": "aa"}, {"policy": "bb", "init": "cc"}
    results = {
        "first run": row("runs/p/export/artifact", 1000, 0.64, 0.94, graphs=old),
        "first run, scenes 2001-2050": row("runs/p/export/artifact", 2000, 0.52, 0.88, graphs=old),
        "second run": row("runs/p/export/artifact", 1000, 0.10, 0.90, graphs=new),
        "second run, scenes 2001-2050": row("runs/p/export/artifact", 2000, 0.30, 0.90, graphs=new),
        "second run, scenes 3001-3050": row("runs/p/export/artifact", 3000, 0.20, 0.90, graphs=new),
    }
    rows = {r[0]: r for r in pooled_rows(results)}
    assert set(rows) == {"first run", "second run"}
    assert rows["first run"][2] == 100 and rows["first run"][3].startswith("58% [")
    assert rows["second run"][1] == "1001-1050, 2001-2050, 3001-3050" and rows["second run"][3].startswith("20% [")
