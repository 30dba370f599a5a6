"""Options that keep a learner's own schedules short in the tests (its extra stages, GDumb's
training from scratch); every registry-generated test applies them."""

FAST = {
    "bic": ["learner.bias_epochs=2"],
    "eeil": ["learner.finetune_epochs=2"],
    "gdumb": ["learner.epochs=3"],
}


def fast_overrides(name: str) -> list[str]:
    return list(FAST.get(name, []))
