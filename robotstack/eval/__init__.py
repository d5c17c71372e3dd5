"""Evaluation: policy rollouts in sim (rollout.py), rollouts recorded into a store (collect.py; on an arm server:
arm_collect.py), success statistics (metrics.py), rollout videos (video.py) and learning-curve plots (plots.py).
Imports core, data, policies, sim and the runtime (artifacts run through its loader and controller)."""
