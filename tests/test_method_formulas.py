"""Each feature and relation method's loss, checked against a separate float64 computation of
its paper's formula in numpy (written from the paper, not by calling kdsearch), on fixed tensors."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from kdsearch.methods import METHODS, TaskLoss
from kdsearch.methods.base import Seen
from kdsearch.methods.task_loss import Outputs

OBJECTIVE = TaskLoss()


def _batch(seed=0, n=6, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)


def _huber(x):
    a = np.abs(x)
    return np.where(a < 1.0, 0.5 * x * x, a - 0.5)


def _rkd_reference(s, t):
    def distances(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        mu = np.mean([d[i, j] for i in range(n) for j in range(n) if i != j])
        return d / mu

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i, j, k in itertools.product(range(n), repeat=3):
            u, v = e[i] - e[j], e[k] - e[j]
            nu, nv = np.linalg.norm(u), np.linalg.norm(v)
            out[i, j, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out

    distance = _huber(distances(s) - distances(t)).mean()
    angle = _huber(angles(s) - angles(t)).mean()
    return distance, angle


def test_rkd_is_the_papers_distance_and_angle_terms():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 12, generator=g), torch.randn(7, 20, generator=g) * 3.0  # widths may differ
    logits, y = _batch(n=7)
    rkd = METHODS["rkd"](distance_weight=25.0, angle_weight=50.0, objective=OBJECTIVE)
    out = rkd(Outputs(logits, [], embedding=s), y, Outputs(logits, [], embedding=t))
    distance, angle = _rkd_reference(s.double().numpy(), t.double().numpy())
    assert out["distance"].item() == pytest.approx(distance, rel=1e-5)
    assert out["angle"].item() == pytest.approx(angle, rel=1e-5)
    ce = nn.functional.cross_entropy(logits, y).item()
    assert out["loss"].item() == pytest.approx(ce + 25.0 * distance + 50.0 * angle, rel=1e-5)
    # relations do not change with the embedding's scale: a scaled teacher teaches the same
    scaled = rkd(Outputs(logits, [], embedding=s), y, Outputs(logits, [], embedding=t * 10.0))
    assert scaled["distance"].item() == pytest.approx(out["distance"].item(), rel=1e-5)


def test_pkt_is_the_kl_between_cosine_kernel_distributions():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 8, generator=g), torch.randn(6, 16, generator=g)
    logits, y = _batch()

    def conditional(e):
        n = e / np.linalg.norm(e, axis=1, keepdims=True)
        k = (n @ n.T + 1.0) / 2.0
        return k / k.sum(axis=1, keepdims=True)

    p, q = conditional(s.double().numpy()), conditional(t.double().numpy())
    expected = np.mean(q * np.log((q + 1e-7) / (p + 1e-7)))
    pkt = METHODS["pkt"](weight=30000.0, objective=OBJECTIVE)
    out = pkt(Outputs(logits, [], embedding=s), y, Outputs(logits, [], embedding=t))
    assert out["pkt"].item() == pytest.approx(expected, rel=1e-4)
    assert out["loss"].item() == pytest.approx(nn.functional.cross_entropy(logits, y).item() + 30000.0 * expected, rel=1e-4)
    same = pkt(Outputs(logits, [], embedding=t), y, Outputs(logits, [], embedding=t))
    assert abs(same["pkt"].item()) < 1e-6


def test_sp_is_the_papers_row_normalised_similarity_distance():
    g = torch.Generator().manual_seed(3)
    student = [torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 6, 4, 4, generator=g)]
    teacher = [torch.randn(5, 8, 8, 8, generator=g), torch.randn(5, 16, 2, 2, generator=g)]
    logits, y = _batch(n=5)

    def normalised_similarity(q):
        flat = q.reshape(len(q), -1)
        gram = flat @ flat.T
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)

    def sp_reference(stages):
        b = 5
        return sum(
            np.sum((normalised_similarity(teacher[k].double().numpy()) - normalised_similarity(student[k].double().numpy())) ** 2)
            for k in stages
        ) / (b * b)

    for stages in ([-1], [-2, -1]):
        sp = METHODS["sp"](weight=3000.0, stages=stages, objective=OBJECTIVE)
        out = sp(Outputs(logits, student), y, Outputs(logits, teacher))
        assert out["sp"].item() == pytest.approx(sp_reference(stages), rel=1e-5)
        ce = nn.functional.cross_entropy(logits, y).item()
        assert out["loss"].item() == pytest.approx(ce + 3000.0 * sp_reference(stages), rel=1e-5)


def test_fitnet_is_the_mean_squared_hint_through_its_regressor():
    g = torch.Generator().manual_seed(4)
    student = [torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 6, 4, 4, generator=g)]
    teacher = [
        torch.randn(4, 10, 8, 8, generator=g),
        torch.randn(4, 12, 4, 4, generator=g),
        torch.randn(4, 12, 2, 2, generator=g),
    ]
    logits, y = _batch(n=4)
    fitnet = METHODS["fitnet"](weight=100.0, objective=OBJECTIVE)  # stage -2: the middle stage of three
    fitnet.build(Seen([tuple(f.shape[1:]) for f in student], [tuple(f.shape[1:]) for f in teacher]))
    conv = fitnet.regressor[0]
    assert (conv.in_channels, conv.out_channels) == (6, 12)  # the student's channels to the teacher's
    fitnet.eval()  # batch norm with its running statistics: the regressor is a fixed function here
    out = fitnet(Outputs(logits, student), y, Outputs(logits, teacher))

    with torch.no_grad():
        regressed = fitnet.regressor(student[1]).double().numpy()  # 4 x 12 x 8 x 8, the hint is 4 x 12 x 4 x 4
    pooled = regressed.reshape(4, 12, 4, 2, 4, 2).mean(axis=(3, 5))  # the larger map averaged to the hint's size
    hint = np.mean((pooled - teacher[1].double().numpy()) ** 2)
    assert out["hint"].item() == pytest.approx(hint, rel=1e-5)
    assert out["loss"].item() == pytest.approx(nn.functional.cross_entropy(logits, y).item() + 100.0 * hint, rel=1e-5)


def test_crd_is_the_papers_nce_against_both_memory_banks_and_moves_them():
    g = torch.Generator().manual_seed(6)
    n, b, k, dim = 50, 4, 7, 8
    logits, y = _batch(n=b)
    crd = METHODS["crd"](weight=0.8, dim=dim, negatives=k, nce_temperature=0.5, momentum=0.5, objective=OBJECTIVE)
    crd.build(Seen(student_embedding=6, teacher_embedding=10, num_samples=n))
    s_emb, t_emb = torch.randn(b, 6, generator=g), torch.randn(b, 10, generator=g)
    index = torch.tensor([3, 17, 0, 42])
    negatives = torch.randint(0, n, (b, k), generator=g)
    crd.draw_negatives = lambda idx: negatives
    bank_s, bank_t = crd.memory_student.double().numpy().copy(), crd.memory_teacher.double().numpy().copy()
    with torch.no_grad():
        v_s = nn.functional.normalize(crd.heads["student"](s_emb), dim=1).double().numpy()
        v_t = nn.functional.normalize(crd.heads["teacher"](t_emb), dim=1).double().numpy()
    out = crd(Outputs(logits, [], embedding=s_emb), y, Outputs(logits, [], embedding=t_emb), index=index)

    rows = np.concatenate([index.numpy()[:, None], negatives.numpy()], axis=1)

    def nce(v, bank):
        raw = np.exp(np.einsum("brd,bd->br", bank[rows], v) / 0.5)
        h = raw / (raw.mean() * n)  # Z from this first batch
        noise = k / n
        return -(np.log(h[:, 0] / (h[:, 0] + noise + 1e-7)).sum() + np.log(noise / (h[:, 1:] + noise + 1e-7)).sum()) / b

    expected = nce(v_s, bank_t) + nce(v_t, bank_s)
    assert out["crd"].item() == pytest.approx(expected, rel=1e-4)
    assert out["loss"].item() == pytest.approx(nn.functional.cross_entropy(logits, y).item() + 0.8 * expected, rel=1e-4)
    # the banks move half way to the batch's embeddings, and stay unit length
    moved = 0.5 * bank_s[index.numpy()] + 0.5 * v_s
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    assert np.allclose(crd.memory_student[index].double().numpy(), moved, atol=1e-6)
    untouched = [i for i in range(n) if i not in index.tolist()]
    assert np.array_equal(crd.memory_teacher[untouched].double().numpy(), bank_t[untouched])


@pytest.mark.parametrize("name", ["fitnet", "rkd", "pkt", "sp", "crd", "reviewkd"])
def test_the_optional_kd_term_mixes_as_in_kd(name):
    g = torch.Generator().manual_seed(5)
    logits, y = _batch(n=4)
    t_logits = torch.randn(4, 5, generator=g)
    maps = [torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 2, 2, generator=g)]
    emb = torch.randn(4, 6, generator=g)
    method = METHODS[name](alpha=0.4, temperature=2.0, objective=OBJECTIVE)
    seen = Seen([tuple(f.shape[1:]) for f in maps], [tuple(f.shape[1:]) for f in maps], 6, 6, num_samples=20)
    method.build(seen)
    method.eval()
    alone = METHODS[name](alpha=0.0, objective=OBJECTIVE)
    alone.build(seen)
    alone.load_state_dict(method.state_dict())  # the same regressor, where there is one
    alone.eval()
    index = {"index": torch.arange(4)} if method.reads.index else {}
    out = method(Outputs(logits, maps, embedding=emb), y, Outputs(t_logits, maps, embedding=emb), **index)
    own = alone(Outputs(logits, maps, embedding=emb), y, Outputs(t_logits, maps, embedding=emb), **index)
    kd = OBJECTIVE.soft(logits, t_logits, 2.0).item()
    ce = nn.functional.cross_entropy(logits, y).item()
    assert out["kd"].item() == pytest.approx(kd, rel=1e-5) and "kd" not in own
    # (1 - alpha) CE + alpha KD, and the method's own term as it is without KD
    assert out["loss"].item() - (0.6 * ce + 0.4 * kd) == pytest.approx(own["loss"].item() - ce, rel=1e-5, abs=1e-6)


def _hcl_reference(g, t):
    """The hierarchical context loss in numpy: the map itself, then 4, 2, 1 where smaller, weights halving."""
    h = g.shape[-1]
    levels = [h] + [size for size in (4, 2, 1) if size < h]
    total = weights = 0.0
    for i, size in enumerate(levels):
        k = h // size  # the sizes here divide h: average pooling is a mean over k x k blocks
        pool = lambda a: a.reshape(*a.shape[:2], size, k, size, k).mean(axis=(3, 5))  # noqa: E731
        total += 0.5**i * np.mean((pool(g) - pool(t)) ** 2)
        weights += 0.5**i
    return total / weights


def test_reviewkd_fuses_deep_to_shallow_and_sums_the_hierarchical_context_loss():
    g = torch.Generator().manual_seed(7)
    student = [torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 8, 4, 4, generator=g)]
    teacher = [torch.randn(3, 6, 8, 8, generator=g), torch.randn(3, 10, 4, 4, generator=g), torch.randn(3, 12, 2, 2, generator=g)]
    s_emb, t_emb = torch.randn(3, 8, generator=g), torch.randn(3, 12, generator=g)
    logits, y = _batch(n=3)
    review = METHODS["reviewkd"](weight=2.0, objective=OBJECTIVE)
    review.build(Seen([tuple(f.shape[1:]) for f in student], [tuple(f.shape[1:]) for f in teacher], 8, 12))
    for p in review.parameters():  # batch norm's affine terms away from 1 and 0, so they count
        torch.nn.init.normal_(p, std=0.5, generator=g) if p.dim() == 1 else None
    review.eval()
    out = review(Outputs(logits, student, embedding=s_emb), y, Outputs(logits, teacher, embedding=t_emb))

    # The teacher's last two stages and its embedding are paired with the student's two stages and embedding.
    t_maps = [teacher[1], teacher[2], t_emb.reshape(3, 12, 1, 1)]
    s_maps = [student[0], student[1], s_emb.reshape(3, 8, 1, 1)]

    def bn(x, m):
        return (x - m.running_mean[None, :, None, None].double()) / torch.sqrt(
            m.running_var[None, :, None, None].double() + m.eps
        ) * m.weight[None, :, None, None].double() + m.bias[None, :, None, None].double()

    def conv(x, c):
        return torch.nn.functional.conv2d(x, c.weight.double(), None if c.bias is None else c.bias.double(), padding=c.padding)

    def nearest(x, size):
        rows = (torch.arange(size[0]) * x.shape[-2]) // size[0]
        cols = (torch.arange(size[1]) * x.shape[-1]) // size[1]
        return x[..., rows[:, None], cols[None, :]]

    expected, passed = 0.0, None
    with torch.no_grad():
        for i in (2, 1, 0):  # deepest first
            fusion = review.fusions[i]
            x = bn(conv(s_maps[i].double(), fusion.reduce[0]), fusion.reduce[1])
            if passed is not None:
                up = nearest(passed, x.shape[-2:])
                a = torch.sigmoid(conv(torch.cat([x, up], 1), fusion.attention[0]))
                x = x * a[:, 0:1] + up * a[:, 1:2]
            passed = x
            reviewed = nearest(bn(conv(x, fusion.expand[0]), fusion.expand[1]), t_maps[i].shape[-2:])
            expected += _hcl_reference(reviewed.numpy(), t_maps[i].double().numpy())
    assert out["review"].item() == pytest.approx(expected, rel=1e-4)
    assert out["loss"].item() == pytest.approx(nn.functional.cross_entropy(logits, y).item() + 2.0 * expected, rel=1e-4)
