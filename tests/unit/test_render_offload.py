"""Where :class:`services.dispatcher.render_offload.Renderer` renders: a template never rendered, or one whose last
render was slow, on a render thread (a runaway template holds that thread, not the event loop every request in
flight shares); a template known to be quick on the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from services.dispatcher.render_offload import Renderer
from shared.domain.rendering import PreparedRequest


@dataclass(frozen=True)
class Template:
    name: str


@dataclass
class Prepared:
    """Stands for a ``PreparedRequest``: ``render`` burns ``cpu_seconds`` of its thread's CPU and notes the thread."""

    template: Template
    cpu_seconds: float
    threads: list[str] = field(default_factory=list)

    def render(self, members: list[dict[str, Any]], started: float | None = None) -> str:
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
