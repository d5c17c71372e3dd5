"""Episode store: diffusion_policy's zarr ReplayBuffer layout with crash-safe appends.

Glossary: N frames in the store (all episodes concatenated), E episodes, T frames in one episode.

On-disk layout (zarr format 3 by default, format 2 on request; both are read, plus read-only `.zarr.zip`):

    data/<key>          (N, ...)  time-first, one array per key, Blosc zstd/bitshuffle clevel 5
    meta/episode_ends   (E,) int64 exclusive end of each episode, uncompressed    <- written last: the commit
    meta/source         (E,) int8  code into attrs["categories"] (== robotstack.core.keys.SOURCES)
    meta/task           (E,) int32 code into attrs["categories"] (append-only list of task strings)
    meta/policy_id      (E,) int32 code into attrs["categories"] (append-only list)
    meta/seed           (E,) int64
    meta/success        (E,) int8  1 / 0
    meta/n_late_ticks   (E,) int64
    every meta code / value is -1 where unknown (episodes of a diffusion_policy store we appended to).
    attrs["action_mode"]  the end-effector action mode of data/action ("delta" | "absolute", core/ee_action.py);
                        absent (stores written before the modes existed, foreign stores) reads as "delta"

Why codes + attributes for strings: zarr 3.1 writes fixed-width unicode (`<U16`) in both formats, but in
format 3 it is an "unstable" data type with no spec (zarr warns that other readers may not open it), and a
fixed width would force a rewrite when a longer task name arrives. Small int codes read the same in every zarr
version and in diffusion_policy's ReplayBuffer (which loads meta/* into numpy).

Commit protocol (a kill -9 / Ctrl-C / full disk at any moment leaves every earlier episode readable):
  1. every file write is atomic: temp file in the same directory, then os.replace (`_AtomicLocalStore`);
  2. an append writes all data/<key> rows and the per-episode meta rows first, meta/episode_ends last;
  3. on open, the committed episode count is the longest prefix of episode_ends that is strictly increasing,
     > 0 and <= every data array's length; rows past the last committed end are ignored on read and cut off
     on the next append-mode open;
  4. SIGINT / SIGTERM are deferred while an append runs: Ctrl-C finishes the commit, then raises;
  5. one appending process at a time: an exclusive lockf lock on <store>/.robotstack.lock.
Power loss is not covered (no fsync): the OS page cache survives a killed process, not a dead machine.
Until an append-mode open cuts off an unfinished append, diffusion_policy's own ReplayBuffer refuses the store
(it asserts every data array is exactly episode_ends[-1] long); ours reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import signal
import threading
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
import zarr.codecs
import zarr.storage
from zarr.core.buffer import Buffer
from zarr.core.sync import sync as zarr_sync

from robotstack.core import keys as K
from robotstack.core.errors import StoreError

TARGET_CHUNK_BYTES = 2_000_000  # diffusion_policy's get_optimal_chunks target (~2 MB per chunk)
# Cap on rows per chunk: every append rewrites the chunk holding the store's tail, so a 2 MB chunk of a scalar
# key (250k rows) would be decompressed + recompressed on each commit. 16k rows keeps that rewrite small while
# images (27.6 kB/frame) still get diffusion_policy's 72-frame chunks.
MAX_CHUNK_ROWS = 16_384
META_CHUNK_ROWS = 4_096  # meta arrays: one small uncompressed chunk per 4096 episodes
EPISODE_ENDS = "episode_ends"
ROOT_ATTR = "robotstack"
ACTION_MODE_ATTR = "action_mode"
DEFAULT_ACTION_MODE = "delta"  # core/ee_action.py DELTA; the store (data layer) keeps the mode as a plain string
LAYOUT_VERSION = 1
_TMP_SUFFIX = ".rstmp"

# meta key -> (dtype, is_categorical)
META_FIELDS: dict[str, tuple[str, bool]] = {
    "source": ("int8", True),
    "task": ("int32", True),
    "policy_id": ("int32", True),
    "seed": ("int64", False),
    "success": ("int8", False),
    "n_late_ticks": ("int64", False),
}


# --------------------------------------------------------------------------------------------------------------
# per-episode metadata
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeMeta:
    """Per-episode metadata. `None` means unknown (only produced when reading stores written by other tools)."""

    source: str | None
    task: str | None
    seed: int | None
    success: bool | None
    policy_id: str | None = ""
    n_late_ticks: int | None = None

    def __post_init__(self) -> None:
        if self.source is not None and self.source not in K.SOURCES:
            raise StoreError(f"EpisodeMeta.source={self.source!r}: expected one of {K.SOURCES}")
        for name in ("task", "policy_id"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise StoreError(f"EpisodeMeta.{name}={v!r}: expected a str")
        if self.seed is not None:
            if isinstance(self.seed, (bool, np.bool_)) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
                raise StoreError(f"EpisodeMeta.seed={self.seed!r}: expected an int >= 0 (or None)")
            object.__setattr__(self, "seed", int(self.seed))
        if self.success is not None:
            if not isinstance(self.success, (bool, np.bool_)):
                raise StoreError(f"EpisodeMeta.success={self.success!r}: expected a bool (or None)")
            object.__setattr__(self, "success", bool(self.success))
        if self.n_late_ticks is not None:
            if not isinstance(self.n_late_ticks, (int, np.integer)) or self.n_late_ticks < 0:
                raise StoreError(f"EpisodeMeta.n_late_ticks={self.n_late_ticks!r}: expected an int >= 0")
            object.__setattr__(self, "n_late_ticks", int(self.n_late_ticks))


UNKNOWN_META = EpisodeMeta(source=None, task=None, seed=None, success=None, policy_id=None, n_late_ticks=None)


# --------------------------------------------------------------------------------------------------------------
# atomic file writes and deferred signals
# --------------------------------------------------------------------------------------------------------------
def _atomic_put(path: Path, value: Buffer, exclusive: bool = False) -> int:
    """Write a whole file so that readers (and a crash) see either the old or the new bytes, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            n = f.write(value.as_buffer_like())
        if exclusive:  # set_if_not_exists: link fails if the target appeared meanwhile
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        return n
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class _AtomicLocalStore(zarr.storage.LocalStore):
    """LocalStore whose every write is temp-file + os.replace in the same directory.

    zarr 3.1.6's LocalStore already does this (`_atomic_write`), but zarr 3.0.x wrote in place; our commit
    protocol depends on it, so we do not rely on the installed version's internals.
    """

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        _atomic_put(self.root / key, value)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(_atomic_put, self.root / key, value, exclusive)


def _remove_temp_files(root: Path) -> int:
    """Delete temp files left by a writer killed mid-write (ours and zarr's own `.partial`)."""
    n = 0
    for p in root.rglob("*"):
        if p.is_file() and (p.name.endswith(_TMP_SUFFIX) or p.name.endswith(".partial")):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


@contextlib.contextmanager
def deferred_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, then deliver them (Ctrl-C finishes a commit, then raises)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread; signals go there anyway
        return
    pending: list[int] = []
    old: dict[int, Any] = {}
    for s in signums:
        old[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        for s in dict.fromkeys(pending):
            h = old[s]
            if callable(h):
                h(s, None)  # e.g. default_int_handler raises KeyboardInterrupt here
            elif h == signal.SIG_DFL:
                os.kill(os.getpid(), s)  # the default action (terminate), now that the commit is on disk


LOCK_NAME = ".robotstack.lock"


def _lock_for_append(path: Path) -> Any:
    """Hold an exclusive POSIX lock on <store>/.robotstack.lock: two processes appending to one store would
    interleave rows. lockf locks belong to the process (a second handle in the same process is not refused)
    and the kernel drops them when the process dies, so a killed writer never leaves the store locked."""
    f = open(path / LOCK_NAME, "a+b")
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise StoreError(f"{path}: another process has this store open for appending ({e})") from e
    return f


# --------------------------------------------------------------------------------------------------------------
# chunking / codecs
# --------------------------------------------------------------------------------------------------------------
def time_chunks(frame_shape: tuple[int, ...], dtype: np.dtype, max_rows: int = MAX_CHUNK_ROWS) -> tuple[int, ...]:
    """Chunk shape for a (N, *frame_shape) array: whole frames, ~2 MB per chunk, split along time only."""
    frame_bytes = max(1, int(np.prod(frame_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(1, min(max_rows, TARGET_CHUNK_BYTES // frame_bytes))
    return (rows, *frame_shape)


def _compressors(zarr_format: int) -> Any:
    if zarr_format == 2:  # diffusion_policy's 'disk' compressor
        return numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    return zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")


def _meta_row(meta: EpisodeMeta, code_of: Any) -> dict[str, int]:
    return {
        "source": code_of("source", meta.source),
        "task": code_of("task", meta.task),
        "policy_id": code_of("policy_id", meta.policy_id),
        "seed": -1 if meta.seed is None else meta.seed,
        "success": -1 if meta.success is None else int(meta.success),
        "n_late_ticks": -1 if meta.n_late_ticks is None else meta.n_late_ticks,
    }


class _RowWriteError(Exception):
    def __init__(self, where: str, error: OSError) -> None:
        super().__init__(where, error)
        self.where, self.error = where, error


def _write_rows(jobs: Sequence[tuple[str, zarr.Array, int, Any, Any]]) -> None:
    """For each (name, array, new_length, selection, value): grow the array, then write the rows.

    All arrays go in one event-loop call so their compression and file writes overlap: replacing an existing
    file costs ~2 ms on ext4 (it flushes on rename-over), and one sync call per array made a commit ~2x slower.
    """

    async def one(name: str, z: zarr.Array, length: int, sel: Any, value: Any) -> None:
        aa = z.async_array  # the same object the sync Array wraps: resize updates its metadata in place
        try:
            await aa.resize((length, *aa.shape[1:]))
            await aa.setitem(sel, value)
        except OSError as err:
            raise _RowWriteError(name, err) from err

    async def run() -> list[Any]:
        # return_exceptions: wait for every write to finish before reporting the first failure
        return await asyncio.gather(*(one(*j) for j in jobs), return_exceptions=True)

    for r in zarr_sync(run()):
        if isinstance(r, BaseException):
            raise r


# --------------------------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------------------------
class EpisodeStore:
    """Episodes of time-first arrays in a zarr group. Use `create`, `open` or `open_or_create`."""

    def __init__(self, path: Path, root: zarr.Group, writable: bool, zip_store: Any = None) -> None:
        self.path = path
        self._root = root
        self.writable = writable
        self._lock_file = _lock_for_append(path) if writable else None
        self._zip = zip_store
        self.zarr_format: int = root.metadata.zarr_format
        self._load_layout()

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, zarr_format: int = 3, overwrite: bool = False) -> EpisodeStore:
        """Create an empty store at `path` (a directory)."""
        p = Path(path)
        if zarr_format not in (2, 3):
            raise StoreError(f"{p}: zarr_format={zarr_format!r}, expected 2 or 3")
        if p.exists() and not overwrite:
            raise StoreError(f"{p}: already exists (open it with mode='a', or pass overwrite=True)")
        if str(p).endswith(".zip"):
            raise StoreError(f"{p}: .zarr.zip stores are read-only; create a directory store")
        try:
            root = zarr.open_group(_AtomicLocalStore(p), mode="w", zarr_format=zarr_format)
            root.attrs[ROOT_ATTR] = {"layout": "diffusion_policy.ReplayBuffer", "version": LAYOUT_VERSION}
            root.create_group("data")
            meta = root.create_group("meta")
            meta.create_array(EPISODE_ENDS, shape=(0,), dtype="int64", chunks=(META_CHUNK_ROWS,),
                              compressors=None, fill_value=0)
        except OSError as e:
            raise StoreError(f"{p}: cannot create episode store: {e}") from e
        return cls(p, root, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> EpisodeStore:
        """Open an existing store: mode 'r' (read-only) or 'a' (append; cuts off rows of an unfinished append)."""
        p = Path(path)
        if mode not in ("r", "a"):
            raise StoreError(f"{p}: mode={mode!r}, expected 'r' or 'a'")
        if not p.exists():
            raise StoreError(f"{p}: no episode store here (path does not exist)")
        zip_store = None
        if p.is_file():
            if not zipfile.is_zipfile(p):
                raise StoreError(f"{p}: not a zarr store (a file that is not a .zarr.zip archive)")
            if mode != "r":
                raise StoreError(f"{p}: .zarr.zip stores are read-only; open with mode='r'")
            zip_store = zarr.storage.ZipStore(p, mode="r")
            store: Any = zip_store
        else:
            if not ((p / "zarr.json").is_file() or (p / ".zgroup").is_file()):
                raise StoreError(f"{p}: not a zarr store (no zarr.json or .zgroup in the directory)")
            store = _AtomicLocalStore(p, read_only=(mode == "r"))
        try:
            root = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except Exception as e:  # zarr raises JSONDecodeError/ValueError/KeyError/... on bad metadata
            raise StoreError(f"{p}: cannot read the zarr group metadata ({type(e).__name__}: {e})") from e
        self = cls(p, root, writable=(mode == "a"), zip_store=zip_store)
        if mode == "a":
            self._truncate_uncommitted()
        return self

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, zarr_format: int = 3) -> EpisodeStore:
        """Append-mode open, creating an empty store first if `path` does not exist (teleop sessions)."""
        if Path(path).exists():
            return cls.open(path, mode="a")
        return cls.create(path, zarr_format=zarr_format)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the append lock
            self._lock_file = None
            self.writable = False

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return (f"EpisodeStore({str(self.path)!r}, format={self.zarr_format}, episodes={self.n_episodes}, "
                f"frames={self.n_frames}, keys={self.keys()})")

    # ---- layout checks -----------------------------------------------------------------------------------
    def _node(self, group: zarr.Group, name: str, what: str) -> Any:
        try:
            return group[name]
        except KeyError:
            return None
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read metadata of {what} ({type(e).__name__}: {e})") from e

    def _load_layout(self) -> None:
        p = self.path
        expected = "expected diffusion_policy ReplayBuffer layout: data/<key> arrays + meta/episode_ends"
        data = self._node(self._root, "data", "data/")
        meta = self._node(self._root, "meta", "meta/")
        if not isinstance(data, zarr.Group) or not isinstance(meta, zarr.Group):
            missing = [n for n, g in (("data", data), ("meta", meta)) if not isinstance(g, zarr.Group)]
            raise StoreError(f"{p}: store of another layout: no group {missing} ({expected})")
        ends_arr = self._node(meta, EPISODE_ENDS, "meta/episode_ends")
        if not isinstance(ends_arr, zarr.Array):
            raise StoreError(f"{p}: store of another layout: no array meta/episode_ends ({expected})")
        if ends_arr.ndim != 1 or ends_arr.dtype.kind not in "iu":
            raise StoreError(f"{p}: meta/episode_ends has shape {ends_arr.shape} dtype {ends_arr.dtype}, "
                             "expected a 1-D integer array")
        self._data_group, self._meta_group, self._ends_arr = data, meta, ends_arr
        self._arrays: dict[str, zarr.Array] = {}
        try:
            names = sorted(data.array_keys())
        except Exception as e:
            raise StoreError(f"{p}: cannot list data/ ({type(e).__name__}: {e})") from e
        for name in names:
            arr = self._node(data, name, f"data/{name}")
            if arr.ndim < 1:
                raise StoreError(f"{p}: data/{name} is 0-d, expected a time-first array (N, ...)")
            # keep all-zero chunks on disk (zarr 3 drops them by default) so verify() can spot lost chunks
            self._arrays[name] = arr.with_config({"write_empty_chunks": True}) if self.writable else arr
        ends = self._read(ends_arr, slice(None), "meta/episode_ends").astype(np.int64)
        data_len = min((a.shape[0] for a in self._arrays.values()), default=np.iinfo(np.int64).max)
        prev = np.concatenate([[0], ends[:-1]])
        ok = (ends > prev) & (ends <= data_len)
        n = len(ends) if ok.all() else int(np.argmin(ok))
        self._ends = ends[:n].copy()
        # entries past the valid prefix: 1 after a crash mid-commit; more means the store was damaged otherwise
        self.n_ignored_ends = len(ends) - n
        self._load_meta_arrays()

    def _load_meta_arrays(self) -> None:
        found = {k: self._node(self._meta_group, k, f"meta/{k}") for k in META_FIELDS}
        present = [k for k, a in found.items() if isinstance(a, zarr.Array)]
        self._meta: dict[str, zarr.Array] = {}
        if not present:
            return  # a store written by diffusion_policy (or another tool): no per-episode metadata
        missing = [k for k in META_FIELDS if k not in present]
        if missing:
            raise StoreError(f"{self.path}: corrupt metadata: meta/ has {present} but not {missing}")
        for k in present:
            a = found[k]
            if a.ndim != 1 or a.shape[0] < self.n_episodes:
                raise StoreError(f"{self.path}: corrupt metadata: meta/{k} has shape {a.shape}, expected at least "
                                 f"({self.n_episodes},) rows (one per committed episode)")
            self._meta[k] = a

    def _truncate_uncommitted(self) -> None:
        """Cut off rows of an append that never committed, so the next append starts clean."""
        n, e = self.n_frames, self.n_episodes
        try:
            with deferred_signals():
                if isinstance(self._root.store, zarr.storage.LocalStore):
                    _remove_temp_files(self.path)
                for name, arr in self._arrays.items():
                    if arr.shape[0] > n:
                        arr.resize((n, *arr.shape[1:]))
                for arr in self._meta.values():
                    if arr.shape[0] > e:
                        arr.resize((e,))
                if self._ends_arr.shape[0] > e:
                    # zero the tail first: a later grow would otherwise expose stale ends left inside the chunk
                    self._ends_arr[e:] = 0
                    self._ends_arr.resize((e,))
        except OSError as err:
            raise StoreError(f"{self.path}: cannot cut off an unfinished append: {err}") from err

    def _read(self, arr: zarr.Array, sl: slice, what: str) -> np.ndarray:
        try:
            return np.asarray(arr[sl])
        except Exception as e:
            raise StoreError(f"{self.path}: cannot read {what} rows {sl.start}:{sl.stop} "
                             f"({type(e).__name__}: {e}); corrupt or truncated chunk?") from e

    # ---- read API ----------------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_frames(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive ends of the committed episodes (a copy)."""
        return self._ends.copy()

    @property
    def has_episode_meta(self) -> bool:
        return bool(self._meta)

    def keys(self) -> list[str]:
        return sorted(self._arrays)

    def key_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """key -> (per-frame shape, dtype)."""
        return {k: (tuple(a.shape[1:]), np.dtype(a.dtype)) for k, a in sorted(self._arrays.items())}

    def array(self, key: str) -> zarr.Array:
        """The raw zarr array of data/<key> (may hold uncommitted rows past n_frames)."""
        self._check_keys([key])
        return self._arrays[key]

    def _check_keys(self, keys: Sequence[str]) -> None:
        unknown = [k for k in keys if k not in self._arrays]
        if unknown:
            raise StoreError(f"{self.path}: unknown key(s) {unknown}; the store has {self.keys()}")

    def episode_slice(self, i: int) -> slice:
        if not -self.n_episodes <= i < self.n_episodes:
            raise StoreError(f"{self.path}: episode index {i} out of range (store has {self.n_episodes} episodes)")
        i %= self.n_episodes
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def episode(self, i: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Frames of episode i: key -> (T, ...)."""
        keys = self.keys() if keys is None else list(keys)
        self._check_keys(keys)
        sl = self.episode_slice(i)
        return {k: self._read(self._arrays[k], sl, f"data/{k}") for k in keys}

    @property
    def action_mode(self) -> str:
        """The action mode data/action was recorded in (root attrs; absent = "delta")."""
        return str(self._root.attrs.get(ACTION_MODE_ATTR, DEFAULT_ACTION_MODE))

    def set_action_mode(self, mode: str) -> None:
        """Record the action mode of the episodes about to be appended; refused (naming both) when the store
        already holds episodes of the other mode: one store, one action meaning."""
        if not self.writable:
            raise StoreError(f"{self.path}: opened read-only; cannot set attrs.{ACTION_MODE_ATTR}")
        have = self.action_mode
        if mode != have and self.n_episodes > 0:
            raise StoreError(f"{self.path}: holds {self.n_episodes} episode(s) with action_mode {have!r}; refusing "
                             f"to append action_mode {mode!r} episodes (record them into another store)")
        if self._root.attrs.get(ACTION_MODE_ATTR) != mode:
            self._root.attrs[ACTION_MODE_ATTR] = mode

    def load(self, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """RAM copy of the committed frames: key -> (N, ...). Load before sampling: random zarr reads are slow."""
        keys = self.keys() if keys is None else list(keys)
        self._check_keys(keys)
        sl = slice(0, self.n_frames)
        return {k: self._read(self._arrays[k], sl, f"data/{k}") for k in keys}

    def meta_arrays(self) -> dict[str, np.ndarray]:
        """Raw per-episode meta columns, key -> (E,) (codes for strings; -1 = unknown). Empty for foreign stores."""
        sl = slice(0, self.n_episodes)
        return {k: self._read(a, sl, f"meta/{k}") for k, a in self._meta.items()}

    def categories(self, key: str) -> list[str]:
        """String table of a categorical meta column (source, task, policy_id)."""
        if key not in self._meta:
            return []
        return list(self._meta[key].attrs.get("categories", []))

    def episode_metas(self) -> list[EpisodeMeta]:
        if not self._meta:
            return [UNKNOWN_META] * self.n_episodes
        cols = self.meta_arrays()
        cats = {k: self.categories(k) for k, (_, is_cat) in META_FIELDS.items() if is_cat}

        def decode(key: str, code: int) -> str | None:
            if code < 0:
                return None
            if code >= len(cats[key]):
                raise StoreError(f"{self.path}: corrupt metadata: meta/{key} code {code} but only "
                                 f"{len(cats[key])} categories in its attributes")
            return cats[key][code]

        out = []
        for i in range(self.n_episodes):
            seed, succ, late = (int(cols[k][i]) for k in ("seed", "success", "n_late_ticks"))
            out.append(EpisodeMeta(
                source=decode("source", int(cols["source"][i])), task=decode("task", int(cols["task"][i])),
                seed=None if seed < 0 else seed, success=None if succ < 0 else bool(succ),
                policy_id=decode("policy_id", int(cols["policy_id"][i])),
                n_late_ticks=None if late < 0 else late))
        return out

    def episode_meta(self, i: int) -> EpisodeMeta:
        self.episode_slice(i)  # range check
        return self.episode_metas()[i]

    def verify(self) -> list[str]:
        """Check that every chunk the committed frames need exists on disk; returns a list of problems."""
        problems = []
        for k, a in sorted(self._arrays.items()):
            need = math.ceil(self.n_frames / a.chunks[0]) if self.n_frames else 0
            try:
                have = a.nchunks_initialized
            except Exception as e:
                problems.append(f"data/{k}: cannot list chunks ({e})")
                continue
            if have < need:
                problems.append(f"data/{k}: {need - have} of {need} chunks missing (zeros would be read)")
        return problems

    # ---- append ------------------------------------------------------------------------------------------
    def _validate_frames(self, frames: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(frames, Mapping) or not frames:
            raise StoreError(f"{self.path}: append_episode needs a non-empty dict key -> (T, ...) array")
        arrs = {}
        for k, v in frames.items():
            if not isinstance(k, str) or not k or "/" in k:
                raise StoreError(f"{self.path}: bad key {k!r}: expected a non-empty str without '/'")
            a = np.asarray(v)
            if a.ndim < 1:
                raise StoreError(f"{self.path}: key {k!r} has shape {a.shape}, expected time-first (T, ...)")
            if a.dtype.kind not in "biuf":
                raise StoreError(f"{self.path}: key {k!r} has dtype {a.dtype}, expected bool/int/uint/float")
            arrs[k] = a
        lengths = {k: a.shape[0] for k, a in arrs.items()}
        if len(set(lengths.values())) != 1:
            raise StoreError(f"{self.path}: arrays of one episode have mismatched lengths {lengths}; "
                             "expected the same number of frames T for every key")
        t = next(iter(lengths.values()))
        if t == 0:
            raise StoreError(f"{self.path}: empty episode (T=0); expected at least one frame")
        if self.n_episodes > 0:  # an empty store takes the schema of its first episode
            missing = sorted(set(self._arrays) - set(arrs))
            extra = sorted(set(arrs) - set(self._arrays))
            if missing or extra:
                raise StoreError(f"{self.path}: episode keys do not match the store: missing {missing}, "
                                 f"new {extra}; the store has {self.keys()}")
            for k, a in arrs.items():
                z = self._arrays[k]
                if a.dtype != z.dtype or a.shape[1:] != z.shape[1:]:
                    raise StoreError(f"{self.path}: key {k!r} is {a.dtype} (T, {', '.join(map(str, a.shape[1:]))}) "
                                     f"but the store holds {z.dtype} (N, {', '.join(map(str, z.shape[1:]))})")
        return arrs, t

    @staticmethod
    def _schema_of(arrs: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {k: (tuple(a.shape[1:]), np.dtype(a.dtype)) for k, a in sorted(arrs.items())}

    def _create_data_arrays(self, arrs: dict[str, np.ndarray]) -> None:
        # a first append that never committed may have fixed another schema: with 0 episodes, start over
        for k in list(self._arrays):
            del self._data_group[k]
            del self._arrays[k]
        for k, a in arrs.items():
            self._arrays[k] = self._data_group.create_array(
                k, shape=(0, *a.shape[1:]), dtype=a.dtype, chunks=time_chunks(a.shape[1:], a.dtype),
                compressors=_compressors(self.zarr_format), fill_value=0, config={"write_empty_chunks": True})

    def _ensure_meta_arrays(self) -> None:
        if self._meta:
            return
        e = self.n_episodes  # a foreign store gains meta columns: its existing episodes read as unknown
        for k, (dtype, is_cat) in META_FIELDS.items():
            attrs = {"categories": list(K.SOURCES) if k == "source" else []} if is_cat else {}
            arr = self._meta_group.create_array(k, shape=(e,), dtype=dtype, chunks=(META_CHUNK_ROWS,),
                                                compressors=None, fill_value=-1, attributes=attrs, overwrite=True)
            if e:
                arr[:] = -1
            self._meta[k] = arr

    def _code_of(self, key: str, value: str | None) -> int:
        if value is None:
            return -1
        arr = self._meta[key]
        cats = list(arr.attrs.get("categories", []))
        if value not in cats:
            if key == "source":
                raise StoreError(f"{self.path}: source {value!r} not in meta/source categories {cats}")
            arr.update_attributes({"categories": [*cats, value]})  # append-only: old codes stay valid
            cats.append(value)
        return cats.index(value)

    def append_episode(self, frames: Mapping[str, Any], meta: EpisodeMeta) -> int:
        """Append one episode atomically; returns its index. frames: key -> (T, ...) array, same T for all."""
        if not self.writable:
            raise StoreError(f"{self.path}: store opened read-only; open with mode='a' to append")
        if not isinstance(meta, EpisodeMeta):
            raise StoreError(f"{self.path}: meta={meta!r}, expected an EpisodeMeta")
        arrs, t = self._validate_frames(frames)
        start, e = self.n_frames, self.n_episodes
        end = start + t
        where = "data/"
        try:
            with deferred_signals():
                if e == 0 and self._schema_of(arrs) != self.key_specs():
                    where = "data/ (creating arrays)"
                    self._create_data_arrays(arrs)
                # 1. data rows, all keys concurrently (past the committed end: invisible until step 3)
                _write_rows([(f"data/{k}", self._arrays[k], end, slice(start, end), a) for k, a in arrs.items()])
                # 2. per-episode meta rows
                where = "meta/"
                self._ensure_meta_arrays()
                row = _meta_row(meta, self._code_of)
                _write_rows([(f"meta/{k}", self._meta[k], e + 1, e, v) for k, v in row.items()])
                # 3. the commit
                where = "meta/episode_ends"
                self._ends_arr.resize((e + 1,))
                self._ends_arr[e] = end
                # in memory too, before a deferred Ctrl-C is raised at the end of this block
                self._ends = np.append(self._ends, np.int64(end))
        except (OSError, _RowWriteError) as err:
            if isinstance(err, _RowWriteError):
                where, err = err.where, err.error
            raise StoreError(f"{self.path}: append of episode {e} ({t} frames) failed writing {where}: {err}; "
                             f"disk full or file size limit? The {e} stored "
                             "episodes are intact (the partial rows are ignored and cut off on the next "
                             "append-mode open)") from err
        return e


def load_stores(paths: Sequence[str | os.PathLike], keys: Sequence[str], successes_only: bool = False
                ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """Load `keys` of several stores into RAM, concatenated in order (what training and analysis need).

    Returns (arrays {key: (N, ...)}, episode_ends (E,) over the concatenation, {key: (frame shape, dtype)}).
    Every store must hold every key with the same frame shape and dtype, and at least one episode.
    successes_only keeps the episodes whose meta/success is True (filtered imitation of mixed data; an episode
    of unknown outcome is dropped too) and fails when none is left.
    """
    parts, ends, offset, specs = [], [], 0, None
    for path in paths:
        with EpisodeStore.open(path) as store:
            if store.n_episodes == 0:
                raise StoreError(f"{path}: the store has no episodes")
            store._check_keys(keys)
            these = {k: v for k, v in store.key_specs().items() if k in keys}
            if specs is not None and these != specs:
                raise StoreError(f"{path}: key shapes/dtypes {these} differ from {paths[0]}'s {specs}")
            specs = these
            frames, store_ends = store.load(keys), store.episode_ends
            if successes_only:
                keep = [i for i, m in enumerate(store.episode_metas()) if m.success is True]
                if not keep:
                    continue
                starts = np.concatenate([[0], store_ends[:-1]])
                frames = {k: np.concatenate([v[starts[i]:store_ends[i]] for i in keep]) for k, v in frames.items()}
                store_ends = np.cumsum([store_ends[i] - starts[i] for i in keep])
            parts.append(frames)
            ends.append(store_ends + offset)
            offset += int(store_ends[-1])
    if not parts:
        raise StoreError("no episode store given" if not successes_only
                         else f"no successful episode in {[str(p) for p in paths]}")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}, np.concatenate(ends), specs


def stores_action_mode(paths: Sequence[str | os.PathLike]) -> str:
    """The one action mode of several stores; stores of different modes are refused, naming each."""
    modes = {}
    for path in paths:
        with EpisodeStore.open(path) as store:
            modes[str(path)] = store.action_mode
    if len(set(modes.values())) > 1:
        raise StoreError(f"stores of different action modes cannot be trained together: {modes}")
    if not modes:
        raise StoreError("no episode store given")
    return next(iter(modes.values()))
