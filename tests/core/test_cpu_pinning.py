"""CPU pinning for the arm server and the controller (`serve-arm --cpus`, `deploy --cpus`)."""

import os
import subprocess
import sys

import pytest

from robotstack.core.timing import parse_cpus


def test_parse_cpus():
    assert parse_cpus("0") == {0}
    assert parse_cpus("0-2,5") == {0, 1, 2, 5}
    for bad in ("", "a", "3-1", "-1", "1,,2"):
        with pytest.raises(ValueError, match="--cpus"):
            parse_cpus(bad)


def test_pin_cpus_pins_the_process_and_threads_started_after():
    cpu = min(os.sched_getaffinity(0))
    code = ("import os, threading; from robotstack.core.timing import pin_cpus; pin_cpus(%r); "
            "seen = []; t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0))); t.start(); "
            "t.join(); print(sorted(os.sched_getaffinity(0)), sorted(seen[0]))" % str(cpu))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("]")
    assert out[0].strip() == f"[{cpu}" and out[1].strip() == f"[{cpu}"


def test_serve_arm_refuses_cpus_it_cannot_use():
    r = subprocess.run([sys.executable, "-m", "robotstack.cli", "serve-arm", "--driver", "pybullet", "--cpus",
                        "4096", "--duration", "0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--cpus '4096'" in r.stderr and "not available" in r.stderr
