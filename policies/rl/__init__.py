"""RL-100 numeric building blocks (rl100.md §4-§5): PPO over the denoising MDP and IQL critics.

Pure functions over a DiffusionPolicy's per-step Gaussian API; the stage loops (offline-rl, online-rl) live in
robotstack/train and only call these.
"""
