"""The checks, in report order. Each takes a GradingContext and returns an Outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from grader.checks import equivalence, gradients, load, props, shapes, static, tasks, training
from grader.checks.context import GradingContext, Outcome


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    run: Callable[[GradingContext], Outcome]
    needs_worker: bool = True
    by_person: bool = False  # a `manual` check: a TA gives the points (TA sheet, --manual)


CHECKS: tuple[Check, ...] = (
    Check("load.code", "Code found and parsed", load.check_code, needs_worker=False),
    Check("load.definitions", "Required classes defined and executable", load.check_definitions),
    Check("load.interface", "Constructor keywords and attn_weights layout as in the handout", load.check_interface),
    Check("static.forbidden", "No forbidden modules or APIs", static.check_forbidden, needs_worker=False),
    Check("shapes.fnn", "FNN output shape", shapes.check_fnn),
    Check("shapes.self_attention", "SelfAttention output and attention-weight shapes", shapes.check_self_attention),
    Check("shapes.encoder_layer", "TransformerEncoderLayer output shape", shapes.check_encoder_layer),
    Check("shapes.vit", "ViT shape at every stage of the handout's table", shapes.check_vit),
    Check("shapes.vit_config", "ViT shapes in a non-default configuration", shapes.check_vit_config),
    Check("props.attention_softmax", "Attention weights are a softmax over keys", props.check_attention_softmax),
    Check("props.permutation_equivariance", "SelfAttention is permutation-equivariant",
          props.check_permutation_equivariance),
    Check("props.batch_independence", "Images in a batch do not affect each other", props.check_batch_independence),
    Check("props.gradients", "Every parameter receives a gradient", gradients.check_gradients),
    Check("props.determinism", "Eval mode is deterministic", props.check_determinism),
    Check("equiv.fnn", "FNN computes the reference function", equivalence.check_fnn),
    Check("equiv.self_attention", "SelfAttention computes the reference function", equivalence.check_self_attention),
    Check("equiv.attention_weights", "Stored attention weights match the reference",
          equivalence.check_attention_weights),
    Check("equiv.encoder_layer", "TransformerEncoderLayer computes the reference function",
          equivalence.check_encoder_layer),
    Check("equiv.vit", "ViT computes the reference function", equivalence.check_vit),
    Check("train.accuracy", "The model learns: test accuracy after training", training.check_accuracy),
    Check("task1.shapes", "課題1: shape at every stage, two configurations", tasks.check_task1_shapes,
          needs_worker=False),
    Check("task1.diagram", "課題1: network diagram (graded by a person)", tasks.check_task1_diagram, needs_worker=False,
          by_person=True),
    Check("task2.choice", "課題2: Q/K/V multiple choice", tasks.check_task2_choice, needs_worker=False),
    Check("task2.explanation", "課題2: explanation (graded by a person)", tasks.check_task2_explanation,
          needs_worker=False, by_person=True),
    Check("task3.answer", "課題3: heatmaps and Grad-CAM (graded by a person)", tasks.check_task3_answer,
          needs_worker=False, by_person=True),
)
CHECK_IDS = tuple(c.id for c in CHECKS)
PERSON_GRADED = frozenset(c.id for c in CHECKS if c.by_person)

__all__ = ["CHECKS", "CHECK_IDS", "PERSON_GRADED", "Check", "GradingContext", "Outcome"]
