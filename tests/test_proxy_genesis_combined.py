"""The combined Models Genesis scheme: reference probabilities, exclusivity, flips, composition."""

from __future__ import annotations

import torch

import proxy_tasks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_probabilities_match_the_reference_rates() -> None:
    task = proxy_tasks.build("combined")
    draws = task.draw(20000, _gen(0), torch.device("cpu"))
    rate = {k: v.double().mean().item() for k, v in draws.items()}
    assert abs(rate["local_shuffle"] - 0.5) < 0.015
    assert abs(rate["nonlinear"] - 0.9) < 0.01
    assert abs(rate["inner_cutout"] - 0.9 * 0.2) < 0.01
    assert abs(rate["outer_cutout"] - 0.9 * 0.8) < 0.015
    assert not (draws["inner_cutout"] & draws["outer_cutout"]).any()
    # flips: k ~ truncated geometric(0.4) draws over 3 axes; P(axis flipped an odd number of times)
    p = 0.4
    pk = [1 - p, p * (1 - p), p * p * (1 - p), p**3]
    odd = [0.0, 1 / 3, 4 / 9, 13 / 27]  # P(a given axis is drawn an odd number of times in k draws)
    expected = sum(a * b for a, b in zip(pk, odd))
    for axis in ("flip_d", "flip_h", "flip_w"):
        assert abs(rate[axis] - expected) < 0.015


def test_reference_flip_quirk_never_flips_depth() -> None:
    task = proxy_tasks.build("combined", flip_axes=(None, 1, 2))
    draws = task.draw(5000, _gen(1), torch.device("cpu"))
    assert not draws["flip_d"].any() and draws["flip_h"].any() and draws["flip_w"].any()


def test_target_is_the_flipped_original_and_untransformed_samples_are_identity() -> None:
    batch = torch.rand(64, 1, 20, 20, 20, generator=_gen(2))
    task = proxy_tasks.build("combined")
    pair = task(batch, generator=_gen(3))
    draws = task.last_draws
    for i in range(64):
        expected = batch[i]
        for name, dim in (("flip_d", 1), ("flip_h", 2), ("flip_w", 3)):
            if draws[name][i]:
                expected = expected.flip(dim)
        assert torch.equal(pair.target[i], expected)
        untouched = not any(bool(draws[k][i]) for k in ("local_shuffle", "nonlinear", "inner_cutout", "outer_cutout"))
        if untouched:
            assert torch.equal(pair.input[i], pair.target[i]) and not pair.mask[i].any()
        else:
            assert pair.mask[i].any()


def test_composition_equals_the_single_transforms_in_reference_order() -> None:
    batch = torch.rand(2, 1, 20, 24, 24, generator=_gen(4))
    task = proxy_tasks.build("combined", local_shuffle_prob=1.0, nonlinear_prob=1.0, paint_prob=1.0, inner_prob=0.0, flip_prob=0.0)
    pair = task(batch, generator=_gen(5))
    assert task.last_draws["outer_cutout"].all() and not task.last_draws["inner_cutout"].any()
    # replay: same generator state after draw() -> same transforms in the reference order
    gen = _gen(5)
    task.draw(2, gen, batch.device)
    out = batch
    for name in ("local_shuffle", "nonlinear", "outer_cutout"):
        out = proxy_tasks.build(name, prob=1.0).transform(out, gen)
    assert torch.equal(pair.input, out)
    assert torch.equal(pair.target, batch)
