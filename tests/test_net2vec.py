"""Net2Vec (Fong & Vedaldi §3.1): the engine on planted data, and the run, its rows and its page on a tiny probe
world."""
from __future__ import annotations

import pytest
import torch
from django.urls import reverse

from analysis.engine.net2vec import (ProbeConfig, cosine_similarity, fit_concept_probes, nearest_concepts,
                                     probe_masks, sample_pixels, set_iou, set_iou_counts, weighted_bce)

SIZE = 64
INPUT = (112, 112)


# -- engine ---------------------------------------------------------------------------------------------

def planted(seed: int = 1, pixels: int = 16000, units: int = 10):
    """Binary unit masks; the concept is exactly where units 3 and 7 are both on (the linear rule
    u3 + u7 − 1.5 > 0), so no single unit segments it (IoU ≈ 0.4) but a combination does (IoU 1)."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(pixels, units, generator=gen) < 0.4
    truth = features[:, 3] & features[:, 7]
    half = pixels // 2
    return features[:half], truth[:half], features[half:], truth[half:]


def test_combination_beats_every_single_filter_and_weights_concentrate_on_the_planted_units():
    train_x, train_y, val_x, val_y = planted()
    probes = fit_concept_probes(train_x, train_y, config=ProbeConfig(epochs=10, top_f=(1, 2, 4)))
    inter, union = set_iou_counts(val_x.T, val_y.unsqueeze(0))
    single = set_iou(inter, union)[0]
    assert single.argmax().item() in (3, 7) and single.max() < 0.45
    masks = probe_masks(val_x, [probes.full, probes.top[1], probes.top[2], probes.top[4]])
    inter, union = set_iou_counts(masks, val_y.unsqueeze(0))
    full, top1, top2, top4 = set_iou(inter, union)[0].tolist()
    assert full > single.max() + 0.2
    assert top2 == 1.0 and top4 > single.max()
    assert probes.top[1].units.item() in (3, 7)  # F = 1 is that unit's own mask again
    assert top1 == pytest.approx(single[probes.top[1].units.item()].item(), abs=1e-12)
    weight = probes.embedding.abs()
    assert set(weight.topk(2).indices.tolist()) == {3, 7}
    assert weight[[3, 7]].min() > 3 * weight[[0, 1, 2, 4, 5, 6, 8, 9]].max()
    assert probes.top[2].units.tolist() == [3, 7]
    assert probes.alpha == pytest.approx(1 - train_y.float().mean().item())


def test_training_is_deterministic_under_a_seed_and_depends_on_it():
    train_x, train_y, _, _ = planted(seed=2, pixels=6000)
    config = ProbeConfig(epochs=3, batch_pixels=512, top_f=(2,), seed=4)
    first = fit_concept_probes(train_x, train_y, config=config)
    again = fit_concept_probes(train_x, train_y, config=config)
    other = fit_concept_probes(train_x, train_y, config=ProbeConfig(epochs=3, batch_pixels=512, top_f=(2,), seed=5))
    assert torch.equal(first.full.weight, again.full.weight) and first.full.bias == again.full.bias
    assert torch.equal(first.top[2].weight, again.top[2].weight)
    assert not torch.equal(first.full.weight, other.full.weight)
    assert torch.equal(sample_pixels(100, 10, seed=1, image=3), sample_pixels(100, 10, seed=1, image=3))
    assert not torch.equal(sample_pixels(100, 10, seed=1, image=3), sample_pixels(100, 10, seed=1, image=4))
    assert sample_pixels(5, 10, seed=0, image=0).tolist() == [0, 1, 2, 3, 4]


def test_set_iou_counts_weighted_loss_and_cosine_by_hand():
    pred = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    inter, union = set_iou_counts(pred, truth)
    assert inter.tolist() == [[1, 0]] and union.tolist() == [[3, 2]]
    assert set_iou(inter, union).tolist() == [[1 / 3, 0.0]]
    logits, target = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    expected = -(0.8 * torch.log(torch.tensor(0.5)) + 0.2 * torch.log(torch.tensor(0.5))) / 2
    assert weighted_bce(logits, target, 0.8).item() == pytest.approx(expected.item())
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    assert cosine_similarity(embeddings)[0, 3].item() == pytest.approx(-1.0)
    assert nearest_concepts(embeddings, 0, 2) == [(1, pytest.approx(2 ** -0.5)), (2, pytest.approx(0.0))]


# -- service and page -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker):
    """The tiny probe world and the seeded demo network with its conv5 extraction, built once for the module."""
    from analysis.engine.demo_network import demo_network_target
    from analysis.engine.networks import NetworkKind, NetworkSpec
    from analysis.models import Dataset, Network, Run, RunStatus
    from analysis.services.datasets import probe_world_run_start
    from analysis.services.extraction import extraction_run_start
    from analysis.services.networks import network_register

    with django_db_blocker.unblock():
        first_run = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        run = probe_world_run_start(name="tiny-n2v", n_images=36, size=SIZE, seed=5, inline=True)
        assert run.status == RunStatus.SUCCEEDED, run.error
        network_register(name="seeded-n2v", spec=NetworkSpec(kind=NetworkKind.MODULE, target=demo_network_target(),
                                                             kwargs={"num_classes": 7}, input_size=INPUT,
                                                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
        extraction = extraction_run_start(network="seeded-n2v", dataset="tiny-n2v", layers=["conv5"], batch_size=36,
                                          inline=True)
        assert extraction.status == RunStatus.SUCCEEDED, extraction.error + extraction.error_detail
        yield
        Network.objects.filter(name="seeded-n2v").delete()
        Dataset.objects.filter(name="tiny-n2v").delete()
        Run.objects.filter(pk__gte=first_run).delete()


@pytest.fixture(scope="module")
def study(shared_world, django_db_blocker):
    from analysis.models import Net2VecStudy, RunStatus
    from analysis.services.net2vec import net2vec_run_start

    with django_db_blocker.unblock():
        run = net2vec_run_start(network="seeded-n2v", dataset="tiny-n2v", layer="conv5", concepts=4, epochs=3,
                                min_images=2, pixels_per_image=64, top_f=[1, 4, 1000], inline=True)
        assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
        yield Net2VecStudy.objects.get(run=run)


@pytest.mark.django_db
def test_run_stores_one_row_per_concept(study):
    from analysis.models import Net2VecConcept

    rows = list(Net2VecConcept.objects.filter(study=study).select_related("concept"))
    units = study.layer.units
    assert study.n_concepts == len(rows) == 4
    assert study.top_f == [1, 4]  # sizes above the layer's width are dropped
    assert study.n_combination_wins == sum(row.combination_val_iou >= row.single_val_iou for row in rows)
    for row in rows:
        assert row.train_images >= 2 and row.val_images >= 2
        assert 0 <= row.best_unit < units and len(row.embedding) == units
        assert 0 <= row.single_val_iou <= 1 and 0 <= row.combination_val_iou <= 1
        assert 0 <= row.best_unit_train_iou <= 1 and 0 < row.alpha < 1
        assert set(row.top_f_val_iou) == {"1", "4"}
    images = [row.train_images + row.val_images for row in rows]
    assert images == sorted(images, reverse=True)  # the most frequent concepts


@pytest.mark.django_db
def test_page_renders_for_researchers_and_refuses_experts(study, client, make_user):
    from analysis.models import Net2VecConcept

    url = reverse("analysis:layer_net2vec", args=["seeded-n2v", "conv5"])
    client.force_login(make_user("rita", "researcher"))
    response = client.get(url)
    assert response.status_code == 200
    assert b"combination" in response.content and b"Nearest concepts" in response.content
    row = Net2VecConcept.objects.filter(study=study).select_related("concept").last()
    response = client.get(url, {"run": study.run_id, "concept": row.concept.number})
    assert response.status_code == 200 and row.concept.name.encode() in response.content
    assert client.get(url, {"run": 999999}).status_code == 404
    layer_page = client.get(reverse("analysis:layer_dissection", args=["seeded-n2v", "conv5"]))
    assert layer_page.status_code == 200 and url.encode() in layer_page.content
    client.force_login(make_user("eve", "expert"))
    assert client.get(url).status_code == 403
