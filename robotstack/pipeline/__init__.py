"""`robotstack pipeline`: RL-100's whole recipe as one resumable command (rl100.md §1, Alg. 1).

    demos -> il_0 -> [offline_m -> collect_m -> merge_m -> il_{m+1}] x rounds -> online -> distill
    -> [critic (-> critic_value for aloe)] -> export -> evaluate       (critic: critic.kind != none, issue 12)

config.py  the pipeline YAML (strict), its stage configs checked before any work
stages.py  the plan (stage names, run dirs, what each stage reads) and how each stage runs / resumes
runner.py  runs the plan: skips finished stages, resumes interrupted ones, stops on Ctrl-C
report.py  PIPELINE_DIR/pipeline.json, report.md and plots/*.png from the stages' run dirs
"""
