"""Expected values computed with the reference solution (the instructor's install; not in the student bundle).

This and `reference/` are the only code that computes a correct ViT, or the known mistakes
that sit next to one; the student bundle gets their numbers through `grader.expected.record`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from grader.expected.model import (
    GRADIENT_SAMPLES,
    Expected,
    GradientChallenge,
    State,
    ViTStages,
    as_tensor,
    challenge_id,
    fresh_seeds,
    random_weights,
)
from grader.spec import ALTERNATIVE, DEFAULT, ViTConfig, component_args, component_kwargs
from reference.vit import FNN, SelfAttention, TransformerEncoderLayer, ViT

# One computation with the reference modules at a time: they are cached and shared (build_reference), the
# prefetch thread uses them beside the checks, and a forward pass stores attn_weights on its module.
_LOCK = threading.RLock()
Result = TypeVar("Result")


def _serial(method: Callable[..., Result]) -> Callable[..., Result]:
    """One at a time, on one thread: the values are small (batch 2, the default sizes), and more intra-op
    threads would only spin beside the student's worker on the same cores (it doubled a check's CPU time)."""
    @functools.wraps(method)
    def run(*args, **kwargs) -> Result:
        with _LOCK:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return method(*args, **kwargs)
            finally:
                torch.set_num_threads(threads)
    return run


@functools.lru_cache(maxsize=16)
def build_reference(kind: str, config: ViTConfig = DEFAULT, seed: int = 0) -> nn.Module:
    """A float64 reference module whose every parameter is random and non-zero (cached: never mutate it)."""
    cls = {"FNN": FNN, "SelfAttention": SelfAttention, "TransformerEncoderLayer": TransformerEncoderLayer, "ViT": ViT}[kind]
    module = cls(*component_args(kind, config), **component_kwargs(kind, config)).double().eval()
    shapes, gains = layout(module)
    with torch.no_grad():
        for (name, p), value in zip(module.named_parameters(), random_weights(shapes, gains, seed).values(),
                                    strict=True):
            assert name in shapes
            p.copy_(torch.from_numpy(value))
    return module


def layout(module: nn.Module) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    gains = {f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.LayerNorm)}
    return shapes, gains


class ReferenceExpected(Expected):
    """The reference's values; with `secret`, on weights and inputs drawn from it (instructor grading)."""

    source = "reference solution"
    can_train_reference = True

    def __init__(self, secret: int | None = None):
        self._prefetching: threading.Thread | None = None
        if secret is not None:
            self.seeds = fresh_seeds(secret)
            self.challenge = challenge_id(secret)

    def prefetch(self) -> None:
        """Compute the costliest values in a background thread, in the order the checks ask for them; a check
        that asks first waits for the result (_LOCK). An error here is left for that check to meet and report."""
        if self._prefetching is not None:
            return

        steps = [functools.partial(_serial(self._module), kind)
                 for kind in ("ViT", "FNN", "SelfAttention", "TransformerEncoderLayer")]
        steps += [self.vit_stages, self.gradient_challenge]

        def compute() -> None:
            try:
                for step in steps:
                    if not threading.main_thread().is_alive():  # the grader is exiting: the values are not needed
                        return
                    step()
            except Exception:  # noqa: BLE001, S110 - the check that needs the value computes it again and reports
                pass

        # Not a daemon: the interpreter's exit waits for it (torch aborts the process when its work is cut off).
        self._prefetching = threading.Thread(target=compute, name="vitgrade-reference-prefetch")
        self._prefetching.start()

    def _module(self, kind: str) -> nn.Module:
        return build_reference(kind, DEFAULT, seed=self.seeds[kind])

    @_serial
    def weights(self, kind: str) -> State:
        return {name: p.detach().numpy().copy() for name, p in self._module(kind).named_parameters()}

    @_serial
    def weight_layout(self, kind: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        return layout(self._module(kind))

    @_serial
    def output(self, kind: str) -> tuple[np.ndarray, State]:
        module = self._module(kind)
        with torch.no_grad():
            y = module(as_tensor(self.inputs(kind)))
        extras = {"attn_weights": module.attn_weights.numpy()} if isinstance(module, SelfAttention) else {}
        return y.numpy(), extras

    @_serial
    def variants(self, kind: str) -> dict[str, np.ndarray]:
        if kind == "FNN":
            return fnn_variants(self.weights("FNN"), self.inputs("FNN"))
        if kind == "SelfAttention":
            return attention_variants(self.weights("SelfAttention"), self.inputs("SelfAttention"), DEFAULT.num_heads)
        if kind == "patches":
            return patch_variants(self.inputs("ViT"), DEFAULT.patch_size)
        raise KeyError(kind)

    @_serial  # outside the cache: a second caller waits for the first's result
    @functools.cache  # noqa: B019 - one instance per process; the stages never change
    def vit_stages(self) -> ViTStages:
        model = self._module("ViT")
        with torch.no_grad():
            images = as_tensor(self.inputs("ViT"))
            patches = model.patchify(images)
            tokens = model.embed(images)
            outputs, h = [], tokens
            for layer in model.layers:
                h = layer(h)
                outputs.append(h.numpy())
            normed = model.norm(h)
            return ViTStages(patches=patches.numpy(), patch_embed=model.patch_embed(patches).numpy(),
                             tokens=tokens.numpy(), layer_outputs=outputs, normed=normed.numpy(),
                             logits=model.linear(normed[:, 0]).numpy())

    @_serial
    def alternative_weights(self, kind: str) -> State:
        module = build_reference(kind, ALTERNATIVE, seed=self.seeds[kind])
        return {name: p.detach().numpy().copy() for name, p in module.named_parameters()}

    @_serial
    def alternative_layout(self, kind: str) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        return layout(build_reference(kind, ALTERNATIVE, seed=self.seeds[kind]))

    @_serial
    def alternative_output(self, kind: str) -> np.ndarray:
        with torch.no_grad():
            return build_reference(kind, ALTERNATIVE, seed=self.seeds[kind])(as_tensor(self.alternative_inputs(kind))).numpy()

    @_serial  # outside the cache: a second caller waits for the first's result
    @functools.cache  # noqa: B019 - one instance per grading run; the challenge never changes
    def gradient_challenge(self) -> GradientChallenge:
        model = self._module("ViT")
        rng = np.random.default_rng(self.seeds["ViT"] + 200)
        images = rng.standard_normal((1, 3, DEFAULT.img_size, DEFAULT.img_size))
        upstream = rng.standard_normal((1, DEFAULT.num_classes))
        names, params = zip(*model.named_parameters(), strict=True)
        with torch.enable_grad():
            logits = model(as_tensor(images))
            # <upstream, logits> as a scalar: the gradients of grad_outputs=upstream, bit for bit, without the
            # ~1 s import of sympy torch makes for an explicit upstream gradient. Leaves .grad untouched.
            grads = torch.autograd.grad((logits * as_tensor(upstream)).sum(), params)
        samples, values, full = {}, {}, {}
        for name, grad in zip(names, grads, strict=True):
            full[name] = grad.detach().numpy()
            flat = full[name].reshape(-1)
            samples[name] = np.sort(rng.choice(flat.size, size=min(GRADIENT_SAMPLES, flat.size), replace=False))
            values[name] = flat[samples[name]]
        return GradientChallenge(images, upstream, logits.detach().numpy(), samples, values, full)

    @_serial
    def layer_output(self, index: int, layer_in: np.ndarray) -> np.ndarray | None:
        if layer_in is None:
            return None
        with torch.no_grad():
            return self._module("ViT").layers[index](as_tensor(layer_in)).numpy()


def attention_variants(ref: State, x: np.ndarray, heads: int) -> dict[str, np.ndarray]:
    xt = as_tensor(x)
    b, n, d = xt.shape
    dh = d // heads
    qkv = (xt @ as_tensor(ref["proj_in.weight"]).T).view(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, Dh)
    w_out, b_out = as_tensor(ref["proj_out.weight"]), as_tensor(ref["proj_out.bias"])

    def finish(context: torch.Tensor, transpose: bool = True, project: bool = True) -> np.ndarray:
        merged = context.transpose(1, 2).reshape(b, n, d) if transpose else context.reshape(b, n, d)
        return (merged @ w_out.T + b_out if project else merged).numpy()

    scores = q @ k.transpose(-2, -1)
    right = (scores * dh**-0.5).softmax(-1)
    return {
        "the softmax runs over the query axis (dim=-2); it must normalise over the keys (dim=-1)":
            finish((scores * dh**-0.5).softmax(-2) @ v),
        "the scores are not scaled by 1/sqrt(head dim)": finish(scores.softmax(-1) @ v),
        "the scores are scaled by 1/sqrt(dim_hidden) instead of 1/sqrt(head dim)":
            finish((scores * d**-0.5).softmax(-1) @ v),
        "the scores are scaled by sqrt(head dim) instead of divided by it": finish((scores * dh**0.5).softmax(-1) @ v),
        "there is no softmax on the scores": finish((scores * dh**-0.5) @ v),
        "the heads are merged without transposing (B, H, N, Dh) back to (B, N, H, Dh)": finish(right @ v, transpose=False),
        "the output projection (proj_out) is not applied": finish(right @ v, project=False),
        "the attention weights multiply the keys instead of the values": finish(right @ k),
        "the scores are scaled after the softmax; the handout scales them before it: softmax(q k^T / sqrt(head dim))":
            finish(scores.softmax(-1) * dh**-0.5 @ v),
    }


def fnn_variants(ref: State, x: np.ndarray) -> dict[str, np.ndarray]:
    xt = as_tensor(x)
    hidden = xt @ as_tensor(ref["linear1.weight"]).T + as_tensor(ref["linear1.bias"])

    def out(h: torch.Tensor) -> np.ndarray:
        return (h @ as_tensor(ref["linear2.weight"]).T + as_tensor(ref["linear2.bias"])).numpy()

    return {
        "ReLU is used where the handout uses GELU": out(F.relu(hidden)),
        "GELU with the tanh approximation is used; the handout uses the exact GELU (nn.GELU())":
            out(F.gelu(hidden, approximate="tanh")),
        "there is no activation between the two linear layers": out(hidden),
    }


def patch_variants(images: np.ndarray, patch: int) -> dict[str, np.ndarray]:
    """Mistakes in splitting (B, C, H, W) images into flattened patches."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return {
        "patches are flattened channel-last (y, x, c); the handout flattens (c, y, x)":
            grid.transpose(0, 2, 4, 3, 5, 1).reshape(b, -1, c * patch * patch),
        "the patch grid is read column by column instead of row by row":
            grid.transpose(0, 4, 2, 1, 3, 5).reshape(b, -1, c * patch * patch),
        "the image is reshaped into patches without permuting the axes (pixels of different patches are mixed)":
            images.reshape(b, -1, c * patch * patch),
    }
