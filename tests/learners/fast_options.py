"""Options that keep a learner's own schedules short in the tests (its extra stages, GDumb's
training from scratch) and give it the memory it needs; every registry-generated test applies
them."""

FAST = {
    "bic": ["learner.bias_epochs=2"],
    "eeil": ["learner.finetune_epochs=2"],
    "foster": ["learner.compression_epochs=2"],
    "gdumb": ["learner.epochs=3"],
    "mislas": ["learner.stage2_epochs=2"],
    "podnet": ["learner.finetune_epochs=2"],
    "proto_ltcil": ["learner.bias_epochs=2"],
    "ride": ["learner.router_epochs=2", "learner.reduce_dimension=false"],  # convnet4
}


def fast_overrides(name: str) -> list[str]:
    """The learner's short schedules, and the memory selection it needs (DER++'s reservoir)."""
    from cilkit.learners import LEARNERS

    selection = LEARNERS.get(name).obj.memory_selection
    return list(FAST.get(name, [])) + ([f"memory.selection={selection}"] if selection else [])
