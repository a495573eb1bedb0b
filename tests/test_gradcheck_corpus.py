"""The gradient check over its corpus (issue 17): no correct network fails, no bug passes.

Correct book-style networks (``tests/gradcheck_corpus.py``) must PASS at every seed and at
batch sizes 1, 3, 10 and 100; every planted bug must FAIL naming exactly its parameters, or,
when the loss is not a function of the parameters, be refused.  The default grid is a
sample; ``-m slow`` runs the big one, and ``scripts/gradcheck_rates.py`` prints the rates.
"""

# The book's dropout draws from NumPy's global generator; a test rewinds it.
# ruff: noqa: NPY002

from __future__ import annotations

import inspect

import numpy as np
import pytest

from fastnum._jit import JIT_ENABLED
from fastnum.gradcheck import gradcheck
from fastnum.gradcheck._errors import GradcheckRefusedError
from tests import gradcheck_corpus as corpus

SMALL = [f for f in corpus.FAMILIES.values() if not f.book_size]
BOOK = [f for f in corpus.FAMILIES.values() if f.book_size]
BOOK_DENSE = [f for f in BOOK if f.kind == "dense"]
BUGS = list(corpus.BUGS.values())
FAIL_BUGS = [b for b in BUGS if b.expect != corpus.REFUSED]
REFUSED_BUGS = [b for b in BUGS if b.expect == corpus.REFUSED]
BATCHES = corpus.BATCH_SIZES


def _seeds(many, few):
    """Many seeds where the kernels take milliseconds, few where numba's JIT is off and the
    network's own loss is differentiated in Python (a conv net at batch 100: ~10 s)."""
    return range(many if JIT_ENABLED else few)


def _false_failures(family, seeds, n, **kw):
    """Every check of ``family`` on ``seeds`` that did not PASS, described for the assertion."""
    out = []
    for seed in seeds:
        o = corpus.check_family(family, seed, n, **kw)
        if o.verdict != "PASS":
            out.append(f"{family.name}, seed {seed}, batch {n}: {o.verdict}\n{o.detail}")
    return out


def _misses(bug, seeds, n, **kw):
    """Every check of ``bug`` on ``seeds`` that was not the expected answer, described."""
    out = []
    for seed in seeds:
        o = corpus.check_bug(bug, seed, n, **kw)
        if not o.caught(bug.expect):
            out.append(f"{bug.name}, seed {seed}, batch {n}: {o.verdict} {o.failed}\n{o.detail}")
    return out


def _ids(items):
    return [item.name.replace(" ", "_") for item in items]


# ------------------------------------------------------------------- correct networks


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("family", SMALL, ids=_ids(SMALL))
def test_correct_small_networks_pass_on_every_seed(family, n):
    wrong = _false_failures(family, _seeds(10, 2), n)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("n", [10, 100])
@pytest.mark.parametrize("family", SMALL, ids=_ids(SMALL))
def test_correct_small_networks_pass_on_real_mnist(family, n, mnist):
    wrong = _false_failures(family, _seeds(2, 1), n, mnist=mnist[0])
    assert not wrong, "\n".join(wrong)


@pytest.mark.numba  # the engine differentiates these in well under a second; Python takes minutes
@pytest.mark.parametrize("n", [10, 100])
@pytest.mark.parametrize("family", BOOK_DENSE, ids=_ids(BOOK_DENSE))
def test_correct_networks_at_the_books_sizes_pass(family, n):
    # Before the step ladder, W1 failed on some seeds at batch 10 and 100: only 512 kink
    # elements were probed, and the rest counted as failures.
    wrong = _false_failures(family, range(4), n)
    assert not wrong, "\n".join(wrong)


@pytest.mark.numba
# The conv bias b1 of the book's SimpleConvNet has a corner exactly at theta (blank patches,
# zero bias) and, on these seeds, another 1e-8..7e-8 away (a conv output that close to 0):
# the one-sided slopes at h/100 and h/1000 cross it, only the steps below bracket backprop.
@pytest.mark.parametrize("seed, images", [(2, "synthetic"), (0, "MNIST")])
def test_book_conv_net_bias_with_a_second_corner_within_h_over_1000(seed, images, request):
    mnist = request.getfixturevalue("mnist")[0] if images == "MNIST" else None
    o = corpus.check_family(
        corpus.FAMILIES["SimpleConvNet 28x28 30x5x5-100"], seed, 10, mnist=mnist
    )
    assert o.verdict == "PASS", o.detail


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("family", SMALL, ids=_ids(SMALL))
def test_correct_small_networks_pass_on_the_generic_path(family, n):
    wrong = _false_failures(family, range(1), n, method="generic", workers=1)
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------------------- planted bugs


def _bug_grid():
    """(bug, n) for every planted bug and batch size."""
    return [
        pytest.param(bug, n, id=f"{bug.name.replace(' ', '_')}-{n}")
        for bug in BUGS
        for n in BATCHES
        if n >= bug.min_batch  # no division by the batch size is no bug at batch 1
    ]


@pytest.mark.parametrize("bug, n", _bug_grid())
def test_planted_bugs_are_caught_on_every_seed(bug, n):
    wrong = _misses(bug, _seeds(3, 1), n)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bug", BUGS, ids=_ids(BUGS))
def test_planted_bugs_are_caught_on_the_generic_path(bug):
    wrong = _misses(bug, range(1), 10, method="generic", workers=1)
    assert not wrong, "\n".join(wrong)


def test_own_generator_dropout_at_batch_1_on_the_generic_path():
    # Once a false pass: the first draws of the layer's own generator kept the same live
    # units, so the losses at theta agreed. The generator's moving state now refuses it.
    o = corpus.check_bug(corpus.BUGS["dropout with its own generator"], 0, 1, method="generic")
    assert o.verdict in (corpus.REFUSED, "FAIL"), o.verdict


@pytest.mark.parametrize(
    "name, why",
    [
        ("noisy loss", "not a function of the parameters"),
        ("dropout with its own generator", "not a function of the parameters"),
        ("loss moves its weights", r"changed net.params\['W1'\]"),
    ],
)
@pytest.mark.parametrize("method", ["auto", "generic"])
def test_non_deterministic_losses_are_refused_with_the_reason(name, why, method):
    # At batch 10 two draws of a dropout mask give the same loss with negligible odds.
    bug = corpus.BUGS[name]
    for seed in range(3):
        x, t = corpus.batch(bug.kind, bug.side, seed, 10)
        with pytest.raises(GradcheckRefusedError, match=why):
            gradcheck(bug.net(seed), x, t, method=method, workers=1)


def test_the_refused_bugs_are_all_tested_for_their_reason():
    assert {b.name for b in REFUSED_BUGS} == {
        "noisy loss",
        "dropout with its own generator",
        "loss moves its weights",
    }


def test_a_non_finite_element_is_named_with_its_index():
    bug = corpus.BUGS["NaN in a gradient"]
    net = bug.net(7)
    x, t = corpus.batch(bug.kind, bug.side, 7, 10)
    result = gradcheck(net, x, t, workers=1)
    name, q, _ = net.poison
    index = [int(i) for i in np.unravel_index(q, net.params[name].shape)]
    assert result.failed == [name]
    assert f"{name}{index}" in result.report()


# ------------------------------------------------------------------- the big grid (slow)


@pytest.mark.slow
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("family", SMALL, ids=_ids(SMALL))
def test_slow_correct_small_networks_pass_on_200_seeds(family, n):
    wrong = _false_failures(family, _seeds(200, 20), n)
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("family", SMALL, ids=_ids(SMALL))
def test_slow_correct_small_networks_pass_on_real_mnist(family, n, mnist):
    wrong = _false_failures(family, range(20), n, mnist=mnist[0])
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.numba
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("family", BOOK, ids=_ids(BOOK))
def test_slow_correct_networks_at_the_books_sizes_pass(family, n, mnist):
    wrong = _false_failures(family, range(3), n) + _false_failures(
        family, range(3), n, mnist=mnist[0]
    )
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("bug", BUGS, ids=_ids(BUGS))
def test_slow_planted_bugs_are_caught_on_30_seeds(bug, n):
    if n < bug.min_batch:
        pytest.skip(f"at batch {n} '{bug.name}' is no bug")
    wrong = _misses(bug, range(30), n)
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.parametrize(
    "item, n",
    [
        pytest.param(item, n, id=f"{item.name.replace(' ', '_')}-{n}")
        for item in SMALL + BUGS
        for n in BATCHES
    ],
)
def test_slow_generic_path_over_the_corpus(item, n):
    if isinstance(item, corpus.Family):
        wrong = _false_failures(item, range(5), n, method="generic", workers=1)
    elif n >= item.min_batch:
        wrong = _misses(item, range(5), n, method="generic", workers=1)
    else:
        pytest.skip(f"at batch {n} '{item.name}' is no bug")
    assert not wrong, "\n".join(wrong)


# ----------------------------------------------------------- the corpus is what it says


def test_synthetic_images_look_like_mnist():
    x, t = corpus.batch("conv", 28, 0, 100)
    assert x.shape == (100, 1, 28, 28) and t.shape == (100,) and set(t) <= set(range(10))
    assert x.min() == 0.0 and x.max() == 1.0
    assert 0.7 < np.mean(x == 0) < 0.9  # MNIST: ~81% of pixels are exactly 0
    assert np.all(x[:, :, :5] == 0)  # an empty border
    assert np.array_equal(x, corpus.batch("conv", 28, 0, 100)[0])  # seeded
    assert not np.array_equal(x, corpus.batch("conv", 28, 1, 100)[0])


def test_real_mnist_is_cropped_at_its_centre(mnist):
    images, labels = mnist[0]
    full, t = corpus.batch("conv", 28, 0, 3, mnist=mnist[0])
    for image, label in zip(full.reshape(3, 784), t, strict=True):
        (where,) = np.flatnonzero(np.all(images == image.astype(np.float32), axis=1))[:1]
        assert labels[where] == label
    dense, t_dense = corpus.batch("dense", corpus.DENSE_SIDE, 0, 3, mnist=mnist[0])
    assert dense.shape == (3, 64) and np.array_equal(t_dense, t)
    assert np.array_equal(dense.reshape(3, 8, 8), full[:, 0, 10:18, 10:18])


@pytest.mark.parametrize("bug", FAIL_BUGS, ids=_ids(FAIL_BUGS))
def test_each_bug_changes_exactly_the_gradients_it_names(bug):
    # Independent of gradcheck: same weights as the correct base network, and backprop
    # differs from the base network's in the expected parameters and no others.
    x, t = corpus.batch(bug.kind, bug.side, 4, 10)
    buggy, clean = bug.net(4), corpus.FAMILIES[bug.base].net(4)
    assert all(np.array_equal(buggy.params[k], clean.params[k]) for k in clean.params)
    bp, ref_bp = buggy.gradient(x, t), clean.gradient(x, t)
    changed = tuple(k for k in ref_bp if not np.allclose(bp[k], ref_bp[k], rtol=1e-12, atol=0))
    assert changed == bug.expect


@pytest.mark.parametrize("bug", REFUSED_BUGS, ids=_ids(REFUSED_BUGS))
def test_each_refused_bug_really_is_not_a_function(bug):
    x, t = corpus.batch(bug.kind, bug.side, 4, 10)
    net = bug.net(4)
    before = {k: v.copy() for k, v in net.params.items()}
    kw = {"train_flg": True} if "train_flg" in inspect.signature(net.loss).parameters else {}
    state = np.random.get_state()
    first = net.loss(x, t, **kw)
    np.random.set_state(state)  # the book's dropout would repeat its mask now
    second = net.loss(x, t, **kw)
    moved = any(not np.array_equal(net.params[k], before[k]) for k in before)
    assert first != second or moved
