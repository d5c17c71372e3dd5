"""Chunked critics (issue 12): DQC / QC / NS / OS as one config, ALOE-style current-policy evaluation,
advantage weights and best-of-N. See policies/critics/chunked.py; IQL (RL-100) stays in policies/rl/critics.py,
whose MLP, ValueNet, expectile_loss, td_target and soft_update are reused here."""

from policies.critics.chunked import (
    AloeCritic,
    ChunkCritic,
    ChunkCriticConfig,
    DQCCritics,
    advantage_weights,
    aloe_advantage,
    aloe_target,
    backup_target,
    best_of_n,
    chunk_target,
    critic_td_loss,
    ensemble_scores,
    intervention_weights,
    pessimistic_value,
    regression_loss,
)

__all__ = [
    "AloeCritic",
    "ChunkCritic",
    "ChunkCriticConfig",
    "DQCCritics",
    "advantage_weights",
    "aloe_advantage",
    "aloe_target",
    "backup_target",
    "best_of_n",
    "chunk_target",
    "critic_td_loss",
    "ensemble_scores",
    "intervention_weights",
    "pessimistic_value",
    "regression_loss",
]
