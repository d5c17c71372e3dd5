"""Scripted closed-loop experts for the Panda tasks, with a `noise` knob for mixed-quality data.

Every expert reads only the observation dict (state keys) and the env's public action scaling, so it can drive
a recorded or a remote env the same way. `make_panda_expert(env, noise, seed)` wraps the clean expert in
`NoisyExpert`: noise in [0, 1] sets Gaussian action noise (std 0.5 * noise on the motion dims), random pauses
and short random detours; noise = 0 gives the clean expert exactly.

reach, push (`LinePushExpert`), pick_place, stack (`PickPlaceExpert`) and push_t (`PlanarPushExpert`) are memoryless:
each action is a function of the current observation restricted to the policy's obs keys (tests/sim/test_experts.py
replays recorded frames through a fresh expert). push_t's expert scores candidate contacts on the object's outline by
how well the quasi-static motion they would cause (force along the push direction, torque about the centre of mass
through the object's radius of gyration) matches the motion still needed (position error and, for the T, yaw
error), and re-chooses the contact every step, deterministically: the contact being pushed keeps a score bonus, and
near-ties go to the contact nearest the TCP, so the choice is stable frame to frame through the observed TCP, not
through memory. The TCP's place relative to that contact says what to do: push (finger pair flush to the edge,
closed loop on the contact point), descend at the approach point, lift, or travel at a safe height. (The former
planner kept a phase, the chosen contact and a random choice among near-ties in its head; a policy seeing To = 2
frames cannot recover those, and push_t imitation scored 1-3%.)
"""

from __future__ import annotations

import numpy as np

from robotstack.core import ee_action as ee
from robotstack.core import keys
from sim import panda_scene as ps
from sim.base_env import YAW_LIMIT, PandaEnv
from robotstack.core.rotations import quat_yaw, wrap_angle
from sim.tasks.common import CUBE_HALF

Z_SAFE = 0.08  # TCP height for travel over objects (fingertips ~7 cm above the table)


def _move(delta: np.ndarray, max_step: float, gain: float = 0.6) -> np.ndarray:
    """P-control on a position error -> action units (the env integrates actions into its target)."""
    return np.clip(gain * np.asarray(delta) / max_step, -1.0, 1.0)


def _action(env: PandaEnv, xyz, gripper: float, dyaw: float = 0.0) -> np.ndarray:
    a = np.zeros(len(env.action_names))
    a[:3] = xyz
    if env.task.use_yaw:
        a[3] = dyaw
    a[-1] = gripper
    return a


class ReachExpert:
    def __init__(self, env: PandaEnv):
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        delta = obs[keys.GOAL] - obs[keys.EEF_POS]
        return _action(self.env, _move(delta, self.env.max_step_pos), -1.0)


class PickPlaceExpert:
    """Grasp cube `obj` (index into object_state) and put it down where `place_target(obs)` says, then let go.

    Memoryless: every action is a function of the current observation alone (eef position, measured finger
    opening `robot_gripper`, object state, goal), so a policy that sees the same observation can imitate it
    exactly. The "phase" is read off the scene each step instead of being kept in the expert:
      placed (cube resting on its target)      -> open in place, then retreat upwards once the fingers are clear
      held (cube between the closed fingers)   -> lift straight up, carry at a safe height, lower onto the target
      at the grasp pose (fingers around cube)  -> close (the next observation shows the measured opening < cube)
      cube below the hand, hand low            -> descend onto it, fingers open
      otherwise                                -> travel above the cube, fingers open
    (The former timers - close for 6 steps, open for 4 - were invisible to a policy seeing To = 2 frames.) Dropping
    the cube, or a noisy detour knocking it away, puts the scene back into an earlier case: closed loop for free.
    """

    PLACED_XY = 0.01  # cube centre within this of the target (task success tolerance is 0.02)
    CLEAR = 2 * CUBE_HALF + 0.008  # measured opening at which the open fingers no longer touch the cube

    def __init__(self, env: PandaEnv, obj: int = 0, place_on_cube: int | None = None):
        self.env = env
        self.obj = obj
        self.place_on_cube = place_on_cube  # stack: index of the cube to put ours on

    def reset(self) -> None:
        pass

    def _place_target(self, obs) -> np.ndarray:
        if self.place_on_cube is None:
            return np.asarray(obs[keys.GOAL], float)
        b = obs[keys.OBJECT_STATE][7 * self.place_on_cube : 7 * self.place_on_cube + 3]
        return np.array([b[0], b[1], b[2] + 2 * CUBE_HALF])

    def act(self, obs) -> np.ndarray:
        env, step = self.env, self.env.max_step_pos
        tcp = np.asarray(obs[keys.EEF_POS], float)
        cube = np.asarray(obs[keys.OBJECT_STATE][7 * self.obj : 7 * self.obj + 3], float)
        goal = self._place_target(obs)
        opening = float(obs[keys.GRIPPER][0])
        grasp_z = cube[2] + 0.002
        held = np.linalg.norm(cube - tcp) < 0.025 and opening < 2 * CUBE_HALF + 0.004
        goal_xy = float(np.linalg.norm(cube[:2] - goal[:2]))
        carry_z = max(Z_SAFE, goal[2] + 0.06)
        offset = np.r_[tcp[:2] - cube[:2], 0.0]  # the cube hangs a little off the TCP: aim the cube, not the hand

        if goal_xy < self.PLACED_XY and cube[2] < goal[2] + 0.006:  # placed: let go, then retreat
            if opening < self.CLEAR and np.linalg.norm(cube - tcp) < 0.03:
                return _action(env, np.zeros(3), -1.0)
            return _action(env, _move(np.array([0, 0, Z_SAFE + 0.04 - tcp[2]]), step), -1.0)
        if held:
            if goal_xy < 0.005 or (goal_xy < 0.012 and tcp[2] < carry_z - 0.01):  # over the target: lower
                dest = np.array([goal[0], goal[1], goal[2] + 0.004]) + offset
                return _action(env, _move(dest - tcp, step, gain=0.5), 1.0)
            if tcp[2] < carry_z - 0.01:  # lift straight up before travelling
                return _action(env, _move(np.array([tcp[0], tcp[1], carry_z]) - tcp, step), 1.0)
            dest = np.array([goal[0], goal[1], carry_z]) + offset  # carry
            return _action(env, _move(dest - tcp, step), 1.0)
        xy = float(np.linalg.norm(tcp[:2] - cube[:2]))
        if xy < 0.006 and abs(tcp[2] - grasp_z) < 0.005:  # fingers around the cube: close
            return _action(env, np.zeros(3), 1.0)
        if xy < 0.006 or (xy < 0.015 and tcp[2] < Z_SAFE - 0.005):  # descend (keeps centring on the cube)
            return _action(env, _move(np.array([cube[0], cube[1], grasp_z]) - tcp, step), -1.0)
        dest = np.array([cube[0], cube[1], max(Z_SAFE, tcp[2]) if xy > 0.02 else Z_SAFE])  # travel above the cube
        return _action(env, _move(dest - tcp, step), -1.0)


# --- planar pushing ------------------------------------------------------------------------------------
PUSHER_HALF_T = 0.026  # closed finger pair: half length along the hand y axis
PUSHER_HALF_N = 0.0105  # half thickness along the hand x axis
Z_PUSH = 0.018  # TCP height while pushing (fingertips ~9 mm above the table)
APPROACH_GAP = 0.02  # start a push this far from the edge


def _rects_from_polys(polys) -> list[tuple[float, float, float, float]]:
    return [(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()) for p in polys]


def _inside(pt, rects, margin: float = 0.0) -> bool:
    return any(x0 - margin < pt[0] < x1 + margin and y0 - margin < pt[1] < y1 + margin
               for x0, y0, x1, y1 in rects)


def _candidates(rects, spacing: float = 0.01) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(point, outward normal, tangent) on the union outline, in the object frame, where the pusher fits."""
    out = []
    for x0, y0, x1, y1 in rects:
        for a, b, n in (
            ((x0, y0), (x1, y0), (0.0, -1.0)),
            ((x1, y0), (x1, y1), (1.0, 0.0)),
            ((x1, y1), (x0, y1), (0.0, 1.0)),
            ((x0, y1), (x0, y0), (-1.0, 0.0)),
        ):
            a, b, n = np.array(a), np.array(b), np.array(n)
            t = np.array([-n[1], n[0]])
            length = np.linalg.norm(b - a)
            k = max(1, int(round((length - 0.01) / spacing)))
            for s in np.linspace(0.005, length - 0.005, k + 1):
                p = a + (b - a) / length * s
                if _inside(p + n * 0.002, rects):
                    continue  # interior seam between the T's two boxes
                ok = True
                for off in (PUSHER_HALF_N + 0.003, PUSHER_HALF_N + APPROACH_GAP):
                    c = p + n * off
                    for u in np.linspace(-1, 1, 7):
                        for v in (-1.0, 0.0, 1.0):
                            q = c + t * u * (PUSHER_HALF_T + 0.003) + n * v * (PUSHER_HALF_N + 0.002)
                            if _inside(q, rects, margin=0.001):
                                ok = False
                if ok:
                    out.append((p, n, t))
    return out


class PlanarPushExpert:
    """push_t: push the object to goal (x, y[, yaw]) with the closed finger pair; memoryless (see module docstring).

    Every action is a function of the current observation alone: the contact is re-chosen each step, and what to do
    is read off where the TCP is relative to that contact (like LinePushExpert). The choice is stable frame to frame
    without a plan because it is hysteretic through the observed TCP: a contact the pusher is engaged with (TCP low,
    in that contact's push corridor) gets a score bonus, and among contacts scoring within TIE_MARGIN of the best the
    one whose corridor is nearest the TCP wins.
    """

    PUSH_ANGLES = (-0.35, 0.0, 0.35)  # push direction relative to the inward normal (inside the friction cone)
    TIE_MARGIN = 0.08  # contacts this close to the best score count as equally good (nearest to the TCP wins)
    STICK = 0.3  # score bonus of the contact being pushed: switch only when another is clearly better
    MIN_SCORE = 0.25  # a push that helps less than this is abandoned (no bonus)
    CORRIDOR = 0.012  # lateral half width of a contact's push corridor (TCP xy within it = engaged)

    def __init__(self, env: PandaEnv, polys, use_yaw_goal: bool, length_scale: float = 0.1):
        self.env = env
        rects = _rects_from_polys(polys)
        self.P, self.N, self.T = (np.array([c[k] for c in _candidates(rects)]) for k in range(3))
        pts = np.concatenate([np.stack(np.meshgrid(np.linspace(x0, x1, 20), np.linspace(y0, y1, 20)), -1)
                              .reshape(-1, 2) for x0, y0, x1, y1 in rects])
        areas = np.repeat([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects], 400)
        self.c2 = float(np.sum(areas * (pts**2).sum(1)) / areas.sum())  # radius of gyration^2
        self.use_yaw_goal = use_yaw_goal
        self.L = length_scale  # metres per radian when comparing rotation with translation

    def reset(self) -> None:
        pass

    def _desired(self, pose, goal) -> np.ndarray:
        e_yaw = wrap_angle(goal[2] - pose[2]) if self.use_yaw_goal else 0.0
        return np.array([goal[0] - pose[0], goal[1] - pose[1], self.L * e_yaw])

    def _scores(self, R, D) -> np.ndarray:
        """Cosine between the object twist each (candidate, angle) push would cause and the desired twist D.

        Quasi-static model: force d at lever r gives twist ~ (d, (r x d) / c2); rotation scaled by L (m/rad).
        R: the object's 2-D rotation. Returns (n_candidates, n_angles).
        """
        r, n, t = self.P @ R.T, self.N @ R.T, self.T @ R.T
        ang = np.asarray(self.PUSH_ANGLES)[None, :, None]
        d = -n[:, None, :] * np.cos(ang) + t[:, None, :] * np.sin(ang)  # (n, a, 2)
        torque = r[:, None, 0] * d[..., 1] - r[:, None, 1] * d[..., 0]
        V = np.concatenate([d, (self.L * torque / self.c2)[..., None]], axis=-1)
        return (V @ D) / (np.linalg.norm(V, axis=-1) * np.linalg.norm(D) + 1e-9)

    def _hand_yaw(self, tw, tcp_yaw: float) -> float:
        """Hand yaw with the finger pair flush to an edge of world tangent tw: the equivalent (the pair is symmetric
        under pi) nearest the current hand yaw, clipped to the yaw limit; flipped by pi only when clipping would
        leave it more than 0.4 rad off (hysteresis through the observed hand yaw, so it does not flip mid-push)."""
        psi = float(np.arctan2(tw[0], -tw[1]))
        want = tcp_yaw + (psi - tcp_yaw + np.pi / 2) % np.pi - np.pi / 2
        lim = YAW_LIMIT - 0.05
        if abs(want) > lim + 0.4:
            want -= np.sign(want) * np.pi
        return float(np.clip(want, -lim, lim))

    def act(self, obs) -> np.ndarray:
        env, step = self.env, self.env.max_step_pos
        tcp = np.asarray(obs[keys.EEF_POS], float)
        o = np.asarray(obs[keys.OBJECT_STATE], float)
        pose = np.array([o[0], o[1], quat_yaw(o[3:7])])
        g = np.asarray(obs[keys.GOAL], float)
        D = self._desired(pose, np.array([g[0], g[1], g[2] if self.use_yaw_goal else 0.0]))
        tcp_yaw = quat_yaw(obs[keys.EEF_QUAT])  # equals the yaw of kinematics.down_rotation

        # every candidate contact in the world, with the pusher's extent along its normal at the current hand yaw
        c, s = np.cos(pose[2]), np.sin(pose[2])
        R = np.array([[c, -s], [s, c]])
        pw, nw, tw = pose[:2] + self.P @ R.T, self.N @ R.T, self.T @ R.T
        hx = np.array([np.cos(tcp_yaw), np.sin(tcp_yaw)])
        ext = np.abs(nw @ hx) * PUSHER_HALF_N + np.abs(nw @ np.array([-hx[1], hx[0]])) * PUSHER_HALF_T
        contact_tcp = pw + nw * ext[:, None]
        approach = contact_tcp + nw * APPROACH_GAP
        rel = tcp[:2] - contact_tcp
        gap, lateral = np.sum(rel * nw, 1), np.sum(rel * tw, 1)
        # distance from the TCP (xy) to each contact's push corridor, the segment contact_tcp -> approach
        dist = np.hypot(lateral, np.maximum(0.0, gap - APPROACH_GAP) + np.maximum(0.0, -gap))

        scores = self._scores(R, D)
        best_ang = scores.argmax(1)
        score = scores.max(1)
        reachable = (approach[:, 0] > 0.28) & (approach[:, 0] < 0.78) & (np.abs(approach[:, 1]) < 0.38)
        score[~reachable] = -np.inf  # approach point outside the workspace
        engaged = (dist < self.CORRIDOR) & (gap > -0.012) & (tcp[2] < Z_PUSH + 0.012) & (score > self.MIN_SCORE)
        eff = score + self.STICK * engaged
        good = np.flatnonzero(eff > eff.max() - self.TIE_MARGIN)
        i = int(good[np.argmin(dist[good])])
        ang = self.PUSH_ANGLES[best_ang[i]]

        dpsi = self._hand_yaw(tw[i], tcp_yaw) - tcp_yaw
        dyaw = float(np.clip(0.8 * dpsi / env.max_step_yaw, -1, 1))
        in_corridor = dist[i] < self.CORRIDOR and -0.012 < gap[i] < APPROACH_GAP + 0.012
        if in_corridor and tcp[2] < Z_PUSH + 0.012:  # push: closed loop on the contact point (it moves with the T)
            d = -nw[i] * np.cos(ang) + tw[i] * np.sin(ang)
            speed = step * float(np.clip(np.linalg.norm(D) / 0.06, 0.25, 0.6))
            v = d * speed - tw[i] * lateral[i] * 0.5
            return _action(env, np.clip(np.array([v[0], v[1], 0.6 * (Z_PUSH - tcp[2])]) / step, -1, 1), 1.0, dyaw)
        if in_corridor or np.linalg.norm(tcp[:2] - approach[i]) < 0.008:  # descend once the hand is turned
            z = Z_PUSH if abs(dpsi) < 0.15 else tcp[2]
            return _action(env, _move(np.array([*approach[i], z]) - tcp, step), 1.0, dyaw)
        if tcp[2] < Z_SAFE - 0.015:  # low but out of position: lift before travelling over the block
            return _action(env, _move(np.array([0.0, 0.0, Z_SAFE + 0.01 - tcp[2]]), step), 1.0, dyaw)
        return _action(env, _move(np.array([*approach[i], Z_SAFE]) - tcp, step), 1.0, dyaw)


class LinePushExpert:
    """push: a memoryless expert — every action is a function of the current observation alone.

    Imitation learns such demos far better than the planar expert's (which keeps a plan, a phase and a random
    contact choice in its head): with To = 2 a policy cannot see a hidden phase. The pusher (closed finger pair,
    flat face turned to the push direction) goes to a point behind the cube on the goal->cube line, descends, and
    pushes along the line with a lateral correction; it lifts and goes around whenever it is not in that corridor
    (e.g. after an overshoot). The hand yaw is the face-on yaw nearest the current one (the pair is symmetric).
    """

    def __init__(self, env: PandaEnv):
        self.env = env

    def reset(self) -> None:
        pass

    def act(self, obs) -> np.ndarray:
        env, step = self.env, self.env.max_step_pos
        tcp = np.asarray(obs[keys.EEF_POS], float)
        o = np.asarray(obs[keys.OBJECT_STATE], float)
        cube, goal = o[:2], np.asarray(obs[keys.GOAL], float)[:2]
        to_goal = goal - cube
        dist = float(np.linalg.norm(to_goal))
        d = to_goal / max(dist, 1e-9)
        t = np.array([-d[1], d[0]])
        yaw = quat_yaw(o[3:7])
        ex, ey = np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])
        contact = CUBE_HALF * (abs(d @ ex) + abs(d @ ey)) + PUSHER_HALF_N  # cube support along -d + pusher
        pre = cube - d * (contact + APPROACH_GAP)

        tcp_yaw = quat_yaw(obs[keys.EEF_QUAT])
        face = np.arctan2(d[1], d[0])  # hand x along d: the flat face meets the cube
        options = [face + k * np.pi for k in (-2, -1, 0, 1, 2) if abs(face + k * np.pi) < YAW_LIMIT - 0.05]
        want = min(options, key=lambda a: abs(a - tcp_yaw)) if options else float(np.clip(face, -1.5, 1.5))
        dpsi = want - tcp_yaw
        dyaw = float(np.clip(0.8 * dpsi / env.max_step_yaw, -1, 1))

        rel = tcp[:2] - cube
        along, lateral = float(rel @ d), float(rel @ t)
        in_corridor = -(contact + APPROACH_GAP + 0.012) < along < -(contact - 0.01) and abs(lateral) < 0.012
        at_pre = float(np.linalg.norm(tcp[:2] - pre)) < 0.01
        if in_corridor and tcp[2] < Z_PUSH + 0.012:  # push
            if dist < 0.006:
                return _action(env, np.zeros(3), 1.0, dyaw)
            speed = step * float(np.clip(dist / 0.06, 0.25, 0.6))
            v = d * speed - t * lateral * 0.5
            return _action(env, np.clip(np.array([v[0], v[1], 0.6 * (Z_PUSH - tcp[2])]) / step, -1, 1), 1.0, dyaw)
        if in_corridor or at_pre:  # descend once the face is turned
            z = Z_PUSH if abs(dpsi) < 0.2 else tcp[2]
            return _action(env, _move(np.array([pre[0], pre[1], z]) - tcp, step), 1.0, dyaw)
        if tcp[2] < Z_SAFE - 0.015:  # low but out of position: lift before travelling over the cube
            return _action(env, _move(np.array([0.0, 0.0, Z_SAFE + 0.01 - tcp[2]]), step), 1.0, dyaw)
        return _action(env, _move(np.array([pre[0], pre[1], Z_SAFE]) - tcp, step), 1.0, dyaw)


class NoisyExpert:
    """Adds suboptimality to a clean expert: Gaussian noise, random pauses and short random detours.

    The clean experts plan in delta units; with an absolute-mode ``action_spec`` the final (noisy) delta intent is
    emitted as the absolute target measured TCP + step (core/ee_action.py absolute_from_delta), so one expert and
    one noise process drive both action modes. After each `act`, `clean_action` is the action the clean expert
    wanted in that state (same units, no noise, pause or detour): record it as the label to get DART demos
    (noisy states, clean labels; record_scripted(labels="clean"))."""

    def __init__(self, expert, n_action: int, noise: float = 0.0, seed: int | None = None,
                 action_spec: ee.EEActionSpec | None = None):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"expert noise={noise!r}: expected a value in [0, 1]")
        self.expert = expert
        self.n_action = n_action
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.absolute = action_spec is not None and action_spec.mode == ee.ABSOLUTE
        self.action_spec = action_spec
        self.reset()

    def reset(self) -> None:
        self.expert.reset()
        self.clean_action: np.ndarray | None = None
        self.pause = 0
        self.detour = 0
        self.detour_dir = np.zeros(self.n_action - 1)

    def act(self, obs) -> np.ndarray:
        a = np.asarray(self.expert.act(obs), dtype=np.float64).copy()
        self.clean_action = self._emit(a.copy(), obs)  # what the clean expert wants here (DART labels)
        if self.noise > 0:
            if self.pause == 0 and self.detour == 0:
                u = self.rng.random()
                if u < 0.03 * self.noise:
                    self.pause = int(self.rng.integers(2, 8))
                elif u < 0.05 * self.noise:
                    self.detour = int(self.rng.integers(2, 6))
                    self.detour_dir = self.rng.normal(size=self.n_action - 1)
                    self.detour_dir[2] = abs(self.detour_dir[2])  # detours never dive into the table
                    self.detour_dir /= np.linalg.norm(self.detour_dir)
            if self.pause > 0:
                self.pause -= 1
                a[:-1] = 0.0
            elif self.detour > 0:
                self.detour -= 1
                a[:-1] = 0.7 * self.detour_dir
            a[:-1] += self.rng.normal(0.0, 0.5 * self.noise, self.n_action - 1)
        return self._emit(a, obs)

    def _emit(self, a: np.ndarray, obs) -> np.ndarray:
        if self.absolute:
            a = ee.absolute_from_delta(self.action_spec, a, obs[keys.EEF_POS], quat_yaw(obs[keys.EEF_QUAT]))
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def make_panda_expert(env: PandaEnv, noise: float = 0.0, seed: int | None = None) -> NoisyExpert:
    name = env.task.name
    if name == "reach":
        clean = ReachExpert(env)
    elif name == "pick_place":
        clean = PickPlaceExpert(env, obj=0)
    elif name == "stack":
        clean = PickPlaceExpert(env, obj=0, place_on_cube=1)
    elif name == "push":
        clean = LinePushExpert(env)
    elif name == "push_t":
        clean = PlanarPushExpert(env, ps.t_block_polygons(), use_yaw_goal=True, length_scale=0.1)
    else:
        raise KeyError(f"no scripted expert for task {name!r}")
    return NoisyExpert(clean, len(env.action_names), noise=noise, seed=seed, action_spec=env.action_spec)
