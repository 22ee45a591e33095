"""Driving a page with the keyboard alone: Tab to an element, as a person without a mouse would."""

from __future__ import annotations

from playwright.sync_api import Page


def focused(page: Page, selector: str) -> bool:
    return bool(page.evaluate("s => document.activeElement !== null && document.activeElement.matches(s)", selector))


def tab_to(page: Page, selector: str, *, most: int = 80) -> None:
    """Press Tab until the focused element matches ``selector``; fail after ``most`` presses."""
    for _ in range(most):
        if focused(page, selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")
