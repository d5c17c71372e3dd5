"""Key names shared by every layer: env observations, episode-store arrays and wire messages.

One place for the names keeps sim/, hardware/, the episode store and the exporter in agreement.

Glossary (shapes, time-first): N frames in a store, E episodes, Dq arm joints (7 for the Panda),
Da action dim, H/W image height/width.
"""

# --- observation keys (env obs dict, store data/<key>, robot-state message fields) -----------------
JOINT_POS = "robot_joint_pos"  # (Dq,) float32 rad
JOINT_VEL = "robot_joint_vel"  # (Dq,) float32 rad/s
GRIPPER = "robot_gripper"  # (1,) float32 finger opening in metres (0 = closed)
EEF_POS = "robot_eef_pos"  # (3,) float32 end-effector (TCP) position, world frame, metres
EEF_QUAT = "robot_eef_quat"  # (4,) float32 end-effector orientation, (w, x, y, z)
OBJECT_STATE = "object_state"  # (Do,) float32 task objects: per object pos(3) + quat(4) (wxyz)
GOAL = "goal"  # (Dg,) float32 task goal (target position / pose)
IMAGE_PREFIX = "image_"  # image_<camera>: (H, W, 3) uint8 RGB

STATE_KEYS = (JOINT_POS, JOINT_VEL, GRIPPER, EEF_POS, EEF_QUAT, OBJECT_STATE, GOAL)

# --- per-step keys written by the recorder ----------------------------------------------------------
ACTION = "action"  # (Da,) float32 in [-1, 1], env action convention
REWARD = "reward"  # () float32
TERMINATED = "terminated"  # () bool
TRUNCATED = "truncated"  # () bool
INTERVENTION = "intervention"  # () bool: a human overrode the policy on this step
TIMESTAMP = "timestamp"  # () float64 nominal grid time from episode start (diffusion_policy's key)
CAPTURE_TIME = "capture_time"  # () float64 measured monotonic time from episode start
LATE_TICK = "late_tick"  # () bool: capture_time lagged its grid slot by more than the tolerance

STEP_KEYS = (ACTION, REWARD, TERMINATED, TRUNCATED, INTERVENTION, TIMESTAMP, CAPTURE_TIME, LATE_TICK)

# --- per-episode metadata (store meta/<key>, one row per episode) ----------------------------------
SOURCES = ("scripted", "human", "policy", "intervention")
# what a scripted recording stores as each frame's action: the executed (noisy) one, or the clean expert's (DART)
RECORD_LABELS = ("executed", "clean")


def image_key(camera: str) -> str:
    return IMAGE_PREFIX + camera


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGE_PREFIX)
