"""What makes DER++ that method: a reservoir of the logits it saw, replayed by two terms."""

from __future__ import annotations

import torch
from test_lucir_der_bic import _after_task, _batch, _next_task

from cilkit.buffers.selection import reservoir_slots, reservoir_update


def test_reservoir_slots_write_what_reservoir_update_keeps() -> None:
    capacity, seen = 7, 0
    buffer = torch.full((capacity,), -1, dtype=torch.long)
    reference = torch.empty(0, dtype=torch.long)
    for size in (3, 5, 20, 1, 9):
        items = torch.arange(seen, seen + size) + 100
        a, b = torch.Generator().manual_seed(seen), torch.Generator().manual_seed(seen)
        slots = reservoir_slots(seen, size, capacity, a)
        kept = slots >= 0
        assert len(set(slots[kept].tolist())) == int(kept.sum())  # one item per slot
        buffer[slots[kept]] = items[kept]
        reference, seen = reservoir_update(reference, seen, items, capacity, b)
        assert buffer[: len(reference)].tolist() == reference.tolist()


def test_derpp_stores_the_logits_it_saw(tmp_path):
    parts = _after_task("derpp", tmp_path)
    learner = parts.learner
    assert len(learner.buffer) == 40 and int(learner.buffer.num_seen) > 40  # full, replacing
    assert learner.buffer.width[:40].tolist() == [4] * 40  # stored while 4 classes were known
    assert learner.stored_samples() == 40
    ctx = _next_task(parts, 1)
    assert learner.buffer.logits.shape == (40, 7)  # room for the new classes, zero-padded
    learner._split = parts.train
    batch = learner.transform_batch(_batch(parts, ctx, 16), torch.Generator().manual_seed(0))
    out = learner.training_step(batch)
    assert set(out.terms) == {"ce", "mse", "replay_ce"}
    slots = batch.extra["slots"]
    kept = slots >= 0
    assert kept.any()
    stored = learner.buffer.logits[slots[kept]]
    assert torch.equal(stored, out.logits.detach().float()[kept])
    assert learner.buffer.width[slots[kept]].tolist() == [7] * int(kept.sum())
    assert learner.buffer.index[slots[kept]].tolist() == batch.index[kept].tolist()


def test_derpp_matches_only_the_stored_columns(tmp_path):
    parts = _after_task("derpp", tmp_path)
    learner = parts.learner
    ctx = _next_task(parts, 1)
    learner._split = parts.train
    learner.eval()  # the same outputs for the same images
    batch = learner.transform_batch(_batch(parts, ctx, 16), torch.Generator().manual_seed(0))
    replay, slots = batch.extra["mse"]
    with torch.no_grad():
        now = learner.network(replay.x).float()
    # stored rows equal the outputs on the 4 columns they hold; the 3 new columns differ
    learner.buffer.logits[slots] = torch.cat([now[:, :4], now[:, 4:] + 5.0], dim=1)
    learner.buffer.width[slots] = 4
    out = learner.training_step(batch)
    assert out.terms["mse"].item() < 1e-10
    learner.buffer.logits[slots, 0] += 1.0
    batch.extra["slots"] = torch.full_like(batch.extra["slots"], -1)
    assert learner.training_step(batch).terms["mse"].item() > 0.1


def test_derpp_refuses_a_memory_that_is_not_a_reservoir():
    import pytest
    from test_contract import tiny

    from cilkit.config.validate import validate_experiment
    from cilkit.errors import ConfigError

    validate_experiment(tiny("derpp"), 10, "derpp.yaml")
    with pytest.raises(ConfigError, match="memory.selection=reservoir"):
        validate_experiment(tiny("derpp", "memory.selection=herding"), 10, "derpp.yaml")
