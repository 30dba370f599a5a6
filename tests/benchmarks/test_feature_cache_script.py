"""``benchmarks/feature_cache.py`` counts the backbone's images with the cache on and off and
checks that both give the same accuracies."""

from __future__ import annotations

import json
from pathlib import Path

from bench_scripts import load

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ptm_quickstart.yaml"


def test_the_cache_saves_passes_and_changes_no_result(tmp_path, capsys):
    bench = load("feature_cache")
    out = tmp_path / "cache.json"
    small = ["backbone.kwargs.depth=1", "backbone.kwargs.embed_dim=12", "engine.progress=none"]
    code = bench.main(["-c", str(CONFIG), "--no-warmup", "--json", str(out), *small])
    assert code == 0
    printed = capsys.readouterr().out
    assert "identical accuracies: True" in printed
    results = json.loads(out.read_text())
    on, off = (next(r for r in results["results"] if r["cache"] is c) for c in (True, False))
    # 5 tasks of 2 digits: each image once with the cache; without it, every evaluation anew
    assert on["images_through_backbone"] == 1347 + 450
    assert off["images_through_backbone"] > on["images_through_backbone"]
    assert results["identical"] is True
