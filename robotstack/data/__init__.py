"""Episode store (diffusion_policy zarr ReplayBuffer layout), recorder, window sampler, merge and info.

The torch Dataset lives in robotstack.data.dataset and is not imported here, so that importing
robotstack.data never pulls in torch.
"""

from robotstack.data.info import format_info, store_info
from robotstack.data.merge import merge_stores
from robotstack.data.recorder import EpisodeRecorder
from robotstack.data.sampler import SequenceSampler, split_episodes, window_starts
from robotstack.data.store import EpisodeMeta, EpisodeStore, time_chunks

__all__ = [
    "EpisodeMeta",
    "EpisodeRecorder",
    "EpisodeStore",
    "SequenceSampler",
    "format_info",
    "merge_stores",
    "split_episodes",
    "store_info",
    "time_chunks",
    "window_starts",
]
