"""Panda tasks: each module defines one small Task object of hooks for sim.base_env.PandaEnv."""
