"""Step-wise residency: networks whose weights are on the compute device only while their step runs
(memory tiers ``balanced`` and ``low``, see :mod:`deepsound_rt.memory`).

An offloaded network keeps one host copy of every parameter and buffer (pinned memory when the
device is a GPU, so copies run asynchronously at full bus speed). Between its steps the modules
hold meta tensors: no storage anywhere, and a use outside a step fails loudly instead of running
somewhere unexpected. :meth:`Residency.on_device` places the weights for one step and drops them
after; nothing is copied back, since inference never writes weights.

On a GPU the copies run on a side stream and the compute stream waits for them, so work the CPU
does meanwhile (decoding video frames) overlaps the transfer. With ``in_order`` a module waits
only for its own subtree's weights, when it is first called, so a network's first layers compute
while its last ones are still on the bus; that relies on every tensor being used inside the
forward of its owner or of an owner's ancestor (the tests check it for the MLLM). On a CPU host
and device are one memory: the host copies themselves are placed, and only the bookkeeping runs.
"""
from __future__ import annotations

import bisect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


def map_tensor(tensor: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` applied to a plain tensor, or to every inner tensor of a wrapper subclass (torchao's
    int8 weights), rebuilt around the results."""
    if not is_traceable_wrapper_subclass(tensor):
        return fn(tensor)
    names, context = tensor.__tensor_flatten__()
    inner = {name: map_tensor(getattr(tensor, name), fn) for name in names}
    return type(tensor).__tensor_unflatten__(inner, context, tensor.size(), tensor.stride())


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of storage, counting every inner tensor of a wrapper subclass."""
    sizes: list[int] = []
    map_tensor(tensor, lambda t: sizes.append(t.numel() * t.element_size()) or t)
    return sum(sizes)


class SameMemory:
    """Copies for a CPU device: the host copy is the device copy, so there is nothing to wait for."""

    def begin(self) -> None:
        pass

    def copy(self, host: torch.Tensor) -> torch.Tensor:
        return host

    def mark(self, count: int) -> None:
        """The first ``count`` tensors of the network have been issued."""

    def wait(self, count: int) -> None:
        """The compute device may now use the first ``count`` tensors."""

    def end(self) -> None:
        pass


class CudaCopyStream(SameMemory):
    """Copies on a side stream from pinned host memory; the compute stream waits on events."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.compute = torch.cuda.current_stream(device)
        self.marks: list[int] = []
        self.events: list[torch.cuda.Event] = []

    def begin(self) -> None:
        self.compute = torch.cuda.current_stream(self.device)
        # The targets come from the compute stream's pool: blocks it freed may still be in use by
        # kernels it has queued, so the copies start after them.
        self.stream.wait_stream(self.compute)

    def copy(self, host: torch.Tensor) -> torch.Tensor:
        target = torch.empty_like(host, device=self.device)
        with torch.cuda.stream(self.stream):
            target.copy_(host, non_blocking=True)
        return target

    def mark(self, count: int) -> None:
        event = torch.cuda.Event()
        event.record(self.stream)
        self.marks.append(count)
        self.events.append(event)

    def wait(self, count: int) -> None:
        self.compute.wait_event(self.events[bisect.bisect_left(self.marks, count)])

    def end(self) -> None:
        # No copy may outlive the step, not even one that nothing waited for: its target goes back
        # to the compute stream's pool.
        self.compute.wait_stream(self.stream)
        self.marks, self.events = [], []


@dataclass
class _Slot:
    """One parameter or buffer: its host copy and every module table entry that holds it."""

    host: torch.Tensor
    is_parameter: bool
    owners: list[tuple[dict, str]] = field(default_factory=list)

    def hold(self, value: torch.Tensor) -> None:
        if self.is_parameter:
            value = nn.Parameter(value, requires_grad=False)
        for table, name in self.owners:
            table[name] = value


class _Network:
    """A network's tensors in first-use order: modules in pre-order from ``roots``, each module's
    own tensors before its children's; a tensor shared by several modules is one slot."""

    def __init__(self, roots: Sequence[nn.Module], to_host: Callable[[torch.Tensor], torch.Tensor], in_order: bool):
        self.in_order = in_order
        self.slots: list[_Slot] = []
        self.groups: list[list[_Slot]] = []  # the new slots of each module that has some, in order
        self.subtree_end: list[tuple[nn.Module, int]] = []  # module, slots its forward needs
        seen_modules: set[int] = set()
        by_tensor: dict[int, _Slot] = {}

        def visit(module: nn.Module) -> None:
            if id(module) in seen_modules:
                return
            seen_modules.add(id(module))
            group = []
            for table, is_parameter in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in table.items():
                    if tensor is None:
                        continue
                    slot = by_tensor.get(id(tensor))
                    if slot is None:
                        slot = by_tensor[id(tensor)] = _Slot(map_tensor(tensor.detach(), to_host), is_parameter)
                        group.append(slot)
                    slot.owners.append((table, name))
            if group:
                self.slots += group
                self.groups.append(group)
            for child in module._modules.values():
                if child is not None:
                    visit(child)
            self.subtree_end.append((module, len(self.slots)))

        for root in roots:
            visit(root)
        self.placeholders = [torch.empty(s.host.shape, dtype=s.host.dtype, device="meta") for s in self.slots]
        self.hooks: list = []

    def place(self, queue: SameMemory) -> None:
        queue.begin()
        count = 0
        for group in self.groups:
            for slot in group:
                slot.hold(map_tensor(slot.host, queue.copy))
            count += len(group)
            queue.mark(count)
        if not self.in_order:
            if count:
                queue.wait(count)
            return
        for module, needed in self.subtree_end:
            if needed:
                self.hooks.append(_wait_once(module, queue, needed))

    def release(self, queue: SameMemory) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []
        queue.end()
        for slot, placeholder in zip(self.slots, self.placeholders):
            slot.hold(placeholder)


def _wait_once(module: nn.Module, queue: SameMemory, needed: int):
    """A forward pre-hook that makes the compute stream wait for the first ``needed`` tensors, then
    removes itself (so steady-state decoding runs hook-free)."""

    def hook(_module, _args):
        queue.wait(needed)
        handle.remove()

    handle = module.register_forward_pre_hook(hook)
    return handle


class Residency:
    """The offloaded networks of one Engine, by name. :meth:`on_device` with a name that was never
    offloaded does nothing, so callers need not know the tier."""

    def __init__(self, device: torch.device, queue: SameMemory | None = None):
        self.device = device
        self.queue = queue or (CudaCopyStream(device) if device.type == "cuda" else SameMemory())
        self._networks: dict[str, _Network] = {}
        self._depth: dict[str, int] = {}

    def offload(self, name: str, roots: Sequence[nn.Module], in_order: bool = False) -> None:
        """Move ``roots``' weights to host copies now; from here on they are on the device only
        inside :meth:`on_device`. ``roots`` in the order the step first uses them."""
        pinned = self.device.type == "cuda"

        def to_host(tensor: torch.Tensor) -> torch.Tensor:
            if not pinned:
                return tensor.to("cpu")
            return torch.empty_like(tensor, device="cpu", pin_memory=True).copy_(tensor)

        network = _Network(roots, to_host, in_order)
        for slot, placeholder in zip(network.slots, network.placeholders):
            slot.hold(placeholder)
        self._networks[name] = network
        self._depth[name] = 0

    def __contains__(self, name: str) -> bool:
        return name in self._networks

    @contextmanager
    def on_device(self, *names: str) -> Iterator[None]:
        """The named networks' weights on the device for the body (nested uses place them once)."""
        placed = []
        try:
            for name in names:
                if name in self._networks:
                    if self._depth[name] == 0:
                        self._networks[name].place(self.queue)
                    self._depth[name] += 1
                    placed.append(name)
            yield
        finally:
            for name in reversed(placed):
                self._depth[name] -= 1
                if self._depth[name] == 0:
                    self._networks[name].release(self.queue)

    def host_tensors(self, name: str) -> list[torch.Tensor]:
        """The host copies of a network's weights (where they live between steps)."""
        return [slot.host for slot in self._networks[name].slots]

    def host_bytes(self, name: str) -> int:
        return sum(tensor_bytes(t) for t in self.host_tensors(name))
