"""Component selectors -> which entries of which parameters an LLC estimate samples.

A head is a slice of fused matrices (GPT-2's `c_attn`, GPT-NeoX's interleaved
`query_key_value`), so restriction must work on entries, not whole tensors. Selectors:

    all                 every floating-point parameter
    embed, unembed      token (+ position) embeddings; the output projection (tied: the same tensor)
    l{L}.attn, l{L}.mlp the attention / MLP module of layer L (layer norms excluded)
    l{L}h{H}            head H: its rows of Q, K, V and its columns of the output projection
                        (under GQA, where K/V are shared by a group, only Q rows and O columns)
    l{L}g{G}            GQA group G: its heads' Q rows and O columns plus the group's K/V rows
    a+b or [a, b]       union

Anything else is an fnmatch pattern over parameter names (the older `sample_params`).
`resolve_selection` returns {parameter name: bool mask of its shape, or None for the whole
tensor}; names are those of `model.named_parameters()`. Imports torch only.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

Selection = dict[str, "torch.Tensor | None"]


@dataclass(frozen=True)
class HeadParam:
    """How one parameter of a layer holds per-head slices along `dim`."""

    suffix: str     # name under the layer prefix, e.g. "attn.c_attn.weight"
    dim: int        # the axis heads are laid out on
    kind: str       # "q", "k", "v", "o", "qkv_concat" (Q|K|V blocks), "qkv_interleaved" ((H, 3, hd))


@dataclass(frozen=True)
class Family:
    """Where the components of one architecture live (parameter names)."""

    layer: str                          # prefix of layer L, e.g. "transformer.h.{L}."
    attn: str                           # the attention module under the layer prefix ("" = whole layer)
    mlp: str | None
    embed: tuple[str, ...]
    unembed: tuple[str, ...]
    heads: tuple[HeadParam, ...]


_LLAMA = Family(
    layer="model.layers.{L}.", attn="self_attn.", mlp="mlp.", embed=("model.embed_tokens.weight",),
    unembed=("lm_head.weight",),
    heads=tuple(HeadParam(f"self_attn.{p}_proj.{w}", 0, p) for p in "qkv" for w in ("weight", "bias"))
    + (HeadParam("self_attn.o_proj.weight", 1, "o"),))

FAMILIES: dict[str, Family] = {
    "llc-attn-only": Family(
        layer="layers.{L}.", attn="", mlp=None, embed=("wte.weight", "wpe.weight"), unembed=("unembed.weight",),
        heads=(HeadParam("qkv.weight", 0, "qkv_concat"), HeadParam("qkv.bias", 0, "qkv_concat"),
               HeadParam("out.weight", 1, "o"))),
    "gpt2": Family(
        layer="transformer.h.{L}.", attn="attn.", mlp="mlp.", embed=("transformer.wte.weight", "transformer.wpe.weight"),
        unembed=("lm_head.weight",),
        # Conv1D stores weights as (in, out): Q|K|V are column blocks, the output projection's input is rows.
        heads=(HeadParam("attn.c_attn.weight", 1, "qkv_concat"), HeadParam("attn.c_attn.bias", 0, "qkv_concat"),
               HeadParam("attn.c_proj.weight", 0, "o"))),
    "gpt_neox": Family(
        layer="gpt_neox.layers.{L}.", attn="attention.", mlp="mlp.", embed=("gpt_neox.embed_in.weight",),
        unembed=("embed_out.weight", "lm_head.weight"),     # transformers 5 names it lm_head
        heads=(HeadParam("attention.query_key_value.weight", 0, "qkv_interleaved"),
               HeadParam("attention.query_key_value.bias", 0, "qkv_interleaved"),
               HeadParam("attention.dense.weight", 1, "o"))),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
}

_NAMED = re.compile(r"^(all|embed|unembed|heads|l(\d+)\.(attn|mlp)|l(\d+)([hg])(\d+))$")


@dataclass(frozen=True)
class Dims:
    """The attention shape of a checkpoint's architecture (from its config)."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int


def _attr(config: object, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def dims_of(config: object) -> Dims:
    """Layers, heads, K/V heads and head size from a Hugging Face config (or its dict)."""
    if isinstance(config, dict):
        config = type("Cfg", (), config)()
    layers = _attr(config, "num_hidden_layers", "n_layer", "n_layers")
    heads = _attr(config, "num_attention_heads", "n_head", "n_heads")
    width = _attr(config, "hidden_size", "n_embd", "d_model")
    if layers is None or heads is None or width is None:
        raise ValueError(f"Cannot read layers/heads/width from the model config ({type(config).__name__}); "
                         "per-head selectors need a GPT-2, GPT-NeoX, Llama/Mistral or demo config.")
    kv = _attr(config, "num_key_value_heads") or heads
    hd = _attr(config, "head_dim") or width // heads
    return Dims(layers=layers, heads=heads, kv_heads=kv, head_dim=hd)


def family_of(model_type: str | None) -> Family:
    fam = FAMILIES.get(model_type or "")
    if fam is None:
        raise ValueError(f"Component selectors are not defined for model_type {model_type!r}; supported: "
                         f"{sorted(FAMILIES)} (or pass fnmatch patterns over parameter names).")
    return fam


def expand_selectors(selectors: str | Sequence[str], config: object) -> list[str]:
    """Sweep-side expansion: `heads` -> every l{L}h{H} of the architecture; others kept as given."""
    items = [selectors] if isinstance(selectors, str) else list(selectors)
    out: list[str] = []
    for s in items:
        if s == "heads":
            d = dims_of(config)
            out.extend(f"l{layer}h{h}" for layer in range(d.layers) for h in range(d.heads))
        elif s not in out:
            out.append(s)
    return out


def check_selector(selector: str, config: object) -> None:
    """Refuse, in one sentence, a named selector the architecture lacks (a layer, head, group or MLP).

    A sweep checks its components against the checkpoints' config.json at submit time, so that
    `l1.mlp` on an attention-only model is refused once instead of failing every job. fnmatch
    patterns, `all` and `heads` pass (a pattern is checked against parameter names in the job)."""
    for part in (p.strip() for p in selector.split("+")):
        m = _NAMED.match(part)
        if m is not None and part not in ("all", "heads"):
            _check_named(part, m, config)


def _check_named(part: str, m: re.Match[str], config: object) -> tuple[Family, Dims | None, int]:
    """The family, dims and layer of a named selector (not all/heads) after checking it exists."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    fam = family_of(model_type)
    if part in ("embed", "unembed"):
        return fam, None, -1
    dims = dims_of(config)
    layer = int(m[2] if m[2] is not None else m[4])
    if layer >= dims.layers:
        raise ValueError(f"Selector {part!r} names layer {layer} but the model has {dims.layers} layers (l0..l{dims.layers - 1}).")
    if m[3] == "mlp" and fam.mlp is None:
        raise ValueError(f"Selector {part!r}: this {model_type} model has no MLP; use l{layer}.attn or a head.")
    if m[5] == "h" and int(m[6]) >= dims.heads:
        raise ValueError(f"Selector {part!r} names head {m[6]} but layer {layer} has {dims.heads} heads (h0..h{dims.heads - 1}).")
    if m[5] == "g" and int(m[6]) >= dims.kv_heads:
        raise ValueError(f"Selector {part!r} names group {m[6]} but the model has {dims.kv_heads} key/value groups.")
    return fam, dims, layer


def is_component_selector(selector: str) -> bool:
    """True for the named language (all, embed, l0h1, ...), False for an fnmatch pattern."""
    return all(_NAMED.match(part.strip()) for part in selector.split("+"))


def resolve_selection(model: nn.Module, selectors: str | Sequence[str] | None) -> Selection:
    """{parameter name: bool mask (None = whole tensor)} for the union of `selectors`."""
    params = dict(model.named_parameters())
    floating = {n: p for n, p in params.items() if p.is_floating_point()}
    if selectors is None:
        return dict.fromkeys(floating)
    items = [selectors] if isinstance(selectors, str) else list(selectors)
    parts = [p.strip() for s in items for p in s.split("+")]
    out: Selection = {}
    for part in parts:
        sel = _resolve_one(model, floating, part)
        if not sel:
            what = f"sample_params={items}" if len(parts) == 1 else f"selector {part!r} of sample_params={items}"
            raise ValueError(f"Nothing to sample: {what} matches no parameter (names look like {list(params)[:3]}).")
        for name, mask in sel.items():
            out[name] = _union(out[name], mask) if name in out else mask
    return {n: out[n] for n in floating if n in out}           # model order


def _union(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None or b is None:
        return None
    m = a | b
    return None if bool(m.all()) else m


def _canonical(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Parameter names as named_parameters() lists them (a tied alias maps to its first name)."""
    first: dict[int, str] = {}
    alias: dict[str, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        alias[n] = first.setdefault(id(p), n)
    return [alias[n] for n in names if n in alias]


def _resolve_one(model: nn.Module, params: dict[str, torch.Tensor], part: str) -> Selection:
    m = _NAMED.match(part)
    if m is None:
        return {n: None for n in params if fnmatch.fnmatchcase(n, part)}
    if part == "all":
        return dict.fromkeys(params)
    if part == "heads":
        raise ValueError("Selector 'heads' names many components; expand it first (a sweep's `components: [heads]` "
                         "does) or pick one head such as 'l0h1'.")
    fam, dims, layer = _check_named(part, m, getattr(model, "config", None))
    if part in ("embed", "unembed"):
        names = fam.embed if part == "embed" else fam.unembed
        return {n: None for n in _canonical(model, names) if n in params}
    prefix = fam.layer.format(L=layer)
    if m[3] is not None:
        sub = prefix + (fam.attn if m[3] == "attn" else fam.mlp)
        return {n: None for n in params if n.startswith(sub)}
    index = int(m[6])
    if m[5] == "h":
        heads, groups = [index], ([index] if dims.kv_heads == dims.heads else [])
    else:
        per = dims.heads // dims.kv_heads
        heads, groups = list(range(index * per, (index + 1) * per)), [index]
    out: Selection = {}
    for hp in fam.heads:
        name = prefix + hp.suffix
        if name in params:
            mask = _head_mask(params[name], hp, dims, heads, groups)
            if bool(mask.any()):
                out[name] = mask
    return out


def _head_mask(param: torch.Tensor, hp: HeadParam, d: Dims, heads: list[int], groups: list[int]) -> torch.Tensor:
    """Bool mask of param's shape selecting `heads`' Q/O slices and `groups`' K/V slices."""
    dim = hp.dim if param.ndim > 1 else 0
    axis = torch.zeros(param.shape[dim], dtype=torch.bool)
    q_size, kv_size = d.heads * d.head_dim, d.kv_heads * d.head_dim
    if hp.kind in ("q", "o"):
        rows = axis.view(d.heads, -1)
        rows[heads] = True
    elif hp.kind in ("k", "v"):
        axis.view(d.kv_heads, -1)[groups] = True
    elif hp.kind == "qkv_concat":
        q, k, v = axis.split([q_size, kv_size, kv_size])
        q.view(d.heads, -1)[heads] = True
        k.view(d.kv_heads, -1)[groups] = True
        v.view(d.kv_heads, -1)[groups] = True
    elif hp.kind == "qkv_interleaved":          # GPT-NeoX: (heads, 3, head_dim), no GQA
        axis.view(d.heads, 3, -1)[heads] = True
    else:  # pragma: no cover - table entries are fixed above
        raise AssertionError(hp.kind)
    shape = [1] * param.ndim
    shape[dim] = -1
    return axis.view(shape).expand(param.shape).clone()
