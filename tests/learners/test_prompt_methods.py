"""The prompt methods (L2P, DualPrompt, CODA-Prompt) on a small random ViT: the ViT never changes,
only the declared parameters move, old tasks' prompts stay as they were under any optimiser, L2P
and DualPrompt choose by their keys, and each method's prompts reach only the blocks it names."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")
from fast_options import TINY_VIT  # noqa: E402

from cilkit.backbones import vit_tokens  # noqa: E402
from cilkit.backbones.vit_tokens import TokenEdits  # noqa: E402
from cilkit.components.prompts import gram_schmidt_rows  # noqa: E402
from cilkit.config import build_config  # noqa: E402
from cilkit.contract import TaskContext, task_generator  # noqa: E402
from cilkit.engine.trainer import Trainer  # noqa: E402
from cilkit.errors import ConfigError  # noqa: E402
from cilkit.learners.coda_prompt import CODAPrompt  # noqa: E402
from cilkit.learners.dualprompt import DualPrompt  # noqa: E402
from cilkit.learners.l2p import L2P  # noqa: E402

DEEP_VIT = TINY_VIT.replace("depth: 2", "depth: 4")

OPTIONS = {
    "l2p": ["learner.pool_size=4", "learner.top_k=2"],
    "dualprompt": ["learner.g_layers=[0]", "learner.e_layers=[1]"],
    "coda_prompt": ["learner.pool_size=8"],
}
CLASSES = {"l2p": L2P, "dualprompt": DualPrompt, "coda_prompt": CODAPrompt}


def _config(name: str, *overrides: str, vit: str = TINY_VIT):
    data = {
        "seed": 3,
        "data": {"name": "digits"},
        "scenario": {"initial_increment": 4, "increment": 3},
        "learner": {"name": name},
        # SGD with momentum and weight decay: an old prompt kept still only by a zero gradient
        # (the authors' code, with Adam and weight decay 0) would decay here.
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
        "train": {"epochs": 2, "batch_size": 64},
        "engine": {"progress": "none"},
    }
    return build_config(data, [vit, *OPTIONS.get(name, []), *overrides])


def _state(learner) -> dict[str, torch.Tensor]:
    """Copies of the learner's parameters (trainable or not; buffers such as a loss's class
    counts are not parameters)."""
    return {k: v.detach().clone() for k, v in learner.named_parameters(remove_duplicate=False)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each method's learner state before its first task and after each task."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, cls in CLASSES.items():
            records: list[dict] = []
            before, after = cls.before_task, cls.after_task

            def before_task(self, ctx, records=records, before=before):
                if not records:
                    records.append(_state(self))
                before(self, ctx)

            def after_task(self, ctx, records=records, after=after):
                after(self, ctx)
                records.append(_state(self))

            mp.setattr(cls, "before_task", before_task)
            mp.setattr(cls, "after_task", after_task)
            Trainer(_config(name), tmp_path_factory.mktemp(name), log=None).fit()
            out[name] = records
    return out


@pytest.mark.parametrize("name", list(CLASSES))
def test_the_vit_is_bit_identical_across_tasks(name, runs):
    records = runs[name]
    assert len(records) == 4  # before the first task, then after each of the three
    vit = [k for k in records[0] if k.startswith("network.backbone.")]
    assert vit
    for later in records[1:]:
        assert all(torch.equal(records[0][k], later[k]) for k in vit)


DECLARED = {
    "l2p": ("prompts.", "network.head."),
    "dualprompt": ("prompts.", "network.head."),
    "coda_prompt": ("prompts.", "network.head."),
}


@pytest.mark.parametrize("name", list(CLASSES))
def test_only_the_declared_parameters_move(name, runs):
    records = runs[name]
    for earlier, later in zip(records[1:], records[2:], strict=False):
        moved = {k for k in later if k in earlier and not torch.equal(earlier[k], later[k])}
        assert moved, "nothing trained"
        assert all(k.startswith(DECLARED[name]) for k in moved), sorted(moved)


@pytest.mark.parametrize("name", ["dualprompt", "coda_prompt"])
def test_an_old_tasks_prompts_do_not_change_in_later_tasks(name, runs):
    """DualPrompt's experts and keys, CODA-Prompt's components, keys and attention vectors of
    task k are the same after every later task (SGD with weight decay and momentum ran)."""
    records = runs[name]
    for task in range(3):
        own = [k for k in records[task + 1] if k.startswith("prompts.") and f".tasks.{task}" in k]
        assert own, f"task {task} added no prompts"
        for later in records[task + 2 :]:
            for k in own:
                assert torch.equal(records[task + 1][k], later[k]), (task, k)
    # ... and the newest task's did train
    last = [k for k in records[3] if ".tasks.2" in k]
    assert any(not torch.equal(records[3][k], records[2].get(k, records[3][k] + 1)) for k in last)


def _images(parts, n: int = 6) -> torch.Tensor:
    return next(parts.test.eval_batches(torch.arange(n), n)).x


def test_l2p_chooses_the_prompts_whose_keys_are_nearest_to_the_query(tmp_path):
    parts = Trainer(_config("l2p", "learner.batchwise=false"), tmp_path, log=None).setup()
    learner = parts.learner
    d = learner.vit.dim
    keys = torch.eye(4, d)  # key i points along axis i
    with torch.no_grad():
        learner.prompts.keys.copy_(
            keys * torch.tensor([[1.0], [3.0], [0.5], [2.0]])
        )  # norms differ
    query = torch.zeros(3, d)
    query[0, [1, 3]] = torch.tensor([0.9, 1.0])  # nearest: keys 3, then 1
    query[1, [0, 2]] = torch.tensor([1.0, 0.2])  # keys 0, 2
    query[2, [2, 1]] = torch.tensor([5.0, 4.0])  # keys 2, 1 (cosine: the norms do not matter)
    chosen = learner.choose(query, train=False)
    assert chosen.tolist() == [[3, 1], [0, 2], [2, 1]]
    # batch-wise: the two prompts chosen most often (1 and 2, twice each; 0 and 3 once)
    batch = L2P.choose(_with(learner, batchwise=True), query, train=False)
    assert batch.tolist() == [[1, 2]] * 3


def test_l2p_diversified_choice_prefers_rarely_used_prompts(tmp_path):
    """With ``diversity``, training multiplies the key distance ``1 - cos`` by each prompt's
    share of the earlier tasks' choices; prediction ignores that history."""
    config = _config("l2p", "learner.batchwise=false", "learner.diversity=true")
    learner = Trainer(config, tmp_path, log=None).setup().learner
    d = learner.vit.dim
    with torch.no_grad():
        learner.prompts.keys.copy_(torch.eye(4, d))
    query = torch.zeros(1, d)
    query[0, :3] = torch.tensor([1.0, 0.9, 0.8])  # nearest keys: 0, 1, 2, then 3
    assert learner.choose(query, train=True).tolist() == [[0, 1]]  # no history yet
    learner.prompts.earlier_counts.copy_(torch.tensor([10.0, 10.0, 1.0, 1.0]))
    # distances 0.36, 0.43, 0.49, 1.0 times shares 10/22, 10/22, 1/22, 1/22: 2 and 3 win
    assert learner.choose(query, train=True).tolist() == [[2, 3]]
    assert learner.choose(query, train=False).tolist() == [[0, 1]]


def _with(learner, **changes):
    import dataclasses

    learner.cfg = dataclasses.replace(learner.cfg, **changes)
    return learner


def test_l2p_prepends_the_chosen_prompts_with_the_class_position(tmp_path):
    parts = Trainer(_config("l2p", "learner.batchwise=false"), tmp_path, log=None).setup()
    learner = parts.learner.eval()
    x = _images(parts)
    query = learner.query(x)
    chosen = learner.choose(query, train=False)
    features, _ = learner.prompted(x, query, train=False)
    prompts = learner.prompts.prompts[chosen].flatten(1, 2) + learner.vit.model.pos_embed[:, :1]
    tokens = learner.vit.tokens(x, TokenEdits(prompts={0: prompts}))
    assert tokens.prompts == 2 * 5
    torch.testing.assert_close(features, tokens.prompt_tokens.mean(dim=1), rtol=0, atol=0)
    # and the prompts matter: other prompts give other features
    with torch.no_grad():
        learner.prompts.prompts.add_(1.0)
    assert not torch.allclose(learner.prompted(x, query, train=False)[0], features)


def test_dualprompt_prefixes_reach_only_the_blocks_named(tmp_path, monkeypatch):
    parts = Trainer(
        _config("dualprompt", "learner.g_layers=[1]", "learner.e_layers=[2]", vit=DEEP_VIT),
        tmp_path,
        log=None,
    ).setup()
    learner = parts.learner
    learner.before_task(_context(parts, 0))
    learner.eval()
    seen: dict[int, tuple[int, int]] = {}
    real = vit_tokens.block_forward

    def block_forward(block, x, prefix=None, delta=None):
        index = list(learner.vit.model.blocks).index(block)
        seen[index] = (prefix[0].shape[1], prefix[1].shape[1])
        return real(block, x, prefix, delta)

    monkeypatch.setattr(vit_tokens, "block_forward", block_forward)
    outputs: dict[str, list[torch.Tensor]] = {"plain": [], "prompted": []}
    current = ["plain"]
    hooks = [
        b.register_forward_hook(lambda m, i, o: outputs[current[0]].append(o.clone()))
        for b in learner.vit.model.blocks
    ]
    x = _images(parts)
    query = learner.query(x)  # the plain pass: every block's own forward
    current[0] = "prompted"
    learner.prompted(x, query, train=False)
    for h in hooks:
        h.remove()
    assert seen == {1: (5, 5), 2: (5, 5)}  # G on block 1, E on block 2: 5 key and 5 value tokens
    plain, prompted = outputs["plain"], outputs["prompted"]
    # blocks 1 and 2 ran as block_forward (their own hooks did not fire), 0 and 3 as themselves
    assert len(plain) == 4 and len(prompted) == 2
    assert torch.equal(plain[0], prompted[0])  # before any prefix: unchanged
    assert not torch.allclose(plain[3], prompted[1])  # block 3 sees the prefixed blocks' output


def _context(parts, task_id: int) -> TaskContext:
    """The engine's context of task ``task_id`` (without training it)."""
    info = parts.train_scenario.task_info(task_id)
    return TaskContext(info, parts.train, task_generator(3, task_id))


def test_dualprompt_predicts_with_the_expert_whose_key_is_nearest(tmp_path):
    parts = Trainer(_config("dualprompt", "learner.batchwise=false"), tmp_path, log=None).setup()
    learner = parts.learner
    for task in range(3):
        learner.before_task(_context(parts, task))
    d = learner.vit.dim
    with torch.no_grad():
        for task, key in enumerate(learner.prompts.keys.tasks):
            key.copy_(torch.eye(3, d)[task][None])
    query = torch.zeros(4, d)
    query[0, 2], query[1, 0], query[2, 1], query[3, [0, 1]] = (
        1.0,
        2.0,
        0.5,
        torch.tensor([0.2, 0.9]),
    )
    assert learner.choose(query, train=False).tolist() == [[2], [0], [1], [1]]
    # in training, the task's own expert, whatever the keys
    assert learner.choose(query, train=True).tolist() == [[2]] * 4
    # its expert is the one that reaches the blocks: another expert gives other features
    x = _images(parts, 4)
    q = learner.query(x)
    with torch.no_grad():
        learner.prompts.keys.tasks[0].copy_(q.mean(0, keepdim=True))
        learner.prompts.keys.tasks[1].copy_(-q.mean(0, keepdim=True))
        learner.prompts.keys.tasks[2].copy_(-q.mean(0, keepdim=True))
    learner.eval()
    a = learner.prompted(x, q, train=False)[0]
    with torch.no_grad():
        learner.prompts.experts.tasks[1].add_(1.0)
    torch.testing.assert_close(learner.prompted(x, q, train=False)[0], a, rtol=0, atol=0)
    with torch.no_grad():
        learner.prompts.experts.tasks[0].add_(1.0)
    assert not torch.allclose(learner.prompted(x, q, train=False)[0], a)


def test_dualprompt_refuses_overlapping_or_missing_blocks(tmp_path):
    with pytest.raises(ConfigError, match="both name blocks \\[1\\]"):
        Trainer(
            _config("dualprompt", "learner.g_layers=[1]", "learner.e_layers=[1]"),
            tmp_path,
            log=None,
        ).setup()
    with pytest.raises(ConfigError, match="learner.e_layers: this 2-block ViT"):
        Trainer(_config("dualprompt", "learner.e_layers=null"), tmp_path, log=None).setup()
    with pytest.raises(ConfigError, match="learner.g_layers: block 7 does not exist"):
        Trainer(_config("dualprompt", "learner.g_layers=[7]"), tmp_path, log=None).setup()


def test_coda_prompt_weights_components_by_the_attended_query(tmp_path):
    """The prefix of a block is ``sum_m cos(q * A_m, K_m) P_m``, split into key and value
    halves (the authors' ``CodaPrompt.forward``), computed here for one block by hand."""
    parts = Trainer(_config("coda_prompt"), tmp_path, log=None).setup()
    learner = parts.learner
    learner.before_task(_context(parts, 0))
    learner.eval()
    x = _images(parts, 3)
    q = learner.query(x)
    c = learner.prompts
    k, a, p = c.keys.stacked()[:, 0], c.attention.stacked()[:, 0], c.components.stacked()[:, 0]
    alpha = torch.stack(
        [torch.cosine_similarity(q * a[m], k[m][None], dim=1, eps=1e-12) for m in range(len(k))], 1
    )
    prompt = (alpha[:, :, None, None] * p[None]).sum(1)
    half = learner.cfg.prompt_length // 2
    block = learner.layers[0]
    seen = {}
    real = vit_tokens.block_forward

    def record(b, t, prefix=None, delta=None):
        seen[list(learner.vit.model.blocks).index(b)] = prefix
        return real(b, t, prefix, delta)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vit_tokens, "block_forward", record)
        learner.prompted(x, q, train=False)
    assert set(seen) == set(learner.layers)
    torch.testing.assert_close(seen[block][0], prompt[:, :half], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen[block][1], prompt[:, half:], rtol=1e-5, atol=1e-6)


def test_coda_prompt_new_rows_are_orthonormal_to_the_old_ones(tmp_path):
    parts = Trainer(_config("coda_prompt"), tmp_path, log=None).setup()
    learner = parts.learner
    for task in range(3):
        learner.before_task(_context(parts, task))
    for params in (learner.prompts.keys, learner.prompts.attention, learner.prompts.components):
        rows = params.stacked()[:, 0].reshape(6, -1).double()  # 2 per task, 3 tasks, block 0
        torch.testing.assert_close(
            rows @ rows.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0
        )


def test_coda_prompt_refuses_a_pool_too_small_for_the_tasks(tmp_path):
    parts = Trainer(_config("coda_prompt", "learner.pool_size=2"), tmp_path, log=None).setup()
    with pytest.raises(ConfigError, match="learner.pool_size: 2 components cannot be shared by 3"):
        parts.learner.before_task(_context(parts, 0))


def test_coda_prompt_pool_fits_the_key_width(tmp_path):
    """Every component's key is orthogonal to the others, so a pool wider than the ViT is a
    one-line error, and the default (the authors' 100) shrinks to a small ViT's width."""
    with pytest.raises(ConfigError, match="learner.pool_size: 30 components need 30 orthogonal"):
        Trainer(_config("coda_prompt", "learner.pool_size=30"), tmp_path, log=None).setup()
    parts = Trainer(_config("coda_prompt", "learner.pool_size=null"), tmp_path, log=None).setup()
    assert parts.learner.pool_size == parts.learner.vit.dim == 24
    for task in range(3):
        parts.learner.before_task(_context(parts, task))
    assert parts.learner.prompts.keys.stacked().shape[0] == 3 * (24 // 3)
    with pytest.raises(ValueError, match="do not fit in 4 dimensions"):
        gram_schmidt_rows(torch.zeros(3, 4), 2)


def test_bad_prompt_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="learner.top_k=5: 5 prompts cannot be chosen from 4"):
        _config("l2p", "learner.top_k=5")
    with pytest.raises(ConfigError, match="l2p trains its head with the prompts: no rebalancing"):
        _config("l2p", "learner.rebalance={method: lws}")
    parts = Trainer(_config("dualprompt", "learner.pool_size=2"), tmp_path, log=None).setup()
    with pytest.raises(ConfigError, match="learner.pool_size: 3 tasks need 3 expert prompts"):
        parts.learner.before_task(_context(parts, 0))
