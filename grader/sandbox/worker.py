"""The sandboxed worker: runs student code and answers the parent's requests (child side).

Started as `python -I worker.py IN_FD OUT_FD SITE_DIR...` inside the sandbox. It imports only
the standard library, numpy, torch and the files bound next to it (`wire.py`, `trainer.py`, `recipe.py`); it
never sees expected outputs, thresholds or labels: the parent computes every verdict.

IN_FD 0 and OUT_FD 1: the protocol came on stdin/stdout (Windows), see protocol_off_stdio.
"""

from __future__ import annotations

import os
import sys
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))


class Worker:
    def __init__(self, in_fd: int, out_fd: int):
        import numpy as np
        import torch
        import wire

        self.np, self.torch, self.wire = np, torch, wire
        self.in_fd, self.out_fd = in_fd, out_fd
        self.module: types.ModuleType | None = None
        self.objects: dict[str, torch.nn.Module] = {}

    # -- plumbing ---------------------------------------------------------------------------
    def tensor(self, array, dtype=None):
        t = self.torch.from_numpy(self.np.ascontiguousarray(array))
        return t.to(dtype=dtype or self.dtype, device=self.device) if t.is_floating_point() else t.to(self.device)

    def array(self, value):
        if not isinstance(value, self.torch.Tensor):
            raise TypeError(f"expected a tensor, got {type(value).__name__}")
        value = value.detach().cpu()
        return value.double().numpy() if value.is_floating_point() else value.numpy()

    @property
    def dtype(self):
        return getattr(self, "_dtype", self.torch.float64)

    @property
    def device(self):
        return getattr(self, "_device", "cpu")

    def reply(self, header: dict, arrays: dict | None = None) -> None:
        header = {"ok": True, **header}
        self.wire.write_message(self.out_fd, header, arrays)

    def serve(self) -> None:
        self.reply({"ready": True, "torch": self.torch.__version__, "cuda": self.torch.cuda.is_available(),
                    "python": sys.version.split()[0]})
        while True:
            try:
                header, arrays = self.wire.read_message(self.in_fd)
            except EOFError:
                return
            op = header.get("op", "")
            handler = getattr(self, f"op_{op}", None)
            try:
                if handler is None:
                    raise ValueError(f"unknown request {op!r}")
                result, out_arrays = handler(header, arrays)
                self.reply(result, out_arrays)
            except BaseException as exc:  # noqa: BLE001 - student code may raise anything, even SystemExit
                if isinstance(exc, KeyboardInterrupt):
                    raise
                frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
                self.wire.write_message(self.out_fd, {
                    "ok": False, "error": type(exc).__name__, "message": str(exc)[:2000],
                    "traceback": "".join(frames)[-4000:]})

    # -- requests ---------------------------------------------------------------------------
    def op_setup(self, header, arrays):
        self._dtype = getattr(self.torch, header.get("dtype", "float64"))
        self._device = header.get("device", "cpu")
        # The checks' tensors are tiny: extra intra-op threads only spin, taking the cores the grader's own
        # process (and other workers) need. Training gets the worker's whole allowance (op_train).
        self._train_threads = int(header.get("threads") or 0) or self.torch.get_num_threads()
        self.torch.set_num_threads(1)
        return {}, None

    def op_load(self, header, arrays):
        """Execute the submission's kept code as module `submission`."""
        module = types.ModuleType("submission")
        module.__file__ = "submission.py"
        sys.modules["submission"] = module
        exec(compile(header["code"], "submission.py", "exec"), module.__dict__)
        self.module = module
        classes = [name for name, value in vars(module).items() if isinstance(value, type)
                   and issubclass(value, self.torch.nn.Module) and value.__module__ == "submission"]
        return {"classes": classes}, None

    def op_build(self, header, arrays):
        cls = getattr(self.module, header["class"], None)
        if cls is None:
            raise NameError(f"class {header['class']} is not defined")
        self.torch.manual_seed(int(header.get("seed", 0)))
        obj = cls(*header.get("args", []), **header.get("kwargs", {}))
        if not isinstance(obj, self.torch.nn.Module):
            raise TypeError(f"{header['class']}(...) is not a torch.nn.Module")
        obj = obj.to(device=self.device, dtype=self.dtype)
        if header.get("probe_shape") and len(header["probe_shape"]) >= 3:
            self._materialise(obj, header["probe_shape"])
        self.objects[header["handle"]] = obj
        params = [{"name": n, "shape": list(p.shape), "owner": type(self._owner(obj, n)).__name__}
                  for n, p in obj.named_parameters()]
        modules = [{"name": n, "type": type(m).__name__} for n, m in obj.named_modules() if n]
        return {"params": params, "modules": modules}, None

    def op_signature(self, header, arrays):
        """The keyword names of a class's constructor (the parent matches them to the handout's)."""
        import inspect

        cls = getattr(self.module, header["class"], None)
        if cls is None:
            raise NameError(f"class {header['class']} is not defined")
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
        keywords = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        variadic = any(p.kind == p.VAR_KEYWORD for p in parameters)
        return {"keywords": keywords, "variadic": variadic}, None

    def _materialise(self, obj, shape):
        """Lazy layers (nn.Lazy*) create their parameters on the first forward: run one on zeros."""
        lazy = self.torch.nn.parameter.UninitializedParameter
        if any(isinstance(p, lazy) for p in obj.parameters()):
            with self.torch.no_grad():
                obj.eval()(self.torch.zeros(shape, dtype=self.dtype, device=self.device))
            obj.to(device=self.device, dtype=self.dtype)

    def op_trace(self, header, arrays):
        """Run forward once and list, in call order, every torch call that touches a parameter.

        The parent maps weights by this record (what runs), not by which class declares them.
        """
        from torch.overrides import TorchFunctionMode

        obj = self.objects[header["handle"]]
        obj.eval()
        names = {id(p): n for n, p in obj.named_parameters()}
        events: list[dict] = []
        limit = int(header.get("max_events", 4000))

        def used(values):
            for value in values:
                if isinstance(value, (list, tuple)):
                    yield from used(value)
                elif id(value) in names and isinstance(value, self.torch.Tensor):
                    yield names[id(value)]

        class Record(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                found = list(used([*args, *kwargs.values()]))
                if found and len(events) < limit:
                    op = getattr(func, "__name__", "") or type(func).__name__
                    event = {"op": op, "params": found}
                    if op == "layer_norm":
                        eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
                        event["eps"] = float(eps)
                    events.append(event)
                return func(*args, **kwargs)

        with self.torch.no_grad(), Record():
            out = obj(self.tensor(arrays["x"]))
        if not isinstance(out, self.torch.Tensor):
            raise TypeError(f"forward returned {type(out).__name__}, expected a tensor")
        return {"events": events}, None

    @staticmethod
    def _owner(obj, param_name):
        path = param_name.rsplit(".", 1)[0] if "." in param_name else ""
        return obj.get_submodule(path) if path else obj

    def op_set_params(self, header, arrays):
        obj = self.objects[header["handle"]]
        params = dict(obj.named_parameters())
        with self.torch.no_grad():
            for name, value in arrays.items():
                if name not in params:
                    raise KeyError(f"no parameter named {name}")
                target = params[name]
                if tuple(target.shape) != value.shape:
                    raise ValueError(f"{name}: shape {tuple(target.shape)} != {value.shape}")
                target.copy_(self.tensor(value, dtype=target.dtype))
        return {}, None

    def op_randomize(self, header, arrays):
        """Give every parameter seeded random values (zeros-initialised ones included)."""
        obj = self.objects[header["handle"]]
        generator = self.torch.Generator().manual_seed(int(header.get("seed", 0)))
        with self.torch.no_grad():
            for _, p in obj.named_parameters():
                p.copy_(self.torch.randn(p.shape, generator=generator, dtype=self.torch.float64) * header.get("std", 0.1))
        return {}, None

    def op_forward(self, header, arrays):
        """Run forward; capture module inputs/outputs and attributes (backward: op_gradients)."""
        obj = self.objects[header["handle"]]
        obj.train(bool(header.get("train", False)))
        capture = set(header.get("capture", []))
        trace = bool(header.get("trace", False))
        calls, captured, hooks = [], {}, []
        named = dict(obj.named_modules())

        def make_hook(name, module):
            def hook(mod, inputs, output):
                first_in = inputs[0] if inputs and isinstance(inputs[0], self.torch.Tensor) else None
                if trace:
                    calls.append({"name": name, "type": type(mod).__name__,
                                  "in": list(first_in.shape) if first_in is not None else None,
                                  "out": list(output.shape) if isinstance(output, self.torch.Tensor) else None})
                if name in capture:
                    if first_in is not None:
                        captured.setdefault(f"in:{name}", self.array(first_in))
                    if isinstance(output, self.torch.Tensor):
                        captured.setdefault(f"out:{name}", self.array(output))
            return hook

        if trace or capture:
            for name, module in named.items():
                if name and (trace or name in capture):
                    hooks.append(module.register_forward_hook(make_hook(name, module)))
        x = self.tensor(arrays["x"])
        try:
            with self.torch.no_grad():
                out = obj(x)
                if not isinstance(out, self.torch.Tensor):
                    raise TypeError(f"forward returned {type(out).__name__}, expected a tensor")
                result = {"y": self.array(out)}
        finally:
            for h in hooks:
                h.remove()
        for path in header.get("attrs", []):
            value = obj
            for part in path.split("."):
                value = getattr(value, part, None)
            if isinstance(value, self.torch.Tensor):
                result[f"attr:{path}"] = self.array(value)
        result.update(captured)
        return {"calls": calls}, result

    def op_gradients(self, header, arrays):
        """Forward, then backward from the parent's upstream gradient; return the output and the raw
        gradients of the parameters the parent names (at the flat indices it names, or whole). The
        parent compares them with the reference's: nothing here is a verdict or a summary."""
        obj = self.objects[header["handle"]]
        obj.train(False)
        params = dict(obj.named_parameters())
        for p in params.values():
            p.grad = None
        with self.torch.enable_grad():
            out = obj(self.tensor(arrays["x"]))
            if not isinstance(out, self.torch.Tensor):
                raise TypeError(f"forward returned {type(out).__name__}, expected a tensor")
            upstream = self.tensor(arrays["grad_out"]).to(out.dtype)
            if out.shape != upstream.shape:  # the check out.backward(upstream) makes, with its words
                raise RuntimeError(f"Mismatch in shape: grad_output[0] has a shape of {upstream.shape} and "
                                   f"output[0] has a shape of {out.shape}.")
            # The same gradients as out.backward(upstream), bit for bit, without the ~1 s import of sympy
            # that torch makes for an explicit upstream gradient.
            (out * upstream).sum().backward()
        result, missing = {"y": self.array(out)}, []
        for name, where in header.get("gradients", {}).items():
            grad = params[name].grad if name in params else None
            if grad is None:
                missing.append(name)
                continue
            flat = grad.detach().reshape(-1)
            if where != "all":
                flat = flat[self.torch.as_tensor(where, dtype=self.torch.long, device=flat.device)]
            result[f"grad:{name}"] = self.array(flat)
        return {"no_gradient": missing}, result

    def op_train(self, header, arrays):
        import trainer

        model = self.objects[header["handle"]]
        self.torch.set_num_threads(getattr(self, "_train_threads", self.torch.get_num_threads()))
        try:
            outcome = trainer.train_and_predict(model, arrays, header["recipe"], device=header.get("device", "cpu"))
        finally:
            self.torch.set_num_threads(1)
        return outcome.header, outcome.arrays

    def op_state(self, header, arrays):
        """The parameters of a built module as raw arrays (the trained weights, for the parent to check)."""
        obj = self.objects[header["handle"]]
        return {}, {name: p.detach().cpu().float().numpy() for name, p in obj.named_parameters()}


def protocol_off_stdio() -> tuple[int, int]:
    """The protocol came on stdin/stdout (IN_FD 0, OUT_FD 1: Windows, which cannot pass other pipes). Move it
    to private descriptors (not inherited by processes the student starts) and point stdin at devnull and
    stdout at stderr, before any student code runs: print() and input() can never reach the protocol."""
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    if sys.platform == "win32":  # raw bytes: no newline translation on the protocol's descriptors
        import msvcrt

        for fd in (in_fd, out_fd):
            msvcrt.setmode(fd, os.O_BINARY)
    return in_fd, out_fd


def prepare(site_dirs: list[str]) -> None:
    """The worker's imports and environment: its own folder first, then the site folders it was given (also
    what fork_server.py does before its imports)."""
    if HERE not in sys.path[:1]:
        sys.path.insert(0, HERE)
    sys.path += [p for p in site_dirs if p not in sys.path]
    os.environ.setdefault("MPLBACKEND", "Agg")


def main() -> None:
    in_fd, out_fd = int(sys.argv[1]), int(sys.argv[2])
    if (in_fd, out_fd) == (0, 1):
        in_fd, out_fd = protocol_off_stdio()
    prepare(sys.argv[3:])
    Worker(in_fd, out_fd).serve()


if __name__ == "__main__":
    main()
