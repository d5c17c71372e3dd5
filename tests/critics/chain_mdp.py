"""The deterministic 5-state chain of dqc_aloe.md §6, its exact solutions (numpy), its dataset and tabular critics.

States 0..4, 4 absorbing/terminal, start in 0..3. Actions L = -1, R = +1; s' = clip(s + a, 0, 4); reward 1 on
entering 4; gamma = 0.9; h = 2, h_a = 1. Chunks are indexed LL, LR, RL, RR (first action major).

Reference values are computed here by value iteration / operator iteration with a discrete expectile (bisection)
and quantile (sorted CDF), independent of the torch losses under test. A plain module (not a conftest): basenames
must be unique across tests/. Importing it pins torch to one thread (2 shared CI cores).
"""

import itertools

import numpy as np
import torch
from torch import nn

from robotstack.core import keys as K
from robotstack.data.chunks import ChunkSampler

torch.set_num_threads(1)

GAMMA = 0.9
N_STATES = 5
STARTS = range(4)
ACTIONS = (-1.0, 1.0)
CHUNKS = list(itertools.product(ACTIONS, ACTIONS))  # LL, LR, RL, RR
ITERS = 400  # every operator here contracts by <= gamma; 400 sweeps leave < 1e-15


def step(s, a):
    s2 = int(min(max(s + a, 0), 4))
    return s2, float(s2 == 4), s2 == 4


def chunk_outcome(s, chunk):
    """(R, h', done, s_{t+h'}) of executing the chunk open-loop from s."""
    total, k, done = 0.0, 0, False
    for a in chunk:
        s, r, done = step(s, a)
        total += GAMMA**k * r
        k += 1
        if done:
            break
    return total, k, done, s


# ------------------------------------------------------------------------------------------ exact solvers
def expectile(values, tau, weights=None):
    """Discrete tau-expectile: the root of tau E[(x - e)+] = (1 - tau) E[(e - x)+]. The root is linear in e
    between atoms, so try each split (atoms <= split below, the rest above) and keep the consistent one."""
    x = sorted(zip((float(v) for v in values), [1.0] * len(values) if weights is None else map(float, weights)))
    for i in range(len(x)):
        below, above = x[:i + 1], x[i + 1:]
        num = (1 - tau) * sum(w * v for v, w in below) + tau * sum(w * v for v, w in above)
        e = num / ((1 - tau) * sum(w for _, w in below) + tau * sum(w for _, w in above))
        if below[-1][0] - 1e-15 <= e and (not above or e <= above[0][0] + 1e-15):
            return e
    raise AssertionError("no expectile root found")


def quantile(values, tau, weights=None):
    """Discrete tau-quantile: the smallest atom whose CDF reaches tau (the pinball minimiser when unique)."""
    x = np.asarray(values, float)
    w = np.full(len(x), 1 / len(x)) if weights is None else np.asarray(weights, float) / np.sum(weights)
    order = np.argsort(x)
    cdf = np.cumsum(w[order])
    return x[order][np.searchsorted(cdf, tau - 1e-12)]


def optimal():
    """V* (5,), Q* (4, 2), Q*_2 (4, 4) by value iteration."""
    v = np.zeros(N_STATES)
    for _ in range(ITERS):
        q = np.array([[r + GAMMA * (not d) * v[s2] for s2, r, d in (step(s, a) for a in ACTIONS)] for s in STARTS])
        v = np.append(q.max(1), 0.0)
    q2 = np.array([[chunk_q(s, c, v) for c in CHUNKS] for s in STARTS])
    return v, q, q2


def chunk_q(s, chunk, v):
    r, k, d, s2 = chunk_outcome(s, chunk)
    return r + GAMMA**k * (not d) * v[s2]


def dqc_fixed_point(kappa_d, kappa_b=0.9):
    """Iterate the DQC operator (uniform data): Q_h(s,c) = R + g^h' (1-d) V(s'); QP(s,a0) = kappa_d-expectile over
    the two completions; V(s) = kappa_b-quantile over a0 of QP. Returns V (5,), QP (4, 2), Q_h (4, 4)."""
    v = np.zeros(N_STATES)
    for _ in range(ITERS):
        qh = np.array([[chunk_q(s, c, v) for c in CHUNKS] for s in STARTS])
        qp = np.array([[expectile(qh[s, 2 * i:2 * i + 2], kappa_d) for i in range(2)] for s in STARTS])
        v_new = np.append([quantile(qp[s], kappa_b) for s in STARTS], 0.0)
        if np.abs(v_new - v).max() < 1e-15:
            break
        v = v_new
    return v, qp, qh


def ns2_fixed_point():
    """NS-2: Q(s, a0) = mean over a uniform 2nd action of R + g^h' (1-d) max_a Q(s', a)."""
    q = np.zeros((4, 2))
    for _ in range(ITERS):
        v = np.append(q.max(1), 0.0)
        q = np.array([[np.mean([chunk_q(s, (a0, a1), v) for a1 in ACTIONS]) for a0 in ACTIONS] for s in STARTS])
    return q


def policy_eval(p_right=0.7):
    """V^pi (5,) and Q^pi_2 (4, 4) for pi(R) = p_right i.i.d. per step; pi's chunk probabilities (4,)."""
    pa = np.array([1 - p_right, p_right])
    v = np.zeros(N_STATES)
    for _ in range(ITERS):
        v = np.append([sum(pa[i] * (r + GAMMA * (not d) * v[s2]) for i, (s2, r, d) in
                           enumerate(step(s, a) for a in ACTIONS)) for s in STARTS], 0.0)
    q2 = np.array([[chunk_q(s, c, v) for c in CHUNKS] for s in STARTS])
    pc = np.array([pa[int(a0 > 0)] * pa[int(a1 > 0)] for a0, a1 in CHUNKS])
    return v, q2, pc


# ------------------------------------------------------------------------------------------ dataset
def chain_episodes():
    """One recorded episode per (start state, chunk), uniform behaviour: frames (state, action, reward,
    terminated, truncated); an episode that did not terminate gets one more frame (the observation reached, a
    dummy action, truncated=True), as the recorder stores the state at the time limit."""
    cols = {k: [] for k in ("state", K.ACTION, K.REWARD, K.TERMINATED, K.TRUNCATED)}
    ends = []
    for s0 in STARTS:
        for chunk in CHUNKS:
            s, done = s0, False
            for a in chunk:
                s2, r, done = step(s, a)
                for k, val in zip(cols, (s, a, r, done, False)):
                    cols[k].append(val)
                s = s2
                if done:
                    break
            if not done:
                for k, val in zip(cols, (s, 0.0, 0.0, False, True)):
                    cols[k].append(val)
            ends.append(len(cols["state"]))
    data = {k: np.asarray(v, np.float32 if k != K.TERMINATED and k != K.TRUNCATED else bool) for k, v in cols.items()}
    data["state"] = data["state"][:, None]
    data[K.ACTION] = data[K.ACTION][:, None]
    return data, np.asarray(ends)


def chain_batch(h):
    """All 16 (start, chunk) samples as torch tensors: obs one-hot (16, 5), actions (16, h, 1), reward_sum,
    h_eff, done, next_obs one-hot, complete."""
    data, ends = chain_episodes()
    sampler = ChunkSampler(data, ends, h, GAMMA, ["state"])
    b = sampler.batch(np.concatenate([[0], ends[:-1]]))
    return {
        "obs": one_hot(b.obs["state"][:, -1, 0]),
        "actions": torch.as_tensor(b.actions, dtype=torch.float32),
        "reward_sum": torch.as_tensor(b.reward_sum, dtype=torch.float32),
        "h_eff": torch.as_tensor(b.h_eff),
        "done": torch.as_tensor(b.done),
        "next_obs": one_hot(b.next_obs["state"][:, -1, 0]),
        "complete": torch.as_tensor(b.complete),
    }


def one_hot(states):
    return nn.functional.one_hot(torch.as_tensor(np.asarray(states), dtype=torch.long), N_STATES).float()


def state_obs(states):
    return one_hot(np.asarray(states))


def chunk_tensor(chunks):
    """list of action tuples -> (B, L, 1)."""
    return torch.tensor(chunks, dtype=torch.float32)[:, :, None]


# ------------------------------------------------------------------------------------------ tabular critics
class TabularQ(nn.Module):
    """Exact ensemble table Q_i(s, a_{1:L}): obs one-hot (B, 5), actions (B, >= L, 1) in {-1, 1} -> (K, B);
    the same call signature as policies.critics.ChunkCritic.

    terminal_alias: read (3, RL) as (3, RR). The data never hold (3, RL) (the episode terminates after R and the
    sampler pads with the executed R); a network must generalise "actions after a terminal do not count", a table
    cannot, so a test that bootstraps with a policy that plays RL at 3 tells the table explicitly.
    """

    def __init__(self, num_qs=2, chunk_len=1, init=0.0, terminal_alias=False):
        super().__init__()
        self.chunk_len, self.terminal_alias = chunk_len, terminal_alias
        self.table = nn.Parameter(torch.full((num_qs, N_STATES, 2**chunk_len), float(init)))

    def forward(self, obs, actions):
        bits = (actions[:, :self.chunk_len, 0] > 0).long()
        idx = (bits * (2 ** torch.arange(self.chunk_len - 1, -1, -1))).sum(1)  # first action = major bit
        s = obs.argmax(1)
        if self.terminal_alias and self.chunk_len == 2:
            idx = torch.where((s == 3) & (idx == 2), torch.tensor(3), idx)
        return self.table[:, s, idx]


class TabularV(nn.Module):
    def __init__(self, init=0.0):
        super().__init__()
        self.table = nn.Parameter(torch.full((N_STATES,), float(init)))

    def forward(self, obs):
        return self.table[obs.argmax(1)]


def fit(params, loss_fn, steps, lr=0.05, after_step=None):
    """Adam with a linear decay to 0 (pinball / expectile subgradients settle only with a vanishing step)."""
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
