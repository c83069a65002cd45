"""The mathematics of every method, checked on small hand-made tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdsearch.errors import UserError
from kdsearch.methods import METHODS, Outputs, TaskLoss, build_method
from kdsearch.methods.at import attention_distance, attention_map

SINGLE = TaskLoss(multilabel=False)
MULTI = TaskLoss(multilabel=True)


def test_kd_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10)
    kd = build_method("kd", {"temperature": 3.0, "alpha": 1.0}, objective=SINGLE, make_peer=None)
    out = kd(Outputs(logits, []), torch.randint(0, 10, (8,)), Outputs(logits.clone(), []))
    assert out["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_term_is_t_squared_times_the_softened_kl():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    for temperature in (1.0, 2.0, 8.0):
        p = torch.softmax(t / temperature, 1)
        q = torch.softmax(s / temperature, 1)
        by_hand = (p * (p.log() - q.log())).sum(1).mean() * temperature**2
        assert SINGLE.soft(s, t, temperature).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_kd_gradient_scale_does_not_vanish_with_temperature():
    # Hinton et al. sec. 2: d(KL_T)/dz ~ (z_s - z_t) / (K T^2) at high T, so the T^2 factor keeps
    # the soft-target gradient's size fixed as T grows; without it, 4x the T would give 1/16.
    torch.manual_seed(0)
    t = torch.randn(64, 10)
    s0 = torch.randn(64, 10)
    norms = []
    for temperature in (8.0, 32.0):
        s = s0.clone().requires_grad_()
        SINGLE.soft(s, t, temperature).backward()
        norms.append(s.grad.norm().item())
    assert norms[1] / norms[0] == pytest.approx(1.0, abs=0.1)


def test_kd_mixes_ce_and_kd_by_alpha():
    s, t, y = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    kd = build_method("kd", {"temperature": 2.0, "alpha": 0.25}, objective=SINGLE, make_peer=None)
    out = kd(Outputs(s, []), y, Outputs(t, []))
    assert out["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.75 * out["ce"].item() + 0.25 * out["kd"].item(), rel=1e-6)


def test_multilabel_kd_matches_a_hand_computed_bernoulli_kl():
    s = torch.tensor([[0.5, -1.0, 2.0]])
    t = torch.tensor([[1.5, 0.0, -2.0]])
    temperature = 2.0
    total = 0.0
    for zs, zt in zip(s[0].tolist(), t[0].tolist()):
        p = 1 / (1 + math.exp(-zt / temperature))
        q = 1 / (1 + math.exp(-zs / temperature))
        total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    expected = total / 3 * temperature**2  # mean over attributes, times T^2
    assert MULTI.soft(s, t, temperature).item() == pytest.approx(expected, rel=1e-5)
    # and never a softmax across attributes
    assert MULTI.soft(s, t, temperature).item() != pytest.approx(SINGLE.soft(s, t, temperature).item(), rel=1e-3)


def test_multilabel_hard_loss_is_bce():
    logits = torch.randn(5, 4)
    targets = torch.randint(0, 2, (5, 4), dtype=torch.uint8)
    assert MULTI.hard(logits, targets).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets.float()).item(), rel=1e-6
    )


def _at(**kw):
    return build_method("at", kw, objective=SINGLE, make_peer=None)


def test_at_is_zero_for_identical_features_and_invariant_to_feature_scale():
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    logits, y = torch.randn(2, 10), torch.tensor([1, 2])
    at = _at(beta=1000.0)
    same = at(Outputs(logits, feats), y, Outputs(logits, [f.clone() for f in feats]))
    assert same["at"].item() == pytest.approx(0.0, abs=1e-7)
    scaled = at(Outputs(logits, feats), y, Outputs(logits, [f * 37.0 for f in feats]))
    assert scaled["at"].item() == pytest.approx(0.0, abs=1e-7)
    other = at(Outputs(logits, feats), y, Outputs(logits, [torch.randn_like(f) for f in feats]))
    assert other["at"].item() > 1e-4
    assert other["loss"].item() == pytest.approx(other["ce"].item() + 500.0 * other["at"].item(), rel=1e-5)


def test_attention_map_follows_the_paper():
    f = torch.randn(3, 5, 4, 4)
    assert torch.allclose(attention_map(f), f.pow(2).mean(1))
    # distance equals the original code's (normalize(a_s) - normalize(a_t))^2 mean
    g = torch.randn(3, 7, 4, 4)
    ref = (F.normalize(f.pow(2).mean(1).view(3, -1)) - F.normalize(g.pow(2).mean(1).view(3, -1))).pow(2).mean()
    assert attention_distance(attention_map(f), attention_map(g)).item() == pytest.approx(ref.item(), rel=1e-5)


def test_at_pools_stages_that_cannot_match_in_size():
    torch.manual_seed(0)
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    teacher = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    logits, y = torch.randn(2, 3), torch.tensor([0, 1])
    # Only the deepest pair carries weight: the loss must equal that pair's distance alone.
    out = _at(weights=[0.0, 0.0, 1.0])(Outputs(logits, student), y, Outputs(logits, teacher))
    expected = attention_distance(attention_map(student[2]), attention_map(teacher[3]))
    assert out["at"].item() == pytest.approx(expected.item(), rel=1e-6)
    # A 4x4 teacher map against an 8x8 student map: pooled, or refused with resize="error".
    mismatched = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2), torch.randn(2, 8, 1, 1)]
    assert torch.isfinite(_at()(Outputs(logits, student), y, Outputs(logits, mismatched))["at"])
    with pytest.raises(ValueError, match="differ in size"):
        _at(resize="error")(Outputs(logits, student), y, Outputs(logits, mismatched))
    with pytest.raises(ValueError, match="3 matched stages: give 3 weights"):
        _at(weights=[1.0, 1.0])(Outputs(logits, student), y, Outputs(logits, teacher))


def test_at_optional_kd_term():
    logits, t_logits, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    feats = [torch.randn(2, 4, 4, 4)]
    out = _at(alpha=0.5, temperature=2.0, beta=0.0)(Outputs(logits, feats), y, Outputs(t_logits, feats))
    assert out["loss"].item() == pytest.approx(0.5 * out["ce"].item() + 0.5 * SINGLE.soft(logits, t_logits, 2.0).item(), rel=1e-5)


class _Fixed(nn.Module):
    """A 'peer' whose logits are a learnable table, to inspect DML's gradients."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits


def test_dml_is_symmetric_between_two_peers():
    torch.manual_seed(0)
    a, b, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    dml_ab = build_method("dml", {"temperature": 2.0}, objective=SINGLE, make_peer=lambda: _Fixed(b))
    dml_ba = build_method("dml", {"temperature": 2.0}, objective=SINGLE, make_peer=lambda: _Fixed(a))
    out_ab = dml_ab(Outputs(a, []), y, None, torch.zeros(4))
    out_ba = dml_ba(Outputs(b, []), y, None, torch.zeros(4))
    assert out_ab["loss"].item() == pytest.approx(out_ba["loss"].item(), rel=1e-6)
    assert out_ab["mutual"].item() == pytest.approx(SINGLE.soft(a, b, 2.0).item(), rel=1e-6)


def test_dml_each_peer_learns_only_from_its_own_loss():
    torch.manual_seed(0)
    a = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, 5)
    y = torch.randint(0, 5, (4,))
    dml = build_method("dml", {"weight": 1.0}, objective=SINGLE, make_peer=lambda: _Fixed(b))
    dml(Outputs(a, []), y, None, torch.zeros(4))["loss"].backward()
    peer = dml.peers[0].logits
    b_ref = b.clone().requires_grad_()
    (F.cross_entropy(b_ref, y) + SINGLE.soft(b_ref, a.detach(), 1.0)).backward()
    assert torch.allclose(peer.grad, b_ref.grad, atol=1e-6)


def test_dml_with_the_frozen_teacher_learns_from_it_too():
    """use_teacher: each learner's KL term is the mean over the other peers and the teacher; the
    teacher gets no gradient."""
    torch.manual_seed(0)
    a, b, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5, requires_grad=True), torch.randint(0, 5, (4,))
    dml = build_method(
        "dml", {"temperature": 2.0, "weight": 0.5, "use_teacher": True}, objective=SINGLE, make_peer=lambda: _Fixed(b)
    )
    out = dml(Outputs(a, []), y, Outputs(t, []), torch.zeros(4))
    student_kl = (SINGLE.soft(a, b, 2.0) + SINGLE.soft(a, t, 2.0)) / 2
    peer_kl = (SINGLE.soft(b, a, 2.0) + SINGLE.soft(b, t, 2.0)) / 2
    assert out["mutual"].item() == pytest.approx(student_kl.item(), rel=1e-6)
    expected = F.cross_entropy(a, y) + 0.5 * student_kl + F.cross_entropy(b, y) + 0.5 * peer_kl
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert t.grad is None


def test_dml_cohort_size_and_frozen_teacher():
    peers = []
    dml = build_method(
        "dml", {"num_peers": 3, "use_teacher": True}, objective=SINGLE, make_peer=lambda: peers.append(1) or nn.Linear(2, 2)
    )
    assert len(dml.peers) == 2 and dml.needs_teacher
    with pytest.raises(UserError, match="num_peers"):
        build_method("dml", {"num_peers": 1}, objective=SINGLE, make_peer=lambda: nn.Linear(2, 2))


def test_unknown_method_and_setting_are_one_line_errors():
    with pytest.raises(UserError) as err:
        build_method("fitnets", {}, objective=SINGLE, make_peer=None)
    assert (
        str(err.value)
        == f"unknown method 'fitnets': choose one of {', '.join(sorted(METHODS))}, or name your own Method subclass as module:Class"
    )
    with pytest.raises(UserError, match="method 'kd' has no setting 'temp': its settings are temperature, alpha"):
        build_method("kd", {"temp": 4}, objective=SINGLE, make_peer=None)
    with pytest.raises(UserError, match="alpha must be in"):
        build_method("kd", {"alpha": 1.5}, objective=SINGLE, make_peer=None)


def test_method_settings_are_checked_against_their_declared_types():
    with pytest.raises(UserError, match="method 'kd': temperature must be a number, got 'abc'"):
        build_method("kd", {"temperature": "abc"}, objective=TaskLoss(), make_peer=lambda: None)
    with pytest.raises(UserError, match=r"method 'at': weights\[1\] must be a number, got 'x'"):
        build_method("at", {"weights": [1, "x"]}, objective=TaskLoss(), make_peer=lambda: None)
    assert build_method("kd", {"temperature": "8"}, objective=TaskLoss(), make_peer=lambda: None).temperature == 8.0


def test_methods_declare_what_they_need():
    assert [METHODS[m].uses_teacher({}) for m in ("ce", "kd", "at", "dml")] == [False, True, True, False]
    assert METHODS["dml"].uses_teacher({"use_teacher": True}) and "attention" in METHODS["at"].reads.teacher
    dml = build_method("dml", {"num_peers": 3}, objective=TaskLoss(), make_peer=lambda: torch.nn.Linear(2, 2))
    assert len(dml.extra_modules()) == 2 and not dml.needs_teacher


@pytest.mark.parametrize("student, teacher, expected", [
    ("resnet20", "resnet50", [(0, 0), (1, 1), (2, 2)]),  # 32, 16, 8 each; the teacher's 4x4 stage is left out
    ("resnet18", "resnet50", [(0, 0), (1, 1), (2, 2), (3, 3)]),
    ("resnet8", "resnet56", [(0, 0), (1, 1), (2, 2)]),
])  # fmt: skip
def test_at_pairs_stages_of_the_same_spatial_size(student, teacher, expected):
    from kdsearch.methods.at import pair_stages
    from kdsearch.models import build_model

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        s_logits, s_feats = build_model(student, 10, 3, "cifar").eval().forward_with_features(x)
        t_logits, t_feats = build_model(teacher, 10, 3, "cifar").eval().forward_with_features(x)
    index = pair_stages([tuple(f.shape[-2:]) for f in s_feats], [tuple(f.shape[-2:]) for f in t_feats])
    assert index == expected
    assert all(s_feats[i].shape[-2:] == t_feats[j].shape[-2:] for i, j in index)  # never pooled
    at = _at()
    at(Outputs(s_logits, s_feats), torch.tensor([0, 1]), Outputs(t_logits, t_feats))
    assert (
        at.describe().startswith("AT pairs: teacher stage 1 (256x32x32) <-> student stage 1")
        if teacher == "resnet50"
        else at.describe()
    )


def test_at_pairing_keeps_order_and_falls_back_where_sizes_differ():
    from kdsearch.methods.at import pair_stages

    assert pair_stages([(8, 8), (4, 4), (2, 2)], [(4, 4), (2, 2), (1, 1)]) == [
        (0, 0),
        (1, 1),
        (2, 2),
    ]  # nothing matches: positional
    assert pair_stages([(32, 32), (16, 16), (8, 8), (4, 4)], [(32, 32), (16, 16), (8, 8)]) == [
        (0, 0),
        (1, 1),
        (2, 2),
    ]  # more student stages
    assert pair_stages([(16, 16), (8, 8)], [(32, 32), (16, 16), (8, 8), (4, 4)]) == [(0, 1), (1, 2)]


def test_dkd_matches_the_papers_formulas_computed_independently():
    """Zhao et al. 2022, eq. 7: CE + alpha * TCKD + beta * NCKD, each KL at temperature T times
    T^2: TCKD over (target, not target), NCKD over the non-target classes renormalised."""
    import numpy as np

    from kdsearch.methods.dkd import DecoupledKD

    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    y = np.array([0, 3, 6, 2, 2])
    alpha, beta, t = 1.5, 8.0, 4.0

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    ps, pt = softmax(zs / t), softmax(zt / t)
    tckd = nckd = 0.0
    for i, c in enumerate(y):
        bs, bt = np.array([ps[i, c], 1 - ps[i, c]]), np.array([pt[i, c], 1 - pt[i, c]])
        tckd += (bt * np.log(bt / bs)).sum()
        rest = [k for k in range(7) if k != c]
        ns, nt = ps[i, rest] / ps[i, rest].sum(), pt[i, rest] / pt[i, rest].sum()
        nckd += (nt * np.log(nt / ns)).sum()
    tckd, nckd = tckd / len(y) * t * t, nckd / len(y) * t * t
    ce = np.mean([-np.log(softmax(zs)[i, c]) for i, c in enumerate(y)])

    method = DecoupledKD(alpha=alpha, beta=beta, temperature=t, objective=TaskLoss())
    out = method(Outputs(torch.tensor(zs), []), torch.tensor(y), Outputs(torch.tensor(zt), []), None)
    assert out["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert out["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + alpha * tckd + beta * nckd, rel=1e-5)
    # with alpha = beta = 1 and the teacher's confidence folded back in, DKD is not KD: check it differs
    kd = TaskLoss().soft(torch.tensor(zs), torch.tensor(zt), t).item()
    assert abs(kd - (tckd + nckd)) > 1e-3


def test_dkd_on_multi_label_data_is_one_line():
    with pytest.raises(UserError, match="method 'dkd': DKD is single-label"):
        build_method("dkd", {}, objective=TaskLoss(multilabel=True), make_peer=nn.Identity)
