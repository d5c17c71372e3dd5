"""Evaluation: policy rollouts in sim (rollout.py), success statistics (metrics.py), rollout videos
(video.py) and learning-curve plots (plots.py). Imports only core, data, policies and sim."""
