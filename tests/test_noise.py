import torch

from hf_leap.noise import NOISE_BLOCK_SIZE, counter_seed, fill_keyed_normal_


def draw(numel, offset=0, length=None, **key):
    length = numel - offset if length is None else length
    out = torch.empty(length)
    params = {"seed": 7, "step": 3, "tensor_key": 2, **key}
    return fill_keyed_normal_(
        out, mean=0.0, std=1.0, global_numel=numel, global_offset=offset, generator=torch.Generator(), **params
    )


def test_counter_seed_depends_on_every_coordinate():
    base = counter_seed(1, 2, 3, 4, 5)
    variants = [counter_seed(9, 2, 3, 4, 5), counter_seed(1, 9, 3, 4, 5), counter_seed(1, 2, 9, 4, 5),
                counter_seed(1, 2, 3, 9, 5), counter_seed(1, 2, 3, 4, 9)]
    assert base == counter_seed(1, 2, 3, 4, 5)
    assert len({base, *variants}) == 6
    assert all(0 <= s < 2**64 for s in variants)


def test_shards_reassemble_the_global_draw_for_any_split():
    numel = 3 * NOISE_BLOCK_SIZE + 1234
    whole = draw(numel)
    for cuts in ([0, numel // 2, numel], [0, 1000, NOISE_BLOCK_SIZE + 5, 2 * NOISE_BLOCK_SIZE, numel]):
        pieces = [draw(numel, offset=a, length=b - a) for a, b in zip(cuts, cuts[1:])]
        assert torch.equal(torch.cat(pieces), whole)


def test_noise_changes_with_step_tensor_seed_and_shard_key():
    reference = draw(5000)
    assert torch.equal(reference, draw(5000))
    for key in ({"step": 4}, {"tensor_key": 3}, {"seed": 8}, {"shard_key": 1}):
        assert not torch.equal(reference, draw(5000, **key))


def test_noise_is_standard_normal_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    sample = draw(400_000)
    assert torch.equal(state, torch.get_rng_state())
    assert abs(sample.mean().item()) < 0.01
    assert abs(sample.std().item() - 1.0) < 0.01
    # blocks are independent streams, not copies of one another
    assert not torch.equal(sample[:1000], sample[NOISE_BLOCK_SIZE : NOISE_BLOCK_SIZE + 1000])


def test_mean_and_std_are_applied():
    out = torch.empty(200_000)
    fill_keyed_normal_(out, mean=2.0, std=0.5, seed=0, step=0, tensor_key=0, global_numel=out.numel(),
                       generator=torch.Generator())
    assert abs(out.mean().item() - 2.0) < 0.01 and abs(out.std().item() - 0.5) < 0.01
