"""Activation checkpointing for one chain at a time (SGLDConfig.activation_checkpointing).

Each decoder layer then keeps only its input for the backward and recomputes its own activations
there, so a chain-step's saved activations shrink to the layer inputs plus what lies outside the
layers (embeddings, logits) and one layer's recompute, at the cost of about one more forward.
Hugging Face's own switch does it (activation_checkpointing_enable, non-reentrant); HF layers
checkpoint only while their own `training` flag is set, so only those layers' flags are set
(their children, dropout included, stay in eval mode). Everything is put back afterwards.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

_ATTRS = ("gradient_checkpointing", "_gradient_checkpointing_func")
_HOOK_ATTRS = ("_require_grads_hook", "_require_grads_hooks")   # one handle, or a list, by transformers version
_MISSING = object()


def _input_grad_hooks(model: nn.Module) -> list:
    """The input-grad hook handles Hugging Face keeps on the model."""
    one, many = (model.__dict__.get(k) for k in _HOOK_ATTRS)
    return [h for h in [one, *(many if isinstance(many, list) else [])] if h is not None]


@dataclass
class Checkpointing:
    """The checkpointed layers of a model, and how to undo the switch."""

    layers: list[nn.Module]
    restore: Callable[[], None]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Run without checkpointing (the layers' flags off), e.g. to measure what it saves."""
        for m in self.layers:
            m.training = False
        try:
            yield
        finally:
            for m in self.layers:
                m.training = True


def enable_checkpointing(model: nn.Module) -> Checkpointing:
    """Switch on the model's activation checkpointing, or refuse a model without it (ValueError)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"SGLDConfig.activation_checkpointing=True needs a model with activation checkpointing "
                         f"(a Hugging Face model whose supports_gradient_checkpointing is True), which "
                         f"{type(model).__name__} is not: set activation_checkpointing=False.")
    from transformers.modeling_layers import GradientCheckpointingLayer

    modules = list(model.modules())
    saved = [(m, m.training, {k: m.__dict__.get(k, _MISSING) for k in _ATTRS}) for m in modules]
    input_hooks = {k: model.__dict__.get(k, _MISSING) for k in _HOOK_ATTRS}
    own = {id(h) for h in _input_grad_hooks(model)}

    def drop_new_input_hook() -> None:
        # HF makes the embeddings' output require grad for reentrant checkpoints; non-reentrant ones
        # need no such hook (it would add a gradient nobody asked for): keep only the model's own.
        for h in _input_grad_hooks(model):
            if id(h) not in own:
                h.remove()
        for k, v in input_hooks.items():
            if v is _MISSING:
                model.__dict__.pop(k, None)
            else:
                model.__dict__[k] = v

    def restore() -> None:
        for m, training, attrs in saved:
            m.training = training
            for k, v in attrs.items():
                if v is _MISSING:
                    m.__dict__.pop(k, None)
                else:
                    setattr(m, k, v)
        drop_new_input_hook()

    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:   # transformers < 5: the older name of the same switch
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        drop_new_input_hook()
        layers = [m for m in modules if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
        if not layers:
            raise ValueError(f"SGLDConfig.activation_checkpointing=True found no checkpointable layer in "
                             f"{type(model).__name__}: set activation_checkpointing=False.")
    except BaseException:
        restore()
        raise
    for m in layers:
        m.training = True
    return Checkpointing(layers=layers, restore=restore)
