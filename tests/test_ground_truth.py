"""Ground-truth interpretability, sparse probing and absorption on hand-built cases."""

import hashlib
import itertools

import pytest
import torch

from tc_circuits.evaluation.interpretability import DetectionCounts, auroc, score_latents
from tc_circuits.evaluation.probing import absorption, balanced_split, sparse_probe
from tc_circuits.organism.corpus import documents, labelled_documents
from tc_circuits.organism.labels import KINDS, ROLES, binary_variables, labelled_token_batches


def test_corpus_text_unchanged_by_labels():
    # Hashes of the corpus as generated before it became labelled segments (the shipped
    # model was trained on exactly this text).
    expected = {
        (0, 6): "bc5d0a5602b40c0ccb52c95dcb8e9c208eabeca7e33ae58f2924bcb9c7f68d92",
        (3, 12): "975d2e79c593ba7de0c2a3f7962add4006d716b177af4d0c1f7a99d9758f648d",
        (10000, 8): "83a36feb0ce5b0d8401eabf5a795dff53c3f791d989920ef88ce8cc0d653e010",
    }
    for (seed, n), digest in expected.items():
        h = hashlib.sha256()
        for d in itertools.islice(documents(seed, n), 300):
            h.update(d.encode())
            h.update(b"\n")
        assert h.hexdigest() == digest
    doc = next(labelled_documents(0, 6))
    assert " ".join("".join(t for t, _, _ in segs) for _, segs in doc) == next(documents(0, 6))


def test_labelled_batches_match_token_source_and_labels_are_right():
    from tc_circuits.organism import organism_token_source, organism_tokenizer

    tok = organism_tokenizer()
    lab = list(itertools.islice(labelled_token_batches(0, 4, 64, tokenizer=tok), 3))
    plain = list(itertools.islice(organism_token_source(0, 4, 64, tokenizer=tok), 3))
    for a, b in zip(lab, plain):
        assert torch.equal(a.tokens, b)
    b = lab[0]
    strings = [tok.decode([i]) for i in range(len(tok))]
    n_checked = 0
    for r in range(b.tokens.shape[0]):
        for p in range(1, b.tokens.shape[1]):
            role, value, s = ROLES[b.role[r, p]], b.value[r][p], strings[b.tokens[r, p]]
            if role in ("start_yy", "end_yy"):
                assert s == f"{value:02d}" and KINDS[b.kind[r, p]] == "greater_than"
                assert strings[b.tokens[r, p - 1]] == f" {b.century[r, p]}"
                n_checked += 1
            elif role in ("subject", "indirect_object", "list_repeat", "event_noun"):
                assert s == f" {value}"
                n_checked += 1
    assert n_checked > 10
    # IOI: the subject's name equals the s_first name of the same sentence
    roles = [ROLES[i] for i in b.role.flatten().tolist()]
    vals = [v for row in b.value for v in row]
    last_s = None
    for role, v in zip(roles, vals):
        if role == "s_first":
            last_s = v
        if role == "subject":
            assert v == last_s


def test_auroc_matches_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (200,), generator=g).double()  # many ties
    y = torch.rand(200, generator=g) < 0.3
    pos, neg = s[y], s[~y]
    ref = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert auroc(s, y) == pytest.approx(float(ref), abs=1e-12)  # sparse (non-negative) path
    assert auroc(s - 2.5, y) == pytest.approx(float(ref), abs=1e-12)  # general path
    with pytest.raises(ValueError, match="both classes"):
        auroc(s, torch.zeros(200, dtype=torch.bool))


def test_exact_latent_scores_one_and_random_latent_near_chance():
    g = torch.Generator().manual_seed(0)
    n = 20_000
    holds = torch.rand(n, 3, generator=g) < torch.tensor([0.1, 0.2, 0.05])
    exact = holds[:, 1].float() * (1 + torch.rand(n, generator=g))  # active exactly when var 1 holds
    rand = (torch.rand(n, generator=g) < 0.2).float() * torch.rand(n, generator=g)
    dead = torch.zeros(n)
    lat = torch.stack([exact, rand, dead], 1)
    sc = score_latents(lat, holds, ["a", "b", "c"], threshold=0.5)
    assert sc.best_variable[0] == "b" and float(sc.f1[0]) == 1.0 and float(sc.auroc[0]) == 1.0
    assert float(sc.precision[0]) == 1.0 and float(sc.recall[0]) == 1.0
    assert abs(float(sc.auroc[1]) - 0.5) < 0.03
    # chance F1 of a rate-0.2 random latent against its best variable (rate 0.2): 2pq/(p+q) * q-ish
    p, q = 0.2, 0.2
    assert abs(float(sc.f1[1]) - 2 * p * q / (p + q)) < 0.02
    assert not bool(sc.alive[2]) and sc.best_variable[2] == ""
    assert sc.score == pytest.approx((1.0 + float(sc.f1[1])) / 2)
    assert sc.matched_share == 0.5


def test_detection_counts_match_loops():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(50, 4, generator=g) < 0.4
    h = torch.rand(50, 3, generator=g) < 0.5
    c = DetectionCounts(a, h)
    for i in range(4):
        for j in range(3):
            tp = int((a[:, i] & h[:, j]).sum())
            assert c.tp[i, j] == tp
            assert c.f1()[i, j] == pytest.approx(2 * tp / (int(a[:, i].sum()) + int(h[:, j].sum())))


def test_sparse_probe_on_planted_data():
    g = torch.Generator().manual_seed(0)
    n, m = 4000, 40
    y = torch.rand(n, generator=g) < 0.3
    z = torch.relu(torch.randn(n, m, generator=g))  # noise latents
    z[:, 7] = y.float() * (1 + torch.rand(n, generator=g))  # latent 7 is the variable
    raw = torch.randn(n, 16, generator=g)
    raw[:, 3] += 3 * y.float()
    res = sparse_probe(z, y, ks=(1, 5), raw=raw)
    assert res.latents[1] == [7]
    assert res.sparse[1] == 1.0 and res.sparse[5] == 1.0
    assert res.raw > 0.9
    # a variable no latent carries: near chance
    y2 = torch.rand(n, generator=g) < 0.5
    res2 = sparse_probe(z, y2, ks=(1,))
    assert abs(res2.sparse[1] - 0.5) < 0.06
    tr, te = balanced_split(y)
    assert int(y[tr].sum()) * 2 == len(tr) and set(tr.tolist()).isdisjoint(te.tolist())


def test_absorption_on_hand_built_split():
    # Variable G holds on 1000 tokens; the main latent fires on 600 of them; on 300 others a
    # specific latent (only ever on G) fires instead; 100 are missed entirely.
    n = 3000
    y = torch.zeros(n, dtype=torch.bool)
    y[:1000] = True
    z = torch.zeros(n, 4)
    z[:600, 0] = 1.0
    z[600:900, 1] = 1.0
    z[950, 3] = 1.0  # fires once on G: too rare to count as specific (min_active=5)
    z[2000:2100, 0] = 1.0  # main latent's false positives
    z[:, 2] = (torch.arange(n) % 2 == 0).float()  # unspecific latent
    res = absorption(z, y, name="G")
    assert res.main_latent == 0
    assert res.main_recall == pytest.approx(0.6)
    assert res.absorption_rate == pytest.approx(0.3)
    assert res.miss_rate == pytest.approx(0.1)
    assert res.specific_latents == [1]


def test_binary_variables_flags_years_of_a_century():
    lab = list(itertools.islice(labelled_token_batches(1, 8, 64), 2))
    v = binary_variables(lab, min_count=1)
    col = v.column("century:year_in_1700s") if "century:year_in_1700s" in v.names else None
    roles = torch.cat([b.role[:, 1:].reshape(-1) for b in lab])
    cent = torch.cat([b.century[:, 1:].reshape(-1) for b in lab])
    years = (roles == ROLES.index("start_yy")) | (roles == ROLES.index("end_yy"))
    expect = years & (cent == 17)
    if col is None:
        assert int(expect.sum()) == 0
    else:
        assert torch.equal(col, expect)
    assert v.matrix.shape[0] == roles.shape[0]
    with pytest.raises(KeyError, match="no variable"):
        v.column("nope")
