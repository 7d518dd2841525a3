"""Parameter roles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit import ParamRole, assign_roles, param_groups_by_role


class TinyLM(nn.Module):
    def __init__(self, tie: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.pos_embedding = nn.Parameter(torch.zeros(8, 16))
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.lm_head = nn.Linear(16, 50, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight


def test_roles_of_a_small_language_model():
    roles = assign_roles(TinyLM())
    assert roles["embed.weight"] is ParamRole.EMBEDDING
    assert roles["pos_embedding"] is ParamRole.EMBEDDING
    assert roles["conv.weight"] is ParamRole.CONV_FILTER
    assert roles["conv.bias"] is ParamRole.GAIN_BIAS
    assert roles["norm.weight"] is ParamRole.GAIN_BIAS
    assert roles["mlp.0.weight"] is ParamRole.HIDDEN_MATRIX
    assert roles["mlp.2.weight"] is ParamRole.HIDDEN_MATRIX
    assert roles["lm_head.weight"] is ParamRole.OUTPUT_HEAD


def test_tied_head_counts_once_as_embedding():
    model = TinyLM(tie=True)
    roles = assign_roles(model)
    assert "lm_head.weight" not in roles
    assert roles["embed.weight"] is ParamRole.EMBEDDING
    groups = param_groups_by_role(model)
    n = sum(len(g["params"]) for g in groups)
    assert n == len(list(model.parameters()))


def test_last_linear_is_the_head_by_default():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    roles = assign_roles(model)
    assert roles["0.weight"] is ParamRole.HIDDEN_MATRIX
    assert roles["2.weight"] is ParamRole.OUTPUT_HEAD


def test_overrides_and_head_argument():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    roles = assign_roles(model, head="0", overrides={"2.weight": "hidden_matrix"})
    assert roles["0.weight"] is ParamRole.OUTPUT_HEAD
    assert roles["2.weight"] is ParamRole.HIDDEN_MATRIX
    with pytest.raises(ValueError, match="unknown parameter"):
        assign_roles(model, overrides={"nope": "embedding"})
    with pytest.raises(ValueError, match="not found"):
        assign_roles(model, head="5")


def test_param_groups_carry_settings_and_cover_every_parameter():
    model = TinyLM()
    groups = param_groups_by_role(model, settings={"gain_bias": {"weight_decay": 0.0}})
    by_role = {g["role"]: g for g in groups}
    assert by_role["gain_bias"]["weight_decay"] == 0.0
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()}
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    assert len(opt.param_groups) == len(groups)
