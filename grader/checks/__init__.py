"""The code of each check, in report order (ids, titles and flags: `grader.spec.CHECKS`). Each takes a
GradingContext and returns an Outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from grader.checks import equivalence, gradients, load, props, shapes, static, tasks, training
from grader.checks.context import GradingContext, Outcome
from grader.spec import CHECK_IDS, PERSON_GRADED, CheckInfo
from grader.spec import CHECKS as CHECK_INFO

RUNNERS: dict[str, Callable[[GradingContext], Outcome]] = {
    "load.code": load.check_code,
    "load.definitions": load.check_definitions,
    "load.interface": load.check_interface,
    "static.forbidden": static.check_forbidden,
    "shapes.fnn": shapes.check_fnn,
    "shapes.self_attention": shapes.check_self_attention,
    "shapes.encoder_layer": shapes.check_encoder_layer,
    "shapes.vit": shapes.check_vit,
    "shapes.vit_config": shapes.check_vit_config,
    "props.attention_softmax": props.check_attention_softmax,
    "props.permutation_equivariance": props.check_permutation_equivariance,
    "props.batch_independence": props.check_batch_independence,
    "props.gradients": gradients.check_gradients,
    "props.determinism": props.check_determinism,
    "equiv.fnn": equivalence.check_fnn,
    "equiv.self_attention": equivalence.check_self_attention,
    "equiv.attention_weights": equivalence.check_attention_weights,
    "equiv.encoder_layer": equivalence.check_encoder_layer,
    "equiv.vit": equivalence.check_vit,
    "train.accuracy": training.check_accuracy,
    "task1.shapes": tasks.check_task1_shapes,
    "task1.diagram": tasks.check_task1_diagram,
    "task2.choice": tasks.check_task2_choice,
    "task2.explanation": tasks.check_task2_explanation,
    "task3.answer": tasks.check_task3_answer,
}
assert set(RUNNERS) == set(CHECK_IDS), "every check in grader.spec.CHECKS has exactly one runner"


@dataclass(frozen=True, kw_only=True)
class Check(CheckInfo):
    run: Callable[[GradingContext], Outcome]


CHECKS: tuple[Check, ...] = tuple(Check(**vars(info), run=RUNNERS[info.id]) for info in CHECK_INFO)

__all__ = ["CHECKS", "CHECK_IDS", "PERSON_GRADED", "RUNNERS", "Check", "GradingContext", "Outcome"]
