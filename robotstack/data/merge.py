"""Merge episode stores: every episode of A, then of B, ... into a new store C (metadata carried over)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from robotstack.core.errors import StoreError
from robotstack.data.store import EpisodeStore


def merge_stores(sources: Sequence[str | os.PathLike], dest: str | os.PathLike, zarr_format: int = 3,
                 overwrite: bool = False, keys: Sequence[str] | None = None) -> EpisodeStore:
    """Write the episodes of `sources` (in order) into a new store at `dest`; returns it (append mode).

    Every source must have the same data keys with the same per-frame shape and dtype; with `keys`, only those
    keys are merged (every source must have them; other keys are left out: an arm recording's telemetry beside a
    sim store). Episodes from stores without robotstack metadata (diffusion_policy's own) get unknown (-1)
    metadata rows.
    """
    if len(sources) < 1:
        raise StoreError("merge_stores: no source stores given")
    dest_p = Path(dest).resolve()
    if any(Path(s).resolve() == dest_p for s in sources):
        raise StoreError(f"merge_stores: destination {dest} is also a source")
    stores = [EpisodeStore.open(s, mode="r") for s in sources]
    try:
        ref = _selected(stores[0], keys)
        for st in stores[1:]:
            specs = _selected(st, keys)
            for k in sorted(set(ref) | set(specs)):
                if k not in specs:
                    raise StoreError(f"merge_stores: key {k!r} of {stores[0].path} is missing in {st.path}")
                if k not in ref:
                    raise StoreError(f"merge_stores: key {k!r} of {st.path} is missing in {stores[0].path}")
                if specs[k] != ref[k]:
                    raise StoreError(f"merge_stores: key {k!r} is {specs[k][1]} {specs[k][0]} per frame in "
                                     f"{st.path} but {ref[k][1]} {ref[k][0]} in {stores[0].path}")
        modes = {str(st.path): st.action_mode for st in stores}
        if len(set(modes.values())) > 1:
            raise StoreError(f"merge_stores: sources of different action modes cannot be merged: {modes}")
        out = EpisodeStore.create(dest, zarr_format=zarr_format, overwrite=overwrite)
        out.set_action_mode(stores[0].action_mode)
        for st in stores:
            metas = st.episode_metas()
            for i in range(st.n_episodes):
                out.append_episode(st.episode(i, sorted(ref)), metas[i])
        return out
    finally:
        for st in stores:
            st.close()


def _selected(store: EpisodeStore, keys: Sequence[str] | None) -> dict:
    """store.key_specs(), restricted to `keys` (each must be there)."""
    specs = store.key_specs()
    if keys is None:
        return specs
    missing = sorted(set(keys) - set(specs))
    if missing:
        raise StoreError(f"merge_stores: key(s) {missing} are missing in {store.path}")
    return {k: specs[k] for k in keys}
