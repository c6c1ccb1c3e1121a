"""Component selectors against each architecture's own computation.

For a head's mask: perturbing its Q/K/V entries changes only that head's slice of the
output projection's input; perturbing every other Q/K/V entry leaves that slice alone
(the mask is complete); perturbing its output-projection entries changes nothing when
the head's slice is zero (they multiply only that head).
"""
from __future__ import annotations

import pytest
import torch

from workers.llc.components import check_selector, dims_of, expand_selectors, is_component_selector, resolve_selection

from .llc_family_models import OUT_PROJ, VOCAB, tiny

FAMILIES = ["llc-attn-only", "gpt2", "gpt_neox", "llama", "mistral"]
TOKENS = torch.randint(0, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


def _heads_input(model, layer: int) -> torch.Tensor:
    """The output projection's input of `layer` on TOKENS, as (B, T, heads, head_dim)."""
    seen = {}
    mod = model.get_submodule(OUT_PROJ[model.config.model_type].format(L=layer))
    handle = mod.register_forward_pre_hook(lambda m, args: seen.setdefault("z", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=TOKENS)
    finally:
        handle.remove()
    d = dims_of(model.config)
    return seen["z"].reshape(*seen["z"].shape[:2], d.heads, d.head_dim)


def _perturb(model, masks: dict, *, invert: bool = False, only: str | None = None) -> None:
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, mask in masks.items():
            if only is not None and only not in name:
                continue
            m = torch.ones_like(params[name], dtype=torch.bool) if mask is None else mask
            params[name].add_(torch.where(~m if invert else m, 0.5 * torch.randn(m.shape, generator=g), 0.0))


def _qkv_only(model, masks: dict) -> dict:
    out_name = OUT_PROJ[model.config.model_type]
    return {n: m for n, m in masks.items() if not n.startswith(out_name.split("{L}")[0]) or out_name.split(".")[-1] not in n}


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per head: whether its slice changed (B, T, H, hd) -> (H,)."""
    return ((a - b).abs().amax(dim=(0, 1, 3)) > 1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer,head", [(0, 0), (1, 3)])
def test_head_mask_moves_exactly_that_head(family: str, layer: int, head: int) -> None:
    model = tiny(family)
    d = dims_of(model.config)
    masks = resolve_selection(model, f"l{layer}h{head}")
    qkv = _qkv_only(model, masks)
    assert qkv and len(qkv) < len(masks), f"{family}: head mask should cover Q/K/V and the output projection"
    z0 = _heads_input(model, layer)
    _perturb(model, qkv)
    expect = torch.zeros(d.heads, dtype=torch.bool)
    expect[head] = True
    assert torch.equal(_changed(_heads_input(model, layer), z0), expect)

    # Completeness: everything else in the layer's Q/K/V leaves this head alone, except K/V that GQA
    # shares with the head's group (not part of a head, part of the group selector).
    model = tiny(family)
    qkv_all = _qkv_only(model, resolve_selection(model, [f"l{layer}h{h}" for h in range(d.heads)]))
    head_masks = {n: masks.get(n, torch.zeros_like(p, dtype=torch.bool)) for n, p in model.named_parameters() if n in qkv_all}
    if d.kv_heads == d.heads:
        _perturb(model, head_masks, invert=True)
        assert not bool(_changed(_heads_input(model, layer), z0)[head])


@pytest.mark.parametrize("family", FAMILIES)
def test_output_projection_columns_belong_to_the_head(family: str) -> None:
    model = tiny(family)
    layer, head = 1, 2
    masks = resolve_selection(model, f"l{layer}h{head}")
    out_mod = model.get_submodule(OUT_PROJ[family].format(L=layer))
    out_w = [n for n in masks if n.startswith(OUT_PROJ[family].format(L=layer) + ".")]
    assert out_w, f"{family}: no output-projection entries in the head mask"
    d = dims_of(model.config)
    z = torch.randn(2, 5, d.heads, d.head_dim)
    z_zeroed = z.clone()
    z_zeroed[:, :, head] = 0
    with torch.no_grad():
        before_full, before_zero = out_mod(z.flatten(2)), out_mod(z_zeroed.flatten(2))
    _perturb(model, {n: masks[n] for n in out_w})
    with torch.no_grad():
        assert torch.equal(out_mod(z_zeroed.flatten(2)), before_zero)
        assert not torch.allclose(out_mod(z.flatten(2)), before_full)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_gqa_group_adds_its_key_value_rows(family: str) -> None:
    model = tiny(family)
    d = dims_of(model.config)
    assert d.kv_heads == 2 and d.heads == 4
    head = resolve_selection(model, "l0h1")
    group = resolve_selection(model, "l0g0")
    assert not any("k_proj" in n or "v_proj" in n for n in head)
    assert {n for n in group if "k_proj" in n or "v_proj" in n} == {"model.layers.0.self_attn.k_proj.weight",
                                                                     "model.layers.0.self_attn.v_proj.weight"}
    z0 = _heads_input(model, 0)
    _perturb(model, {n: m for n, m in group.items() if "k_proj" in n or "v_proj" in n})
    assert _changed(_heads_input(model, 0), z0).tolist() == [True, True, False, False]


def test_named_components_and_unions() -> None:
    gpt2 = tiny("gpt2")
    emb = resolve_selection(gpt2, "embed")
    assert list(emb) == ["transformer.wte.weight", "transformer.wpe.weight"]
    assert list(resolve_selection(gpt2, "unembed")) == ["transformer.wte.weight"]     # tied to wte
    mlp = resolve_selection(gpt2, "l1.mlp")
    assert set(mlp) == {f"transformer.h.1.mlp.{m}.{w}" for m in ("c_fc", "c_proj") for w in ("weight", "bias")}
    union = resolve_selection(gpt2, ["l0h0", "l0h1"])
    both = resolve_selection(gpt2, "l0h0+l0h1")
    assert union.keys() == both.keys() and all(torch.equal(union[k], both[k]) for k in union)
    c_attn = union["transformer.h.0.attn.c_attn.weight"]
    assert int(c_attn.sum()) == 2 * 3 * 8 * 32
    assert all(m is None for m in resolve_selection(gpt2, "all").values())
    assert list(resolve_selection(gpt2, "transformer.h.0.ln_*")) == ["transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
                                                                     "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias"]
    neox = tiny("gpt_neox")
    assert list(resolve_selection(neox, "unembed")) == ["lm_head.weight"]
    assert is_component_selector("l0h1+l1.mlp") and not is_component_selector("transformer.h.*")


def test_bad_selectors_say_what_to_do() -> None:
    demo = tiny("llc-attn-only")
    with pytest.raises(ValueError, match="has no MLP"):
        resolve_selection(demo, "l0.mlp")
    with pytest.raises(ValueError, match="has 2 layers"):
        resolve_selection(demo, "l2h0")
    with pytest.raises(ValueError, match="has 4 heads"):
        resolve_selection(demo, "l0h4")
    with pytest.raises(ValueError, match="matches no parameter"):
        resolve_selection(demo, "nothing.*")
    with pytest.raises(ValueError, match="expand it first"):
        resolve_selection(demo, "heads")


def test_heads_expand_per_architecture() -> None:
    cfg = tiny("llama").config
    assert expand_selectors(["all", "heads", "l1.mlp"], cfg) == ["all"] + [f"l{i}h{h}" for i in range(2) for h in range(4)] + ["l1.mlp"]
    assert expand_selectors("heads", {"n_layer": 1, "n_head": 2, "n_embd": 8}) == ["l0h0", "l0h1"]


@pytest.mark.parametrize("family", FAMILIES)
def test_config_check_refuses_exactly_what_resolution_refuses(family: str) -> None:
    # A sweep checks components against config.json alone (no weights); it must refuse the same
    # selectors, with the same sentence, as resolving them on the model would.
    model = tiny(family)
    cfg = model.config.to_dict()
    for sel in ("all", "embed", "unembed", "l1.attn", "l1.mlp", "l2.attn", "l1h3", "l1h4", "l0g1", "l0g2", "l0h0+l1.mlp",
                "transformer.h.*"):
        try:
            resolve_selection(model, sel)
            refused = None
        except ValueError as exc:
            refused = str(exc)
        if refused is not None and "matches no parameter" in refused:
            refused = None            # a pattern or group with no entries here: only the model can tell
        if refused is None:
            check_selector(sel, cfg)
        else:
            with pytest.raises(ValueError) as info:
                check_selector(sel, cfg)
            assert str(info.value) == refused
