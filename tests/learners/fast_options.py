"""Options that keep a learner's own schedules short in the tests (its extra stages, GDumb's
training from scratch) and give it the memory it needs; every registry-generated test applies
them."""

TINY_VIT = (
    "backbone={name: timm, model: vit_tiny_patch16_224, "
    "kwargs: {img_size: 8, patch_size: 4, depth: 2, embed_dim: 24, num_heads: 3}}"
)
"""A randomly initialised two-block ViT for digits' 8x8 images (methods that tune a ViT)."""

FAST = {
    "acil": ["learner.buffer_size=64"],
    "aper": [TINY_VIT],
    "bic": ["learner.bias_epochs=2"],
    "coda_prompt": [TINY_VIT, "learner.pool_size=6"],
    "dualprompt": [TINY_VIT, "learner.g_layers=[0]", "learner.e_layers=[1]"],
    "dsal": ["learner.buffer_size=64", "learner.fit_batch_size=100"],
    "ease": [TINY_VIT],
    "eeil": ["learner.finetune_epochs=2"],
    "foster": ["learner.compression_epochs=2"],
    "gdumb": ["learner.epochs=3"],
    "l2p": [TINY_VIT, "learner.pool_size=4", "learner.top_k=2"],
    "mislas": ["learner.stage2_epochs=2"],
    "podnet": ["learner.finetune_epochs=2"],
    "proto_ltcil": ["learner.bias_epochs=2"],
    "ranpac": ["learner.M=64"],
    "slca": ["learner.ca_epochs=2", "learner.ca_samples=16"],
    "ride": ["learner.router_epochs=2", "learner.reduce_dimension=false"],  # convnet4
}


TRAINED_TASKS = {
    "acil": (0,),  # backpropagation on the first task only, then a frozen backbone
    "aper": (0,),  # a PEFT module adapted on the first task only
    "dsal": (0,),
    "fecam": (0,),
    "ranpac": (),  # a frozen pre-trained model: nothing trains
    "simplecil": (),
}
"""The tasks (0-based, of the tests' three) in which a learner trains, where it is not every
task: the tests that interrupt or read a training epoch use these."""


VARIANTS = [
    ("ranpac", (TINY_VIT, "learner.adapt=true"), (0,)),  # first-session PEFT adaptation
]
"""Configurations of a learner that train where its default does not, as (name, overrides,
trained tasks): the contract tests that interrupt training run these too."""


def trained_tasks(name: str, num_tasks: int = 3) -> tuple[int, ...]:
    """The tasks in which ``name`` trains (every task unless :data:`TRAINED_TASKS` says)."""
    return TRAINED_TASKS.get(name, tuple(range(num_tasks)))


def fast_overrides(name: str) -> list[str]:
    """The learner's short schedules, and the memory selection it needs (DER++'s reservoir)."""
    from cilkit.learners import LEARNERS

    selection = LEARNERS.get(name).obj.memory_selection
    return list(FAST.get(name, [])) + ([f"memory.selection={selection}"] if selection else [])
