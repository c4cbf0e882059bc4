"""GradingContext's requests for a module's weights: what reaches the worker, and what need not."""

from __future__ import annotations

import numpy as np
import pytest

from grader.checks.context import Built, GradingContext
from grader.intake import Submission
from grader.sandbox import Reply

from ..conftest import code_rubric


class RecordingSandbox:
    """Stands in for the worker: records each request and answers it with nothing."""

    def __init__(self):
        self.requests: list[tuple[str, dict, dict]] = []

    def request(self, op, header=None, arrays=None, timeout=60.0):
        self.requests.append((op, header or {}, {name: np.array(value) for name, value in (arrays or {}).items()}))
        return Reply({"ok": True}, {})

    def sent(self) -> list[tuple[str, list[str]]]:
        requests, self.requests = self.requests, []
        return [(op, sorted(arrays)) for op, _, arrays in requests]


def _context() -> tuple[GradingContext, RecordingSandbox, Built]:
    sandbox = RecordingSandbox()
    ctx = GradingContext(Submission("s1", "s1.py", "", []), sandbox, code_rubric())
    return ctx, sandbox, Built("ViT-0", [], [])


def test_weights_the_worker_already_holds_are_not_sent_again():
    ctx, sandbox, built = _context()
    rng = np.random.default_rng(0)
    values = {"a": rng.standard_normal((4, 3)), "b": rng.standard_normal(5)}
    ctx.set_params(built, values)
    assert sandbox.sent() == [("set_params", ["a", "b"])]
    ctx.set_params(built, {name: value.copy() for name, value in values.items()})  # equal values, new arrays
    assert sandbox.sent() == []
    ctx.set_params(built, {"a": values["a"], "b": values["b"] + 1})
    assert sandbox.sent() == [("set_params", ["b"])]


def test_a_value_changed_in_place_after_it_was_sent_is_sent_again():
    ctx, sandbox, built = _context()
    value = np.zeros(3)
    ctx.set_params(built, {"a": value})
    value[1] = 7.0
    ctx.set_params(built, {"a": value})
    assert [arrays["a"].tolist() for _, _, arrays in sandbox.requests] == [[0.0, 0.0, 0.0], [0.0, 7.0, 0.0]]


def test_after_random_weights_every_value_is_sent():
    ctx, sandbox, built = _context()
    values = {"a": np.ones(3)}
    ctx.set_params(built, values)
    ctx.randomize(built, seed=1)
    ctx.set_params(built, values)
    assert sandbox.sent() == [("set_params", ["a"]), ("randomize", []), ("set_params", ["a"])]


def test_a_request_that_fails_leaves_nothing_assumed(monkeypatch):
    ctx, sandbox, built = _context()
    values = {"a": np.ones(3)}
    ctx.set_params(built, values)

    def worker_died(*args, **kwargs):
        raise RuntimeError("worker died")

    with monkeypatch.context() as patch:
        patch.setattr(sandbox, "request", worker_died)
        with pytest.raises(RuntimeError):
            ctx.set_params(built, {"a": np.zeros(3)})  # the worker may hold ones, zeros, or neither
    ctx.set_params(built, values)
    assert sandbox.sent() == [("set_params", ["a"]), ("set_params", ["a"])]
