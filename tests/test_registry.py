"""The optimizer registry."""

from __future__ import annotations

import re

import pytest
import torch

import gradkit
import gradkit.errors


def test_foundation_optimizers_are_listed_with_citations():
    infos = {i.name: i for i in gradkit.list_optimizers()}
    for name in ("sgd", "adam", "adamw"):
        assert name in infos
    assert infos["adamw"].arxiv_id == "1711.05101"
    assert "Decoupled Weight Decay" in infos["adamw"].paper_title


def test_every_registered_optimizer_has_a_citation_and_defaults():
    for info in gradkit.list_optimizers():
        assert info.paper_title, info.name
        if info.arxiv_id is not None:
            assert re.fullmatch(r"\d{4}\.\d{4,5}", info.arxiv_id), info
        assert not hasattr(info, "seed_id")  # catalogue ids are not part of the public API
        assert isinstance(info.defaults, dict)


def test_every_registered_optimizer_builds_and_steps():
    for info in gradkit.list_optimizers():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        opt = gradkit.create_optimizer(model, info.name)
        x, y = torch.randn(16, 4), torch.randn(16, 2)

        def closure(model=model, opt=opt, x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(3):
            if info.needs_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before)), info.name
        assert all(torch.isfinite(p).all() for p in model.parameters()), info.name


def test_names_are_case_and_dash_insensitive():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(gradkit.create_optimizer(params, "AdamW")).__name__ == "AdamW"


def test_unknown_name_lists_known_ones():
    with pytest.raises(
        gradkit.errors.UnknownNameError,
        match="^unknown optimizer 'adamz'; known optimizers:.*adamw",
    ):
        gradkit.create_optimizer([torch.nn.Parameter(torch.zeros(1))], "adamz")
    assert issubclass(gradkit.errors.UnknownNameError, ValueError)


def test_one_name_normalisation():
    for spelling in ("Stable-SPAM", "stable spam", "stable_spam", " STABLE-spam "):
        assert gradkit.optim.registry.get_info(spelling).name == "stable_spam"


def test_no_catalogue_ids_in_the_code_docs_or_cli():
    """Papers are cited by title, authors, year and arXiv id; an internal catalogue id such as
    ``P022`` means nothing to a user."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    files = [
        root / "README.md",
        *(root / "docs").glob("*.md"),
        *[
            path
            for d in ("src", "tests", "benchmarks", "examples")
            for path in (root / d).rglob("*.py")
        ],
    ]
    files.remove(Path(__file__).resolve())
    hits = [
        f"{path.relative_to(root)}:{n}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bP\d{3}\b", line)
    ]
    assert hits == []


def test_the_optimizer_table_in_the_docs_lists_every_registered_optimizer():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "optimizers.md").read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M))
    assert {info.name for info in gradkit.list_optimizers()} <= listed
