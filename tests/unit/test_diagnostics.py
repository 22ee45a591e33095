"""What a hung service tells: its threads' stacks on SIGUSR1, and kafka-python's group warnings in its log."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: the signal handler and the logging configuration are the whole process's.
_STACKS = """
import os, signal, threading
from shared.stack_dumps import STACK_DUMP_SIGNAL, enable_stack_dumps

def waits_here(event):
    event.wait()

event = threading.Event()
threading.Thread(target=waits_here, args=(event,), name="worker").start()
enable_stack_dumps()
os.kill(os.getpid(), STACK_DUMP_SIGNAL)
event.set()
print("still running")
"""

_KAFKA_LOGS = """
import logging
from shared.log import configure_logging

configure_logging("INFO", "json", service="test")
logging.getLogger("kafka.coordinator").warning("Heartbeat session expired, marking coordinator dead")
logging.getLogger("kafka.consumer.fetcher").warning("a fetch warning")
logging.getLogger("kafka.coordinator").info("(Re-)joining group")
logging.getLogger("kafka.net.selector").warning("Task ran for 0.119s")
"""


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_sigusr1_writes_every_threads_stack_and_the_process_goes_on():
    done = _run(_STACKS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert "most recent call first" in done.stderr
    assert "in waits_here" in done.stderr  # the other thread's stack too, where it waits


def test_the_kafka_clients_group_warnings_reach_the_log_and_its_network_noise_does_not():
    done = _run(_KAFKA_LOGS)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(line["logger"], line["event"]) for line in lines] == [
        ("kafka.coordinator", "Heartbeat session expired, marking coordinator dead"),
        ("kafka.consumer.fetcher", "a fetch warning"),
    ]
