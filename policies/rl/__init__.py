"""RL-100 numeric building blocks (shared/specs/rl100.md §4-§5): PPO over the denoising MDP and IQL critics.

Pure functions over a DiffusionPolicy's per-step Gaussian API (+ the learned transition ensemble that AM-Q rolls
out); the stage loops (offline-rl, online-rl) live in
robotstack/train (with robotstack/train/rl_math.py: GAE, the OPE gate, AM-Q) and only call these. The online
stage (robotstack/train/online_rl.py, rollouts.py) samples with sample_chain, updates with ppo_update and
clipped_value_loss, and warm-starts its V with load_iql_critics + warm_start_value.

Glossary: B batch, To obs history, T horizon, Ta executed actions, Da action dim, K denoising steps,
n_c chunk length, Dc encoder-feature width.

denoise_ppo
    rl100_scheduler(sigma_max=0.8)            -> SchedulerConfig (DDIM 91..1, eta 1, sigma in [0.01, sigma_max])
    sigma_table(schedule, K, eta, smin, smax) -> SigmaTable(timesteps, prev, sigma (K,), sigma_clipped (K,))
    executed_mask(T, Da, start, Ta) / policy_executed_mask(policy) -> (T, Da) bool
    deterministic_cond(policy, obs)           -> (B, Dc) VIB-mean features (with grad)
    sample_chain(policy, obs | cond=, K, eta) -> DenoisingChain(chain (B,K+1,T,Da), log_probs (B,K), ..., action)
    chain_step_log_prob(..., k) / chain_log_probs(policy, cond, chain, ts, tps, mask) -> (B,) / (B, K)
    normalize_advantage(adv (B,)); broadcast_advantage(adv (B,), K, gamma_denoise=None) -> (B, K)
    clipped_surrogate(new (B,K), old (B,K), adv (B,K), eps) -> Surrogate(loss, ratio, clip_frac, approx_kl)
    ppo_update(policy, opt, chain, adv (B,), DenoisePPOConfig) -> stats
features (RGB through the RL stages)
    block_rows(policy_config) -> rows per encoder pass (bounded by image pixels); encode_blocks(policy, obs) -> (B, Dc)
transition (AM-Q's model, rl100.md §4.3)
    EnsembleConfig; fit_ensemble(feat (N,Dc), action (N,Ta*Da), next_feat (N,Dc), cfg, gen) -> (TransitionEnsemble,
    FitReport); TransitionEnsemble.sample(feat, action, gen) -> next feat (one random elite per row); save / load
critics
    DoubleQ(Dc, Ta*Da), ValueNet(Dc), expectile_loss, chunk_reward_sum, td_target, iql_value_loss, iql_q_loss,
    iql_advantage, soft_update, warm_start_value, clipped_value_loss

Choices where the spec is silent (rl100.md §13), each commented where it is made:
- PPO clip eps default 0.2 (code online); the offline stage passes 0.25 (code offline) and owns any decay.
- One optimiser step per denoising step (official code) by default; "batched" (sum over K, one step) by flag.
- Advantage broadcast unchanged over K (RL-100); DPPO's gamma_denoise^(K-1-k) only when a value is given.
- sigma_min 0.01 (paper) over the code's 0.0067; sigma_max is the caller's (0.8 single / 0.1 chunk).
- Critics see the executed action window (Ta*Da) and the frozen encoder features; hidden (512, 512), Mish.
"""
