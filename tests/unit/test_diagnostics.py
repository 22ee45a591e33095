"""What a hung service tells: its threads' stacks on SIGUSR1, and kafka-python's group warnings in its log."""

import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from shared.stack_dumps import STACK_DUMP_SIGNAL, thread_stacks

ROOT = Path(__file__).resolve().parents[2]

# In a process of its own: the signal handler and the logging configuration are the whole process's. Its main
# thread waits in a read (in C, the GIL released) while the test sends the signals; a line on stdin ends it.
_STACKS = """
import sys, threading
from shared.log import configure_logging
from shared.stack_dumps import enable_stack_dumps

def waits_here(event):
    event.wait()

configure_logging("WARNING", "json", service="test")  # the stacks are logged whatever the level
enable_stack_dumps()
event = threading.Event()
worker = threading.Thread(target=waits_here, args=(event,), name="worker")
worker.start()
print("ready", flush=True)
sys.stdin.readline()
event.set()
worker.join()
print("still running", flush=True)
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


def _dump(
    lines: queue.Queue[str], number: int, deadline: float, child: subprocess.Popen[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The threads' lines of dump ``number`` by thread name, read from ``lines`` (every one JSON) in time, while
    ``child`` (when given) runs."""
    stacks: list[dict[str, Any]] = []  # counted by line: threads that ended meanwhile may share a name ("")
    while not stacks or len(stacks) < stacks[0]["threads"]:
        try:
            text = lines.get(timeout=0.2)
        except queue.Empty:
            assert child is None or child.poll() is None, f"the process ended (status {child.returncode})"
            assert time.monotonic() < deadline, f"dump {number} not logged in time"
            continue
        line = json.loads(text)  # each line JSON, or this fails
        if line.get("event") == "thread stack":
            assert line["dump"] == number
            stacks.append(line)
    return {line["thread"]: line for line in stacks}


def _lines_of(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@contextlib.contextmanager
def _child(script: str) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``script`` running in a process of its own, with the lines of its stderr (its log) as they come."""
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stderr is not None
        reader = threading.Thread(target=_lines_of, args=(child.stderr, lines), daemon=True)
        reader.start()
        try:
            yield child, lines
        finally:
            child.kill()
        reader.join(timeout=30)


def _end(child: subprocess.Popen[str]) -> str:
    """Ask ``child`` to end (a line on its stdin); what it printed since, once it ended with status 0."""
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write("done\n")
    child.stdin.flush()
    assert child.wait(timeout=30) == 0
    return child.stdout.read()


def test_sigusr1_logs_every_threads_stack_as_json_lines_and_the_process_goes_on():
    with _child(_STACKS) as (child, lines):
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        dumps = []
        for number in (1, 2):  # a second dump is whole too, nothing of the first left in it
            child.send_signal(STACK_DUMP_SIGNAL)
            dumps.append(_dump(lines, number, time.monotonic() + 30))
        assert _end(child) == "still running\n"
    rest = [json.loads(lines.get_nowait()) for _ in range(lines.qsize())]  # every line JSON, to the end
    assert all(line.get("event") != "thread stack" for line in rest)
    first, second = dumps
    assert set(first) == {"MainThread", "worker", "stack-dumps"}
    assert any(" in waits_here" in frame for frame in first["worker"]["frames"])  # where the other thread waits
    assert any(" in <module>" in frame for frame in first["MainThread"]["frames"])
    assert all(line["level"] == "info" and line["service"] == "test" for line in first.values())
    # The same threads, nothing of the first dump in the second (the main thread may have gone from print() to
    # its read in between, and the watcher may still be logging the first dump when the second is taken).
    assert set(second) == set(first)
    assert second["worker"]["frames"] == first["worker"]["frames"]
    assert len(second["MainThread"]["frames"]) == len(first["MainThread"]["frames"])


# Threads started and ended all the time (a pool), the signal sent again and again from outside: faulthandler's
# dump from its C signal handler (what this module used before) ended such a process with SIGSEGV within about a
# hundred signals on Python 3.11 (CPython issue 116008). A line on stdin ends the process.
_CHURN = """
import sys, threading
from shared.log import configure_logging
from shared.stack_dumps import enable_stack_dumps

configure_logging("WARNING", "json", service="test")
enable_stack_dumps()

def work():
    def deeper(n):
        return deeper(n - 1) if n else sum(range(50))
    deeper(20)

def churn():
    while True:
        workers = [threading.Thread(target=work) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

for _ in range(3):
    threading.Thread(target=churn, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
print("still running", flush=True)
"""

# A thread started before enable_stack_dumps has the signal unblocked; sent to it alone, it is a dump too (its
# Python handler, on the main thread, passes it on), not the end of the process. The main thread runs Python code
# (as a service's loop does): a Python handler runs there only then.
_EARLY = """
import select, signal, sys, threading
from shared.log import configure_logging
import pytest

from shared.stack_dumps import STACK_DUMP_SIGNAL, enable_stack_dumps

configure_logging("WARNING", "json", service="test")
signal.pthread_sigmask(signal.SIG_UNBLOCK, {STACK_DUMP_SIGNAL})  # as a process whose parent did not block it
early = threading.Thread(target=threading.Event().wait, name="early", daemon=True)
early.start()
enable_stack_dumps()
signal.pthread_kill(early.ident, STACK_DUMP_SIGNAL)
while not select.select([sys.stdin], [], [], 0.05)[0]:
    pass
print("still running", flush=True)
"""


def test_stacks_asked_for_again_and_again_while_threads_come_and_go_never_end_the_process():
    with _child(_CHURN) as (child, lines):
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 120  # bounded in count and time: each signal waits for the dump it asked for
        for sent in range(400):
            child.send_signal(STACK_DUMP_SIGNAL)
            stacks = _dump(lines, sent + 1, deadline, child)
        assert "churn" in {frame.split(" in ")[-1] for line in stacks.values() for frame in line["frames"]}
        assert _end(child) == "still running\n"


def test_a_thread_started_before_the_stack_dumps_were_enabled_passes_the_signal_on():
    with _child(_EARLY) as (child, lines):
        stacks = _dump(lines, 1, time.monotonic() + 30)
        assert _end(child) == "still running\n"
    assert set(stacks) == {"MainThread", "early", "stack-dumps"}


# Each service's entry module imported as its process starts (console script or ``python -m``): the threads its
# imports start (numpy's OpenBLAS pool) must already have the stack-dump signal blocked, or the kernel may give the
# signal to one of them, and the dump waits for the main thread to run Python code (or never comes).
_THREAD_MASKS = """
import importlib, os, signal, sys
importlib.import_module(sys.argv[1])
bit = 1 << (signal.SIGUSR1 - 1)
tasks = os.listdir("/proc/self/task")
unblocked = []
for task in tasks:
    with open(f"/proc/self/task/{task}/status") as status:
        mask = next(line.split()[1] for line in status if line.startswith("SigBlk:"))
    if not int(mask, 16) & bit:
        with open(f"/proc/self/task/{task}/comm") as comm:
            unblocked.append(comm.read().strip())
print(len(tasks), unblocked)
"""


@pytest.mark.parametrize("service", ["admin", "dispatcher", "extractor", "notifier", "scheduler"])
def test_every_thread_a_service_starts_has_the_stack_dump_signal_blocked(service: str):
    done = subprocess.run(
        [sys.executable, "-c", _THREAD_MASKS, f"services.{service}.__main__"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    threads, unblocked = done.stdout.split(" ", 1)
    assert unblocked.strip() == "[]", f"{threads} threads, the signal unblocked in {unblocked.strip()}"


def test_a_dump_cut_to_its_bounds_keeps_the_main_and_named_threads_first_and_says_what_it_cut():
    here = sys._getframe()
    main = threading.main_thread()
    named = threading.Thread(name="stack-dumps")
    numbered = threading.Thread()  # "Thread-N"
    # Idents as the kernel gives them: new threads' stacks lower than the main thread's.
    frames = dict.fromkeys(range(1, 251), here) | {1000: here, 999: here, 998: here}
    threads = {1000: main, 999: named, 998: numbered}
    stacks = thread_stacks(frames, threads, max_threads=3, max_frames=2)
    assert [stack.name for stack in stacks] == ["MainThread", "stack-dumps", ""]
    assert stacks[0].native_id == main.native_id
    assert stacks[0].thread_id == f"0x{1000:016x}"
    depth = len(traceback.extract_stack(here))
    assert stacks[0].frames[-1] == f"<{depth - 2} more frames>"
    assert stacks[0].frames[0].endswith(f" in {here.f_code.co_name}")


def test_the_kafka_clients_group_warnings_reach_the_log_and_its_network_noise_does_not():
    done = _run(_KAFKA_LOGS)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(line["logger"], line["event"]) for line in lines] == [
        ("kafka.coordinator", "Heartbeat session expired, marking coordinator dead"),
        ("kafka.consumer.fetcher", "a fetch warning"),
    ]
