"""Sanity warnings on results: a degenerate explanatory graph is flagged on its pages, a network that scores
its own inputs near chance is flagged on the ablation page; healthy results carry no warning."""

from __future__ import annotations

import pytest
from django.urls import reverse

from analysis import selectors
from analysis.models import (
    AblationStudy,
    ClassDiscriminativeness,
    Concept,
    Dataset,
    ExplanatoryGraph,
    GraphNode,
    Layer,
    Network,
    Run,
)

pytestmark = pytest.mark.django_db
CLASSES = ["bird", "car", "cat", "chair", "dog", "person", "tree"]


@pytest.fixture
def world():
    """A 7-class network with two layers (8 filters each) on a dataset with its object classes; no arrays."""
    dataset = Dataset.objects.create(name="probe", kind="probe_world", root_dir="/nonexistent")
    for number, name in enumerate(CLASSES, start=1):
        Concept.objects.create(dataset=dataset, number=number, name=name, category="object")
    network = Network.objects.create(
        name="net", source="module", input_height=64, input_width=64, mean=[0], std=[1], class_names=CLASSES
    )
    for order, name in enumerate(["conv4", "conv5"], start=4):
        Layer.objects.create(network=network, name=name, order=order, units=8, out_height=4, out_width=4)
    return network, dataset


def make_graph(network, dataset, place) -> ExplanatoryGraph:
    """A graph over conv5 (top) and conv4, 3 nodes per filter, node positions from ``place(filter, node)``."""
    run = Run.objects.create(
        kind="explanatory_graph", params={}, params_hash=f"g{Run.objects.count()}", status="succeeded"
    )
    graph = ExplanatoryGraph.objects.create(
        run=run,
        network=network,
        dataset=dataset,
        layers=["conv5", "conv4"],
        params={"nodes_per_filter": [3, 3]},
        directory="/nonexistent",
        n_nodes=48,
    )
    for level, name in enumerate(graph.layers):
        layer = network.layers.get(name=name)
        rank = 0
        for filter_index in range(8):
            for node in range(3):
                rank += 1
                x, y = place(filter_index, node)
                GraphNode.objects.create(
                    graph=graph,
                    layer=layer,
                    level=level,
                    filter=filter_index,
                    node=node,
                    flat=filter_index * 3 + node,
                    mu_x=x,
                    mu_y=y,
                    sigma=3.0,
                    mass=0.3,
                    score_total=100.0 - rank,
                    rank=rank,
                )
    return graph


def test_degenerate_graph_is_flagged_on_its_pages(client, researcher, world):
    client.force_login(researcher)
    collapsed = make_graph(*world, place=lambda f, n: (2.0, 1.5))  # every node of a filter in the top-left corner
    warnings = selectors.graph_sanity_warnings(collapsed)
    assert len(warnings) == 4  # both layers: collapsed nodes and corner nodes
    assert warnings[0].startswith("conv5: in 8 of 8 filters every node sits at the same position")
    assert "20 of its 20 best nodes sit in a corner" in warnings[1]
    page = client.get(reverse("analysis:graph_detail", args=[collapsed.pk])).content.decode()
    assert "This graph looks degenerate." in page and "in 8 of 8 filters every node sits at the same" in page
    assert "sit in a corner of the 64×64 input" in page
    assert selectors.graph_sanity_warnings(collapsed, layer_name="conv4") == warnings[2:]

    healthy = make_graph(*world, place=lambda f, n: (16.0 + 4 * f, 20.0 + 10 * n))  # spread over the middle
    assert selectors.graph_sanity_warnings(healthy) == []
    page = client.get(reverse("analysis:graph_detail", args=[healthy.pk])).content.decode()
    assert "This graph looks degenerate." not in page and "sanity-warning" not in page


def test_one_collapsed_filter_alone_is_not_a_warning(world):
    graph = make_graph(*world, place=lambda f, n: (30.0, 30.0) if f == 0 else (16.0 + 4 * f, 20.0 + 10 * n))
    assert selectors.graph_sanity_warnings(graph) == []


def make_ablation(network, dataset, scores: dict[str, float]) -> AblationStudy:
    layer = network.layers.get(name="conv5")
    run = Run.objects.create(kind="ablate", params={}, params_hash=f"a{Run.objects.count()}", status="succeeded")
    study = AblationStudy.objects.create(run=run, layer=layer, dataset=dataset, score="softmax", n_classes=len(scores))
    for name, score in scores.items():
        ClassDiscriminativeness.objects.create(
            study=study,
            object_class=dataset.concepts.get(name=name),
            n_images=10,
            mean_score=score,
            deltas=[0.001] * 8,
            sigma=0.001,
            discriminative=[],
        )
    return study


def test_near_chance_network_is_flagged_on_the_ablation_page(client, researcher, world):
    client.force_login(researcher)
    network, dataset = world
    url = reverse("analysis:layer_ablation", args=["net", "conv5"])
    make_ablation(network, dataset, {name: 0.03 if name == "person" else 0.2 for name in CLASSES})
    page = client.get(url).content.decode()
    chance = 1 / 7
    mean = (0.03 + 6 * 0.2) / 7
    assert mean < 2 * chance
    assert "The network scores these inputs near chance." in page
    assert f"mean softmax for the true class is {mean:.3f}, under 2× chance ({chance:.3f} for 7 classes)" in page
    assert "below that line: bird, car, cat, chair, dog, person, tree" in page

    make_ablation(network, dataset, {name: 0.03 if name == "person" else 0.9 for name in CLASSES})  # the newest
    page = client.get(url).content.decode()
    assert "near chance" not in page  # mean 0.776: the network recognises its inputs


def test_logit_studies_are_not_judged_against_chance(world):
    network, dataset = world
    study = make_ablation(network, dataset, {name: 0.01 for name in CLASSES})
    assert selectors.ablation_sanity_warning(study, network)["classes"] == CLASSES
    study.score = "logit"
    assert selectors.ablation_sanity_warning(study, network) is None
