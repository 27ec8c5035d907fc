"""Record every call of the modules to profile, with its real inputs, in execution order.

One dry forward pass, with each selected module's ``forward`` wrapped for
its duration, stores each call's positional and keyword arguments (tensors
detached and cloned, so the module's in-place ops and later layers cannot
change them).  A wrapper rather than a forward pre-hook: hooks see keyword
arguments only from torch 2.0 on (``with_kwargs``), and JetPack 4.6 has 1.10.  A module called
twice (ResNet's shared ReLU) gives two entries.  Replaying an entry calls the
module alone on exactly what it saw inside the model.

TorchScript modules run their submodules inside the interpreter, where Python
hooks never fire; for them each forward graph is copied with the inputs of
every submodule call added to its outputs, and the capture recurses into the
called submodules with those inputs.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .errors import ProfilerError, one_line


class InputRejected(ProfilerError):
    """The model raised on the example input (wrong shape, dtype or device)."""


@dataclass
class LayerCall:
    """One call of one module: enough to replay it in isolation."""

    index: int
    label: str  # <OpType>_<index>, as in the original profiler's output
    module_path: str  # "features.0"; "" for the whole model
    op: str
    module: Callable[..., Any]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]

    def __call__(self) -> Any:
        return self.module(*self.args, **self.kwargs)


def parse_granularity(text: str) -> Optional[int]:
    """``leaf`` -> None; ``children`` -> 1; ``depth:N`` -> N (N >= 1)."""
    text = text.strip().lower()
    if text == "leaf":
        return None
    if text == "children":
        return 1
    if text.startswith("depth:"):
        try:
            depth = int(text[len("depth:"):])
        except ValueError:
            depth = 0
        if depth >= 1:
            return depth
    raise ProfilerError("bad granularity %r: use leaf, children or depth:N (N >= 1)" % text)


def detached(value: Any) -> Any:
    """A copy of a call's inputs that no later computation can modify."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(detached(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


def call_model(model: Callable[..., Any], example_input: Any) -> Any:
    """A tuple/list is passed as positional arguments, a dict as keywords, anything else as one argument."""
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


def op_name(module: Any) -> str:
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", None) or type(module).__name__
    return type(module).__name__


def _is_unit(module: nn.Module, depth: int, granularity: Optional[int]) -> bool:
    leaf = next(iter(module.children()), None) is None
    if granularity is None:
        return leaf
    return depth == granularity or (leaf and depth < granularity)


def _rejected(exc: Exception) -> InputRejected:
    return InputRejected("the model rejects the example input: %s: %s" % (type(exc).__name__, one_line(exc)))


def capture(model: Callable[..., Any], example_input: Any, granularity: str = "leaf") -> List[LayerCall]:
    """The calls to profile, in execution order, from one forward pass under ``torch.no_grad``."""
    level = parse_granularity(granularity)
    calls: List[Tuple[str, str, Any, tuple, dict]] = []
    with torch.no_grad():
        if isinstance(model, torch.jit.ScriptModule):
            args, kwargs = as_call(example_input)
            if kwargs:
                raise InputRejected("a TorchScript model takes positional inputs only")
            try:
                model(*args)
            except Exception as exc:
                raise _rejected(exc) from None
            try:  # the model takes the input: a failure from here on is ours, not the input's
                _capture_script(model, "forward", "", args, 0, level, calls)
            except Exception as exc:
                raise ProfilerError("cannot split TorchScript model %s into its layers on torch %s: %s: %s"
                                    % (op_name(model), torch.__version__, type(exc).__name__, one_line(exc))
                                    ) from None
        elif isinstance(model, nn.Module):
            _capture_module(model, example_input, level, calls)
        else:
            raise ProfilerError("the model must be a torch.nn.Module, got %s" % type(model).__name__)
    if not calls:  # nothing selected was called: the model itself is the one unit
        args, kwargs = as_call(example_input)
        calls.append(("", op_name(model), model, detached(tuple(args)), detached(kwargs)))
    entries = []
    for k, (path, op, module, args, kwargs) in enumerate(calls):
        entries.append(LayerCall(k, "%s_%d" % (op, k), path, op, module, args, kwargs))
    return entries


def as_call(example_input: Any) -> Tuple[tuple, dict]:
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input), {}
    if isinstance(example_input, dict):
        return (), dict(example_input)
    return (example_input,), {}


def _capture_module(model: nn.Module, example_input: Any, level: Optional[int],
                    calls: List[Tuple[str, str, Any, tuple, dict]]) -> None:
    wrapped = []

    def recording(path: str, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        def forward_and_record(*args: Any, **kwargs: Any) -> Any:
            calls.append((path, op_name(module), module, detached(args), detached(kwargs)))
            return forward(*args, **kwargs)
        return forward_and_record

    for path, module in model.named_modules():
        if path and _is_unit(module, path.count(".") + 1, level):
            wrapped.append((module, module.__dict__.get("forward")))  # an instance's own forward, if it has one
            module.forward = recording(path, module, module.forward)
    try:
        call_model(model, example_input)
    except Exception as exc:
        raise _rejected(exc) from None
    finally:
        for module, own in wrapped:
            if own is None:
                del module.forward
            else:
                module.forward = own


def _capture_script(module: Any, method: str, path: str, args: tuple, depth: int, level: Optional[int],
                    calls: List[Tuple[str, str, Any, tuple, dict]]) -> None:
    """Record ``module.<method>(*args)``'s unit calls by running an instrumented copy of its graph.

    Tracing turns a second call of a module into a method ``forward1``;
    scripting routes ``forward`` through helpers like ``_forward_impl``: each
    is followed as a method of its own module.
    """
    if depth > 0 and _is_unit(module, depth, level):
        calls.append((path, op_name(module), _script_method(module, method), detached(tuple(args)), {}))
        return
    plan = _instrumented(module, method)
    if plan is None:  # control flow around the calls: the module is measured as one unit
        if depth > 0:
            calls.append((path, op_name(module), _script_method(module, method), detached(tuple(args)), {}))
        return
    function, targets, n_outputs, arities = plan
    values = function(module._c, *args)
    captured = list(values[n_outputs:])
    for (names, child_method), arity in zip(targets, arities):
        child = module
        for name in names:
            child = getattr(child, name)
        child_args, captured = tuple(captured[:arity]), captured[arity:]
        child_path = ".".join(([path] if path else []) + names)
        child_depth = child_path.count(".") + 1 if child_path else 0
        _capture_script(child, child_method, child_path, child_args, child_depth, level, calls)


def _instrumented(module: Any, method: str):
    """(function, [(attribute path, method) per call], #outputs, [#args per call]) or None.

    The copy returns, after the original outputs, a clone of every argument
    of every submodule call, taken just before the call (later in-place ops
    such as ``relu_`` must not change what was captured).
    """
    try:
        graph = _script_method(module, method).graph.copy()
    except (AttributeError, RuntimeError):
        return None
    self_value = next(iter(graph.inputs()))
    targets, arities, extra = [], [], []
    for node in list(graph.nodes()):
        for block in node.blocks():
            if any(inner.kind() == "prim::CallMethod" for inner in block.nodes()):
                return None
        if node.kind() != "prim::CallMethod":
            continue
        inputs = list(node.inputs())
        names = _attribute_path(inputs[0], self_value)
        if names is None:
            return None
        targets.append((names, node.s("name")))
        arities.append(len(inputs) - 1)
        for value in inputs[1:]:
            extra.append(_clone_before(graph, node, value))
    if not targets:
        return None
    ret = graph.return_node()
    outputs = list(ret.inputs())
    tup = graph.create("prim::TupleConstruct", outputs + extra)
    tup.insertBefore(ret)
    tup.output().setType(torch._C.TupleType([v.type() for v in outputs + extra]))
    ret.removeAllInputs()  # torch 1.10's Graph has no eraseOutput; its return Node's inputs are the outputs
    ret.addInput(tup.output())
    try:
        function = torch._C._create_function_from_graph("profiler_capture", graph)
    except RuntimeError:
        return None
    return function, targets, len(outputs), arities


def _script_method(module: Any, method: str) -> Any:
    """The compiled method itself: an in-memory traced submodule's ``forward`` is Python that refuses calls."""
    return module._c._get_method(method)


def _clone_before(graph: Any, node: Any, value: Any) -> Any:
    if not value.type().isSubtypeOf(torch._C.TensorType.get()):
        return value
    none = graph.create("prim::Constant")
    none.output().setType(torch._C.NoneType.get())
    none.insertBefore(node)
    clone = graph.create("aten::clone", [value, none.output()])
    clone.output().setType(value.type())
    clone.insertBefore(node)
    return clone.output()


def _attribute_path(value: Any, self_value: Any) -> Optional[List[str]]:
    names: List[str] = []
    while value.unique() != self_value.unique():
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.insert(0, node.s("name"))
        value = node.input()
    return names
