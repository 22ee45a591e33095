"""Where :class:`services.dispatcher.render_offload.Renderer` renders: a template never rendered, or one whose last
render was slow, on a render thread (a runaway template holds that thread, not the event loop every request in
flight shares); a template known to be quick on the event loop."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from services.dispatcher.render_offload import Renderer
from shared.domain.catalog_objects import ConnectionProfile, HttpTemplate
from shared.domain.render_budget import DEFAULT_LIMITS, RenderBudget, RenderLimitExceeded, RenderLimits
from shared.domain.rendering import PreparedRequest, TemplateRenderError, prepare_request
from shared.events import MemberBatch


@dataclass(frozen=True)
class Template:
    name: str


@dataclass
class Prepared:
    """Stands for a ``PreparedRequest``: ``render`` burns ``cpu_seconds`` of its thread's CPU and notes the thread."""

    template: Template
    cpu_seconds: float
    threads: list[str] = field(default_factory=list)

    def render(self, members: list[dict[str, Any]], started: float | None = None, headers: object = None) -> str:
        self.threads.append(threading.current_thread().name)
        started = time.thread_time()
        while time.thread_time() - started < self.cpu_seconds:
            pass
        return f"rendered {len(members)}"


def inline(renderer: Renderer, prepared: Prepared, members: list[dict[str, Any]]) -> object:
    """``render_inline``'s answer: the render, or None when it goes to a render thread."""
    return renderer.render_inline(cast(PreparedRequest, prepared), members)


async def rendered(renderer: Renderer, prepared: Prepared, members: list[dict[str, Any]]) -> object:
    return await renderer.render(cast(PreparedRequest, prepared), members)


@pytest.fixture
def renderer() -> Any:
    made = Renderer()
    yield made
    made.close()


def test_a_template_never_rendered_goes_to_a_render_thread(renderer: Renderer) -> None:
    prepared = Prepared(Template("new"), cpu_seconds=0.0)
    assert inline(renderer, prepared, [{"id": 1}]) is None
    assert prepared.threads == []
    assert asyncio.run(rendered(renderer, prepared, [{"id": 1}])) == "rendered 1"
    assert prepared.threads[0].startswith("render")


def test_a_quick_template_is_rendered_inline_and_a_slow_one_on_a_render_thread(renderer: Renderer) -> None:
    quick = Prepared(Template("quick"), cpu_seconds=0.0)
    slow = Prepared(Template("slow"), cpu_seconds=3 * Renderer.INLINE_SECONDS)

    async def scenario() -> None:
        loop_thread = threading.current_thread().name
        for prepared in (quick, slow):
            await rendered(renderer, prepared, [{"id": 1}])  # its cost is learned
            await rendered(renderer, prepared, [{"id": 2}])
        assert quick.threads[1] == loop_thread, "a quick template is rendered on the event loop"
        assert slow.threads[1] != loop_thread, "a slow template is rendered on a render thread"
        assert slow.threads[1].startswith("render")

    asyncio.run(scenario())
    assert inline(renderer, quick, [{"id": 3}]) == "rendered 1"
    assert inline(renderer, slow, [{"id": 3}]) is None
    assert len(slow.threads) == 2  # render_inline left the slow one alone


def test_a_larger_batch_of_a_quick_template_may_go_to_a_render_thread(renderer: Renderer) -> None:
    prepared = Prepared(Template("grows"), cpu_seconds=Renderer.INLINE_SECONDS / 4)
    asyncio.run(rendered(renderer, prepared, [{"id": 1}]))
    assert inline(renderer, prepared, [{"id": 1}]) is not None
    assert inline(renderer, prepared, [{"id": n} for n in range(100)]) is None


# --- The render's CPU clock: read when it is needed, not twice a request -------------------------------------------

PROFILE = ConnectionProfile(name="p", base_url="https://api.example.com/")
ONE_MEMBER_BODY = {column: f"{{{{ member.{column} }}}}" for column in ("id", "email", "first_name", "tier", "points")}


def real_prepared(json_body: dict[str, Any], limits: RenderLimits = DEFAULT_LIMITS) -> PreparedRequest:
    template = HttpTemplate(name="t", query="q", profile="p", batch_size=1, path="/members", json_body=json_body)
    batch = MemberBatch(run_id=uuid.UUID(int=1), definition="d", template="t", batch_index=0, members=[MEMBER])
    return prepare_request(template, PROFILE, batch, limits)


MEMBER = {"id": 7, "email": "a@example.com", "first_name": "Ana", "tier": "gold", "points": 12, "n": 1}


def test_a_quick_one_member_template_reads_the_cpu_clock_once_in_eight_requests_not_twice_a_request(
    renderer: Renderer, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = real_prepared(ONE_MEMBER_BODY)
    first = asyncio.run(renderer.render(prepared, [MEMBER]))  # its cost is learned on a render thread
    reads = []
    clock = time.thread_time

    def counted() -> float:
        reads.append(threading.current_thread().name)
        return clock()

    monkeypatch.setattr(time, "thread_time", counted)
    requests = [renderer.render_inline(prepared, [MEMBER]) for _ in range(64)]
    assert requests == [first] * 64  # the same request, rendered on the loop
    # Two reads (a measured render) once in MEASURE_EVERY renders: 8 for 64, where every render read it twice (128).
    assert len(reads) <= 2 * (64 // Renderer.MEASURE_EVERY)


def test_a_quick_template_that_runs_away_on_the_loop_is_stopped_at_its_cpu_deadline_and_then_rendered_off_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Quick for a member whose n is 1; for one whose n is 100,000, nested loops of 10^10 steps (hours).
    body = {"x": {"$each": "range(member.n)", "as": "i", "item": {"$each": "range(member.n)", "as": "j", "item": 1}}}
    limits = RenderLimits(timeout_seconds=0.2, max_bytes=10**9)
    renderer = Renderer(limits)
    try:
        prepared = real_prepared(body, limits)
        for _ in range(2):  # on a render thread: the first compiles the leaves (slow), the second is learned quick
            asyncio.run(renderer.render(prepared, [MEMBER]))
        for _ in range(3):  # on the loop: they take steps (a $each), so each is measured, and stays quick
            assert renderer.render_inline(prepared, [MEMBER]) is not None
        started = time.thread_time()
        with pytest.raises(TemplateRenderError, match=r"took longer than 0\.2 s of CPU time"):
            renderer.render_inline(prepared, [MEMBER | {"n": 100_000}])
        assert 0.2 <= time.thread_time() - started < 1.0  # stopped at its deadline, not run to the end
        assert renderer.render_inline(prepared, [MEMBER]) is None, "the next render goes to a render thread"
    finally:
        renderer.close()


def test_a_budget_given_no_start_reads_the_clock_at_its_first_step_and_holds_the_deadline_from_there() -> None:
    budget = RenderBudget(RenderLimits(timeout_seconds=0.05))
    assert budget.started is None
    assert budget.deadline == math.inf
    budget.tick()  # the first step reads the clock
    assert budget.started is not None
    assert budget.deadline == budget.started + 0.05
    burn = time.thread_time()
    while time.thread_time() - burn < 0.06:
        pass
    for _ in range(15):
        budget.tick()  # steps between two looks at the clock
    with pytest.raises(RenderLimitExceeded, match=r"took longer than 0\.05 s of CPU time"):
        budget.tick()  # the 16th after the first looks
