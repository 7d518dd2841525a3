"""Named state: torch.optim checkpoints load into gradkit and back, other optimizers' state is
refused at load, and gradkit 0.1 checkpoints (positional keys) still load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim import SGD, Adam, AdamW

STEPS = 10


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for t in steps:
        g = torch.Generator().manual_seed(t)
        x, y = torch.randn(8, 5, generator=g), torch.randn(8, 2, generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


PAIRS = [
    (torch.optim.AdamW, AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    (torch.optim.Adam, Adam, {"lr": 1e-2, "weight_decay": 0.01}),
    (torch.optim.SGD, SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize(("torch_cls", "ours_cls", "hp"), PAIRS)
@pytest.mark.parametrize("direction", ["torch->gradkit", "gradkit->torch"])
def test_torch_optim_checkpoints_resume_exactly_in_both_directions(
    torch_cls, ours_cls, hp, direction
) -> None:
    first_cls, second_cls = (
        (torch_cls, ours_cls) if direction == "torch->gradkit" else (ours_cls, torch_cls)
    )
    ref = _model()
    ref_opt = first_cls(ref.parameters(), **hp)
    _train(ref, ref_opt, range(2 * STEPS))

    model = _model()
    opt = first_cls(model.parameters(), **hp)
    _train(model, opt, range(STEPS))
    resumed = second_cls(model.parameters(), **hp)
    resumed.load_state_dict(opt.state_dict())
    _train(model, resumed, range(STEPS, 2 * STEPS))
    for p, q in zip(ref.parameters(), model.parameters()):
        # the same rule in two implementations: equal to float rounding, not bit for bit
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adam_and_adamw_name_their_buffers_like_torch() -> None:
    for cls in (Adam, AdamW):
        model = _model()
        opt = cls(model.parameters())
        _train(model, opt, range(1))
        keys = set(next(iter(opt.state_dict()["state"].values())))
        assert {"step", "exp_avg", "exp_avg_sq"} <= keys


def test_torch_amsgrad_checkpoint_resumes_in_amsgrad() -> None:
    ref = _model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2, amsgrad=True)
    _train(ref, ref_opt, range(2 * STEPS))
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    _train(model, opt, range(STEPS))
    ours = gradkit.create_optimizer(model, "amsgrad", lr=1e-2)
    ours.load_state_dict(opt.state_dict())
    _train(model, ours, range(STEPS, 2 * STEPS))
    for p, q in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# AdamW's state is exp_avg, exp_avg_sq (and a lazily allocated max_exp_avg_sq): only the
# optimizers built on the very same buffers may take it (⊥AdamW is AdamW on projected gradients).
SAME_BUFFERS_AS_ADAMW = {"adam", "adamw", "perp_adamw"}


@pytest.mark.parametrize(
    "name",
    [i.name for i in gradkit.list_optimizers() if i.name not in SAME_BUFFERS_AS_ADAMW],
)
def test_another_optimizers_state_dict_is_refused_at_load(name: str) -> None:
    model = _model()
    adamw = AdamW(model.parameters())
    _train(model, adamw, range(2))
    kwargs = {"seed": 0} if "seed" in gradkit.optim.registry.get_info(name).defaults else {}
    other = gradkit.create_optimizer(model, name, **kwargs)
    with pytest.raises(ValueError, match="cannot load this state dict"):
        other.load_state_dict(adamw.state_dict())


def test_gradkit_0_1_positional_checkpoint_loads() -> None:
    """A checkpoint as gradkit 0.1 wrote it for AdamW: chain(ScaleByAdam, decay, lr), keys
    ``"<position>.<name>"`` and ``amsgrad`` in the groups."""
    ref = _model()
    ref_opt = AdamW(ref.parameters(), lr=1e-2)
    _train(ref, ref_opt, range(2 * STEPS))

    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2)
    _train(model, opt, range(STEPS))
    new = opt.state_dict()
    old_state = {
        pid: {
            "step": st["step"],
            "0.exp_avg": st["exp_avg"],
            "0.exp_avg_sq": st["exp_avg_sq"],
            "0.max_exp_avg_sq": st["max_exp_avg_sq"],
        }
        for pid, st in new["state"].items()
    }
    old_groups = [{**g, "amsgrad": False} for g in new["param_groups"]]
    resumed = AdamW(model.parameters(), lr=1e-2)
    resumed.load_state_dict({"state": old_state, "param_groups": old_groups})
    _train(model, resumed, range(STEPS, 2 * STEPS))
    for p, q in zip(ref.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_positional_key_the_chain_never_had_is_refused() -> None:
    model = _model()
    opt = AdamW(model.parameters())
    _train(model, opt, range(1))
    sd = opt.state_dict()
    bad = {pid: {"step": st["step"], "5.exp_avg": st["exp_avg"]} for pid, st in sd["state"].items()}
    with pytest.raises(ValueError, match="positional key '5.exp_avg'"):
        AdamW(model.parameters()).load_state_dict({**sd, "state": bad})


def test_wrong_shape_is_refused_with_the_shapes() -> None:
    model = _model()
    opt = AdamW(model.parameters())
    _train(model, opt, range(1))
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"'exp_avg' .* has shape \(3,\), expected \(7, 5\)"):
        AdamW(model.parameters()).load_state_dict(sd)
