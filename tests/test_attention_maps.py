"""vitkit.attention_maps: rollout and [CLS] attention, checked against hand-computed values, in one pass."""

import pytest
import torch

from vitkit import VisionTransformer, attention_maps


def tiny(**kw):
    args = dict(img_size=16, patch_size=4, in_channels=1, num_classes=3, embed_dim=16, depth=2, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args).eval()


def test_rollout_of_uniform_attention_is_uniform():
    t, layers = 5, 3
    uniform = [torch.full((2, 4, t, t), 1.0 / t) for _ in range(layers)]  # (B, H, T, T) per layer
    plain = attention_maps.attention_rollout(uniform, residual=False)
    torch.testing.assert_close(plain, torch.full((2, t, t), 1.0 / t))
    # With the skip connection the token keeps part of itself, but [CLS] still spreads evenly over the rest.
    r = attention_maps.attention_rollout(uniform)
    cls_row = r[:, 0, 1:]
    torch.testing.assert_close(cls_row, cls_row[:, :1].expand_as(cls_row))
    torch.testing.assert_close(r.sum(-1), torch.ones(2, t))


def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(6).expand(1, 3, 6, 6)
    for residual in (True, False):
        r = attention_maps.attention_rollout({0: eye, 1: eye, 2: eye}, residual=residual)
        torch.testing.assert_close(r, torch.eye(6)[None])


def test_rollout_multiplies_layers_in_order():
    a1, a2 = torch.rand(1, 2, 4, 4).softmax(-1), torch.rand(1, 2, 4, 4).softmax(-1)

    def mix(a):
        m = 0.5 * a.double().mean(1) + 0.5 * torch.eye(4, dtype=torch.float64)
        return m / m.sum(-1, keepdim=True)

    r = attention_maps.attention_rollout({1: a2, 0: a1})  # dict order must not matter: layers are sorted
    torch.testing.assert_close(r, (mix(a2) @ mix(a1)).float())
    rmax = attention_maps.attention_rollout([a1], head_fusion="max", residual=False)
    torch.testing.assert_close(rmax, (a1.amax(1) / a1.amax(1).sum(-1, keepdim=True)))


@pytest.mark.parametrize("kw", [dict(img_size=(12, 20), patch_size=4, reg_tokens=2),
                                dict(img_size=(18, 12), patch_size=6, class_token=False, pool="mean")])
def test_cls_attention_maps_follow_the_patch_order(kw):
    model = tiny(**kw)
    x = torch.randn(2, 1, *kw["img_size"])
    gh, gw = model.patch_embed.grid_for(*x.shape[-2:])
    p = model.num_prefix_tokens
    maps = attention_maps.cls_attention_maps(model, x)  # (B, H, gh, gw)
    attn = model.get_attention_maps(x, [-1])[1]  # (B, H, T, T)
    assert maps.shape == (2, 2, gh, gw)
    for r in range(gh):
        for c in range(gw):
            want = attn[:, :, 0, p + r * gw + c] if model.cls_token is not None else \
                attn[:, :, p:, p + r * gw + c].mean(-1)
            torch.testing.assert_close(maps[:, :, r, c], want)
    roll = attention_maps.rollout_maps(model, x)  # (B, gh, gw)
    assert roll.shape == (2, gh, gw)
    torch.testing.assert_close(roll.sum((-2, -1)), torch.ones(2))


def test_look_is_one_pass_with_logits_rollout_and_every_layers_map():
    model = tiny()
    x = torch.randn(3, 1, 16, 16)
    calls = []
    hooks = [b.register_forward_hook(lambda m, args, kwargs, out, i=i: calls.append(
        (i, "explicit" if kwargs.get("return_attention") else "fused")), with_kwargs=True)
        for i, b in enumerate(model.blocks)]
    seen = attention_maps.read_attention(model, x)
    for h in hooks:
        h.remove()
    assert calls == [(0, "explicit"), (1, "explicit")]  # one pass: each block once, explicitly
    torch.testing.assert_close(seen.logits, model(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(seen.rollout, attention_maps.rollout_maps(model, x))
    for layer in (0, 1):
        torch.testing.assert_close(seen.layers[layer], attention_maps.cls_attention_maps(model, x, layer))
