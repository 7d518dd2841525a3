"""Muon built from a plain parameter list warns that it cannot tell the head from hidden
matrices and says to pass the model; built from the model (or groups) it does not."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim.muon import Muon


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_plain_parameter_list_warns_and_names_the_fix():
    with pytest.warns(UserWarning, match="cannot tell the output head") as rec:
        Muon(_model().parameters())
    assert "from_module(model)" in str(rec[0].message)


def test_model_and_groups_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Muon.from_module(_model())
        gradkit.create_optimizer(_model(), "muon")
        m = _model()
        Muon(
            [
                {"params": [m[0].weight], "use_muon": True},
                {"params": [m[2].weight], "use_muon": False},
            ]
        )
        Muon([torch.zeros(3, requires_grad=True)])  # no matrix: nothing to mix up
