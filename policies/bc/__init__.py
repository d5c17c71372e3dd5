"""Plain regression behaviour cloning (MLP, MSE on the action chunk): the baseline rung of bench/bench_ladder.py."""
