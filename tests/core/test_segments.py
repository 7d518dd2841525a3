"""Segmented reductions over flat buffers (gradkit.core.segments), and the optimizers that reduce
per tensor (AdamP, SGDP, NovoGrad, MARS, Stable-SPAM, Gravity, ⊥AdamW, Ranger21, Lion-kappa with
the l2 kappa) on the flat path, against their per-tensor eager path."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import gradkit
from gradkit.core.segments import Segments

SHAPES = [(3, 4), (5,), (0, 3), (2, 2, 2), (), (4, 0), (1, 7), (6, 1, 2)]
#: every optimizer whose rule reduces per tensor and that runs on the flat path
SEGMENTED = [
    "adamp", "sgdp", "novograd", "mars", "stable_spam", "gravity", "perp_adamw", "ranger21",
    "lion_kappa",
]  # fmt: skip
HP = {
    "adamp": {"lr": 1e-2, "weight_decay": 0.1},
    "sgdp": {"lr": 0.05, "weight_decay": 1e-2, "nesterov": True},
    "novograd": {"lr": 1e-2, "weight_decay": 0.1},
    "mars": {"lr": 1e-2, "max_correction_norm": 0.05},
    # its random initial velocity: drawn tensor by tensor on both paths
    "gravity": {"lr": 0.05},
    "stable_spam": {"lr": 1e-2, "weight_decay": 0.1, "t_max": 50},
    # the rescaled projection of the authors' code
    "perp_adamw": {"lr": 1e-2, "weight_decay": 0.1},
    # unit-wise clipping, centralization, std normalization, norm loss, warm-up/down, Lookahead
    "ranger21": {"lr": 1e-2, "num_iterations": 100},
    # kappa = the l2 norm of each tensor: the direction is m / ||m|| per tensor
    "lion_kappa": {"lr": 1e-3, "kappa": "l2", "weight_decay": 0.1},
}


def _flat_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 and t.numel() > 0 else t.reshape(1, -1)


def test_reductions_and_broadcasts_equal_per_tensor_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    seg = Segments(SHAPES, torch.device("cpu"), torch.float64, rows=True)
    x = _flat_of(ts)
    sums = torch.stack([t.sum() for t in ts])
    torch.testing.assert_close(seg.tensor_sum(x), sums, rtol=1e-14, atol=1e-15)
    norms = torch.stack([t.norm() for t in ts])
    torch.testing.assert_close(seg.tensor_norm(x), norms, rtol=1e-14, atol=1e-15)
    maxes = torch.stack(
        [t.abs().max() if t.numel() else torch.zeros((), dtype=t.dtype) for t in ts]
    )
    assert torch.equal(seg.tensor_abs_max(x), maxes)
    row_sums = torch.cat([_rows(t).sum(dim=1) for t in ts])
    torch.testing.assert_close(seg.row_sum(x), row_sums, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(seg.sum_rows(seg.row_sum(x)), sums, rtol=1e-14, atol=1e-15)
    row_max = torch.stack([_rows(t).sum(dim=1).max() if t.numel() else torch.zeros((),
                          dtype=t.dtype) for t in ts])  # fmt: skip
    nonempty = torch.tensor([t.numel() > 0 for t in ts])
    torch.testing.assert_close(
        seg.max_rows(seg.row_sum(x))[nonempty], row_max[nonempty], rtol=1e-14, atol=1e-15
    )
    per_tensor = torch.arange(len(ts), dtype=torch.float64) + 1
    expected = _flat_of(
        [torch.full(t.shape, float(i + 1), dtype=t.dtype) for i, t in enumerate(ts)]
    )
    assert torch.equal(seg.expand(per_tensor), expected)
    per_row = torch.arange(seg.row_lengths.numel(), dtype=torch.float64)
    expanded = seg.expand_rows(per_row)
    torch.testing.assert_close(seg.row_sum(torch.ones_like(x)) * per_row, seg.row_sum(expanded))
    assert torch.equal(seg.to_rows(per_tensor), torch.repeat_interleave(per_tensor,
                       seg.rows_per_tensor))  # fmt: skip
    assert seg.is_matrix.tolist() == [True, False, False, True, False, False, True, True]
    assert seg.row_size.tolist() == [4, 5, 0, 4, 1, 0, 7, 2]
    assert seg.ndim.tolist() == [len(shape) for shape in SHAPES]


def test_element_counts_stay_exact_for_16_bit_buffers() -> None:
    """1001 is not a bfloat16 number: the per-tensor constants of a bf16 group are float32, so
    thresholds like delta / sqrt(numel) and std's n - 1 stay exact."""
    seg = Segments([(1001,), (7, 143)], torch.device("cpu"), torch.bfloat16, rows=True)
    assert seg.numel.dtype == torch.float32 and seg.numel.tolist() == [1001, 1001]
    assert seg.row_size.tolist() == [1001, 143]


@pytest.mark.parametrize("name", ["ranger21", "adamp", "novograd"])
def test_bf16_flat_path_keeps_dtypes_and_follows_the_per_tensor_path(
    name: str, monkeypatch
) -> None:
    """bf16 parameters: the segmented form runs, its parameters and state keep the dtypes of
    the per-tensor path, and it stays within bf16 rounding of that path over a few steps."""
    monkeypatch.setattr(Segments, "use_views", lambda self, x: False)
    runs = []
    for fused in (False, "flat"):
        model = _model().to(torch.bfloat16)
        opt = gradkit.create_optimizer(model, name, fused=fused, **HP[name])
        _train(model, opt, 3, dtype=torch.bfloat16)
        runs.append((model, opt))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert q.dtype == torch.bfloat16
        ref_state, flat_state = runs[0][1].state[p], runs[1][1].state[q]
        assert {k: v.dtype for k, v in ref_state.items()} == {
            k: v.dtype for k, v in flat_state.items()
        }
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        torch.testing.assert_close(p.float(), q.float(), rtol=0.05, atol=0.02)


def _model(seed: int = 0, hidden: int = 8, layers: int = 1) -> nn.Module:
    """A convolution followed by batch norm (scale-invariant, so AdamP/SGDP project it; no bias
    there, whose gradient would be rounding noise), then ``layers`` linear layers."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = [
        nn.Conv2d(3, hidden, 3, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(), nn.Flatten(),
        nn.Linear(hidden * 16, 10), nn.LayerNorm(10),
    ]  # fmt: skip
    for _ in range(layers - 1):
        mods += [nn.Tanh(), nn.Linear(10, 10)]
    mods.append(nn.Linear(10, 4))
    return nn.Sequential(*mods)


def _train(model: nn.Module, opt, steps: int, dtype=torch.float64, start: int = 0) -> None:
    for t in range(start, start + steps):
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(16, 3, 6, 6, generator=gen, dtype=dtype)
        y = torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        torch.manual_seed(100 + t)  # methods that draw noise (Gravity's init) draw the same
        opt.step()


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("form", ["segmented", "views"])
@pytest.mark.parametrize("name", SEGMENTED)
def test_flat_path_equals_per_tensor_path(name: str, form: str, monkeypatch) -> None:
    """100 steps in float64 on the flat buffers and on the per-tensor path: the same trajectory
    to rounding (the reductions sum in another order). Both forms of the flat path: the
    segmented reductions (compiled code and GPUs) and the per-tensor form on views of the flat
    buffers (eager on a CPU)."""
    monkeypatch.setattr(Segments, "use_views", lambda self, x: form == "views")
    runs = []
    for fused in (False, "flat"):
        model = _model().double()
        opt = gradkit.create_optimizer(model, name, fused=fused, **HP[name])
        _train(model, opt, 100)
        runs.append((model, opt))
    assert runs[1][1]._flat and runs[1][1]._flat[next(iter(runs[1][1]._flat))].segments
    assert _max_diff(runs[0][0], runs[1][0]) < 1e-12
    # the per-parameter state looks the same on both paths (per-tensor state as 0-d tensors)
    s_ref, s_flat = runs[0][1].state_dict()["state"], runs[1][1].state_dict()["state"]
    for pid, st in s_ref.items():
        for key, value in st.items():
            assert value.shape == s_flat[pid][key].shape, key
            torch.testing.assert_close(value, s_flat[pid][key], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_projection_fires_on_the_flat_path(name: str) -> None:
    """The test above would pass with a projection that never fires: with the cosine test
    switched off (delta tiny) the flat trajectory changes, so it was active."""
    ends = []
    for delta in (0.1, 1e-12):
        model = _model().double()
        opt = gradkit.create_optimizer(model, name, fused="flat", delta=delta, **HP[name])
        _train(model, opt, 10)
        ends.append(model)
    assert _max_diff(*ends) > 1e-4


@pytest.mark.parametrize("name", ["novograd", "stable_spam"])
def test_per_tensor_state_resumes_across_paths(name: str) -> None:
    """Per-tensor state (one value per tensor) saved on the flat path resumes on the per-tensor
    path and back, matching an uninterrupted run."""
    ref = _model().double()
    _train(ref, gradkit.create_optimizer(ref, name, fused=False, **HP[name]), 40)
    for first_path, second_path in (("flat", False), (False, "flat")):
        model = _model().double()
        opt = gradkit.create_optimizer(model, name, fused=first_path, **HP[name])
        _train(model, opt, 20)
        saved = copy.deepcopy(opt.state_dict())
        opt2 = gradkit.create_optimizer(model, name, fused=second_path, **HP[name])
        opt2.load_state_dict(saved)
        _train(model, opt2, 20, start=20)
        assert _max_diff(ref, model) < 1e-12, (first_path, second_path)


def test_ranger21_is_not_compiled_by_default() -> None:
    """Ranger21's in-chain lr schedule is Python arithmetic on the step and lr, on which a
    compiled step would specialize (several graphs in a 12-step run); so its default path is
    not the compiled one, while the elementwise and segmented chains' is."""
    cuda_param = SimpleNamespace(device=SimpleNamespace(type="cuda"))  # what _flat_mode reads
    for name in SEGMENTED:
        opt = gradkit.create_optimizer(_model(), name)
        mode = opt._flat_mode({"params": [cuda_param]})
        assert mode == (None if name == "ranger21" else "compiled"), name
    assert gradkit.create_optimizer(_model(), "ranger21").transform.compile_ok is False


@pytest.mark.parametrize("name", [n for n in SEGMENTED if n != "ranger21"])
def test_compiled_flat_path_is_one_graph_for_any_number_of_tensors(name: str) -> None:
    """fused=True traced (aot_eager: the graph the compiler sees, run with ATen ops) on models
    with 7, 11 and 15 tensors of different sizes: one graph in all (the segments' sizes are
    symbolic, so the graph does not grow with the number of tensors), matching the eager flat
    path to float32 rounding."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    for hidden, layers in ((8, 1), (5, 3), (12, 5)):
        a, b = _model(hidden=hidden, layers=layers), _model(hidden=hidden, layers=layers)
        oa = gradkit.create_optimizer(a, name, fused="flat", **HP[name])
        ob = gradkit.create_optimizer(b, name, fused=True, **HP[name])
        ob._compile_backend = "aot_eager"
        _train(a, oa, 12, dtype=torch.float32)
        _train(b, ob, 12, dtype=torch.float32)
        assert _max_diff(a, b) < 1e-5, (name, hidden, layers)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 1, f"{graphs} graphs for three models"


def test_inductor_compiles_the_segmented_step() -> None:
    """The real compiler (inductor, C++ on CPU) on AdamP's flat step, in float64: equal to the
    eager flat path to rounding."""
    torch._dynamo.reset()
    a, b = _model().double(), _model().double()
    oa = gradkit.create_optimizer(a, "adamp", fused="flat", **HP["adamp"])
    ob = gradkit.create_optimizer(b, "adamp", fused=True, **HP["adamp"])
    _train(a, oa, 6)
    _train(b, ob, 6)
    assert _max_diff(a, b) < 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [n for n in SEGMENTED if n != "ranger21"])
def test_cuda_default_is_the_compiled_segmented_path(name: str) -> None:
    """On CUDA the default path (fused=None) is the compiled flat path with segments; in float64
    it matches the eager per-tensor path to rounding over 12 steps."""
    a, b = _model().double().cuda(), _model().double().cuda()
    oa = gradkit.create_optimizer(a, name, fused=False, **HP[name])
    ob = gradkit.create_optimizer(b, name, **HP[name])
    for t in range(12):
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(16, 3, 6, 6, generator=gen, dtype=torch.float64).cuda()
        y = torch.randint(0, 4, (16,), generator=gen).cuda()
        for model, opt in ((a, oa), (b, ob)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            torch.manual_seed(100 + t)  # Gravity's initial draw: the same for both
            opt.step()
    assert ob._flat and next(iter(ob._flat.values())).segments is not None
    assert _max_diff(a, b) < 1e-10, name
