"""What a hung service tells: its threads' stacks on SIGUSR1, and kafka-python's group warnings in its log."""

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from shared.stack_dumps import STACK_DUMP_SIGNAL, ThreadStack, thread_stacks

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


def _dump(lines: queue.Queue[str], number: int, deadline: float) -> dict[str, dict[str, Any]]:
    """The threads' lines of dump ``number`` by thread name, read from ``lines`` (every one JSON) in time."""
    stacks: dict[str, dict[str, Any]] = {}
    while not stacks or len(stacks) < next(iter(stacks.values()))["threads"]:
        line = json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic())))  # each line JSON, or fails
        if line.get("event") == "thread stack":
            assert line["dump"] == number
            stacks[line["thread"]] = line
    return stacks


def _lines_of(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_sigusr1_logs_every_threads_stack_as_json_lines_and_the_process_goes_on():
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-c", _STACKS],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdin is not None
        assert child.stdout is not None
        assert child.stderr is not None
        reader = threading.Thread(target=_lines_of, args=(child.stderr, lines), daemon=True)
        reader.start()
        try:
            assert child.stdout.readline() == "ready\n"
            dumps = []
            for number in (1, 2):  # a second dump is whole too, nothing of the first left in it
                child.send_signal(STACK_DUMP_SIGNAL)
                dumps.append(_dump(lines, number, time.monotonic() + 30))
            child.stdin.write("done\n")
            child.stdin.flush()
            assert child.wait(timeout=30) == 0
            assert child.stdout.read() == "still running\n"
        finally:
            child.kill()
        reader.join(timeout=30)
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


def test_the_stacks_are_plain_text_on_stderr_where_no_memory_file_can_be_made():
    script = (
        _STACKS.replace("import sys, threading", "import os, signal, sys, tempfile, threading")
        .replace(
            "enable_stack_dumps()",
            "def refused(*args): raise OSError('no')\n"
            "os.memfd_create = tempfile.TemporaryFile = refused\n"
            "enable_stack_dumps()",
        )
        .replace("worker.start()", "worker.start()\nos.kill(os.getpid(), signal.SIGUSR1)")
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, input="done\n", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ready\nstill running\n"
    assert "most recent call first" in done.stderr
    assert "in waits_here" in done.stderr


def test_a_dump_is_read_as_faulthandler_writes_it():
    text = (
        "Thread 0x00007f0000000001 (most recent call first):\n"
        '  File "/app/x.py", line 3 in waits_here\n'
        '  File "/usr/lib/python3.11/threading.py", line 975 in run\n'
        "\n"
        "Current thread 0x00007f0000000002 (most recent call first):\n"
        "  <no Python frame>\n"
    )
    assert thread_stacks(text) == [
        ThreadStack(
            "0x00007f0000000001",
            ('File "/app/x.py", line 3 in waits_here', 'File "/usr/lib/python3.11/threading.py", line 975 in run'),
        ),
        ThreadStack("0x00007f0000000002", ("<no Python frame>",)),
    ]


def test_the_kafka_clients_group_warnings_reach_the_log_and_its_network_noise_does_not():
    done = _run(_KAFKA_LOGS)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(line["logger"], line["event"]) for line in lines] == [
        ("kafka.coordinator", "Heartbeat session expired, marking coordinator dead"),
        ("kafka.consumer.fetcher", "a fetch warning"),
    ]
