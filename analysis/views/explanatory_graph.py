"""Explanatory-graph pages (Zhang et al. AAAI'18): a network's graphs (one per object category of a run, each named by
its category and inputs) and the form that learns them, a graph's layers with node counts per filter, location
instability against raw filters and a compact drawing of part of the graph, a layer's nodes, a node's top patches
and edges. Thin: reads rows and the service's reads, starts runs through it."""

from __future__ import annotations

import io
from collections import Counter
from itertools import zip_longest

from django import forms
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views import View
from django.views.generic import FormView, TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis import selectors
from analysis.models import Dataset, ExplanatoryGraph, GraphEdge, GraphInstability, GraphNode, Network
from analysis.params import form_field
from analysis.services.explanatory_graph import (
    GRAPH_DEFAULTS,
    GRAPH_PARAMS,
    graph_filter_inferences,
    graph_node_inferences,
    graph_purity_candidates,
    graph_run_start,
    purity_patch_picture,
)
from analysis.services.runs import RunInputError
from analysis.views.starting import StartRunFormMixin

PATCHES_SHOWN = 24
DIAGRAM_WIDTH = 760
DIAGRAM_ROW = 110


class GraphForm(forms.Form):
    dataset = forms.ChoiceField(help_text="The dataset whose objects (or images) the graphs explain.")
    layers = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, help_text="Two or three top conv layers (the paper: the top conv layers)."
    )
    nodes_per_filter = forms.CharField(
        required=False,
        label="Nodes per filter N",
        help_text="One count per layer from the top, e.g. 10, 20, 40 (the paper's three-layer values; empty = these).",
    )
    iterations = form_field(GRAPH_PARAMS, "iterations", label="EM iterations T")
    neighbours = form_field(GRAPH_PARAMS, "neighbours", label="Upper-layer neighbours M")
    tau = form_field(GRAPH_PARAMS, "tau", label="Noise density τ")
    inputs = form_field(
        GRAPH_PARAMS,
        "inputs",
        label="Inputs",
        choice_labels={
            "object_crops": "Object crops of each category (the paper's; forward passes)",
            "whole_images": "Whole images holding the category (the cached activations)",
        },
    )
    graphs = form_field(
        GRAPH_PARAMS,
        "graphs",
        label="Graphs",
        choice_labels={
            "per_category": "One graph per object category (the paper's)",
            "pooled": "One graph pooled over every category (not the paper's)",
        },
    )
    category = form_field(GRAPH_PARAMS, "category", label="Only this category (blank: every category)")
    max_learn_images = form_field(
        GRAPH_PARAMS, "max_learn_images", label="Learning inputs per graph (0 = all of its training inputs)"
    )
    landmarks = forms.CharField(
        initial=", ".join(GRAPH_DEFAULTS["landmarks"]),
        help_text="Part classes whose box centres are the landmarks of location instability.",
    )

    def __init__(self, *args, network: Network, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = [
            (name, name) for name in Dataset.objects.order_by("name").values_list("name", flat=True)
        ]
        self.fields["layers"].choices = [
            (name, name) for name in network.layers.order_by("-order").values_list("name", flat=True)
        ]

    def clean_nodes_per_filter(self):
        text = self.cleaned_data["nodes_per_filter"].replace(" ", "")
        if not text:
            return None
        try:
            return [int(part) for part in text.split(",") if part]
        except ValueError:
            raise forms.ValidationError("Give whole numbers separated by commas.") from None

    def clean_landmarks(self):
        return [part.strip() for part in self.cleaned_data["landmarks"].split(",") if part.strip()]


class NetworkGraphsView(ResearcherRequiredMixin, StartRunFormMixin, FormView):
    """A network's explanatory graphs and the form that learns a new one."""

    nav_section = "networks"
    template_name = "analysis/graph/list.html"
    form_class = GraphForm
    run_label = "Explanatory graph"

    def network(self) -> Network:
        return get_object_or_404(Network, name=self.kwargs["name"])

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "network": self.network()}

    def get_initial(self):
        network = self.network()
        top = list(network.layers.order_by("-order").values_list("name", flat=True)[:2])
        graph = ExplanatoryGraph.objects.filter(network=network).first()
        dataset = graph.dataset.name if graph else (network.trained_on.name if network.trained_on else None)
        return {"layers": top, "dataset": dataset}

    def get_context_data(self, **kwargs):
        network = self.network()
        graphs = (
            ExplanatoryGraph.objects.filter(network=network)
            .select_related("dataset", "run")
            .order_by("-run__created_at", "-run_id", "category", "id")
        )
        return {**super().get_context_data(**kwargs), "network": network, "graphs": graphs}

    def start_run(self, form):
        data = dict(form.cleaned_data)
        return graph_run_start(network=self.network().name, created_by=self.request.user, **data)


class GraphMixin:
    nav_section = "networks"

    def get_graph(self) -> ExplanatoryGraph:
        return get_object_or_404(
            ExplanatoryGraph.objects.select_related("network", "dataset", "run"), pk=self.kwargs["graph"]
        )


def _instability_rows(graph: ExplanatoryGraph) -> list[dict]:
    rows = []
    for name in graph.layers:
        entry = graph.instability.get(name) if isinstance(graph.instability, dict) else None
        if entry:
            rows.append({"layer": name, **entry})
    return rows


def _best_per_filter(nodes, count: int) -> list[GraphNode]:
    """The first ``count`` nodes of ``nodes`` (ordered by rank) from distinct filters."""
    seen, out = set(), []
    for node in nodes:
        if node.filter not in seen:
            seen.add(node.filter)
            out.append(node)
            if len(out) == count:
                break
    return out


def _diagram(graph: ExplanatoryGraph, *, bottom: int = 10, per_level: int = 10, parents_each: int = 3) -> dict:
    """A compact drawing of part of the graph, built bottom-up so that every drawn node is connected: the best node of
    each of the ``bottom`` best filters of the lowest layer, then, layer by layer upwards, the ``per_level`` upper
    nodes most often among the first ``parents_each`` neighbours E_V of the nodes drawn below, with those edges."""
    depth = len(graph.layers)
    lowest = GraphNode.objects.filter(graph=graph, level=depth - 1).order_by("rank")
    levels: list[list[GraphNode]] = [_best_per_filter(lowest.iterator(), bottom)]
    edges: list[GraphEdge] = []
    for _ in range(depth - 1):
        below = [node.pk for node in levels[0]]
        up_edges = list(GraphEdge.objects.filter(child_id__in=below, order__lt=parents_each).select_related("parent"))
        counts = Counter(edge.parent_id for edge in up_edges)
        parents = {edge.parent_id: edge.parent for edge in up_edges}
        chosen = sorted(counts, key=lambda pk: (-counts[pk], parents[pk].rank))[:per_level]
        edges += [edge for edge in up_edges if edge.parent_id in chosen]
        levels.insert(0, sorted((parents[pk] for pk in chosen), key=lambda node: node.rank))
    placed, circles = {}, []
    for level, nodes in enumerate(levels):
        gap = DIAGRAM_WIDTH / (len(nodes) + 1)
        for position, node in enumerate(nodes, start=1):
            x, y = round(gap * position, 1), 30 + level * DIAGRAM_ROW
            placed[node.pk] = (x, y)
            circles.append(
                {
                    "node": node,
                    "x": x,
                    "y": y,
                    "r": round(5 + 9 * min(1.0, node.mass**0.5), 1),
                    "url": reverse("analysis:graph_node", args=[graph.pk, node.pk]),
                    "layer": graph.layers[level],
                }
            )
    lines = [
        {
            "x1": placed[e.parent_id][0],
            "y1": placed[e.parent_id][1],
            "x2": placed[e.child_id][0],
            "y2": placed[e.child_id][1],
        }
        for e in edges
        if e.parent_id in placed and e.child_id in placed
    ]
    return {
        "circles": circles,
        "lines": lines,
        "width": DIAGRAM_WIDTH,
        "height": 30 + DIAGRAM_ROW * (len(levels) - 1) + 40,
        "levels": [(graph.layers[level], len(nodes)) for level, nodes in enumerate(levels)],
    }


class GraphDetailView(ResearcherRequiredMixin, GraphMixin, TemplateView):
    """A graph: its layers (nodes, filters, nodes per filter), instability against raw filters, a drawing."""

    template_name = "analysis/graph/detail.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        graph = self.get_graph()
        layer_rows = []
        counts = dict(GraphNode.objects.filter(graph=graph).values_list("layer__name").annotate(n=Count("id")))
        edge_counts = dict(
            GraphEdge.objects.filter(graph=graph).values_list("child__layer__name").annotate(n=Count("id"))
        )
        per_filter = graph.params.get("nodes_per_filter", [])
        for level, name in enumerate(graph.layers):
            layer_rows.append(
                {
                    "name": name,
                    "level": level,
                    "nodes": counts.get(name, 0),
                    "edges": edge_counts.get(name, 0),
                    "per_filter": per_filter[level] if level < len(per_filter) else None,
                }
            )
        top_nodes = []
        for name in graph.layers:
            top_nodes += _best_per_filter(
                GraphNode.objects.filter(graph=graph, layer__name=name)
                .select_related("layer")
                .order_by("rank")
                .iterator(),
                8,
            )
        context.update(
            graph=graph,
            network=graph.network,
            run_graphs=ExplanatoryGraph.objects.filter(run_id=graph.run_id).order_by("category", "id"),
            layer_rows=layer_rows,
            sanity_warnings=selectors.graph_sanity_warnings(graph),
            instability_rows=_instability_rows(graph),
            diagram=_diagram(graph),
            top_nodes=top_nodes,
        )
        return context


class GraphLayerView(ResearcherRequiredMixin, GraphMixin, TemplateView):
    """One graph layer: node counts per filter (nodes that explain entities), the nodes by score, and the
    instability of its top nodes beside the raw filters'."""

    template_name = "analysis/graph/layer.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        graph = self.get_graph()
        name = self.kwargs["layer"]
        if name not in graph.layers:
            raise Http404("No such layer in this graph.")
        layer = graph.network.layers.get(name=name)
        nodes = GraphNode.objects.filter(graph=graph, layer=layer)
        threshold = 0.01
        active = Counter(nodes.filter(mass__gte=threshold).values_list("filter", flat=True))
        filters = []
        for index in range(layer.units):
            filters.append({"filter": index, "active": active.get(index, 0)})
        histogram = Counter(row["active"] for row in filters)
        instabilities = GraphInstability.objects.filter(graph=graph, layer=layer).select_related("node")
        context.update(
            graph=graph,
            network=graph.network,
            layer=layer,
            sanity_warnings=selectors.graph_sanity_warnings(graph, layer_name=name),
            purity_candidates=graph_purity_candidates(graph, layer=name, count=10),
            nodes=nodes.order_by("rank")[:100],
            node_count=nodes.count(),
            per_filter=graph.params.get("nodes_per_filter", [None] * len(graph.layers))[graph.layers.index(name)],
            histogram=sorted(histogram.items()),
            threshold=threshold,
            summary=(graph.instability or {}).get(name),
            instability_pairs=list(
                zip_longest(
                    instabilities.filter(kind="node").order_by("rank")[:20],
                    instabilities.filter(kind="filter").order_by("rank")[:20],
                )
            ),
        )
        return context


class GraphNodeView(ResearcherRequiredMixin, GraphMixin, TemplateView):
    """A node: its prior position, its top-scoring patches (Fig. 5) beside its raw filter's, and its edges."""

    template_name = "analysis/graph/node.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        graph = self.get_graph()
        node = get_object_or_404(GraphNode.objects.select_related("layer"), graph=graph, pk=self.kwargs["pk"])
        inferences = graph_node_inferences(node, limit=PATCHES_SHOWN)
        purity = graph_node_inferences(node, fraction=0.3)
        parents = GraphEdge.objects.filter(child=node).select_related("parent__layer").order_by("order")
        children = GraphEdge.objects.filter(parent=node).select_related("child__layer").order_by("child__rank")[:20]
        siblings = GraphNode.objects.filter(graph=graph, layer=node.layer, filter=node.filter).order_by("node")
        instability = GraphInstability.objects.filter(graph=graph, node=node).first()
        filter_instability = GraphInstability.objects.filter(
            graph=graph, layer=node.layer, kind="filter", filter=node.filter
        ).first()
        context.update(
            graph=graph,
            network=graph.network,
            node=node,
            inferences=inferences,
            purity_k=len(purity),
            parents=parents,
            children=children,
            siblings=siblings,
            instability=instability,
            filter_instability=filter_instability,
            patches_shown=PATCHES_SHOWN,
        )
        return context


def _png(picture) -> HttpResponse:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    response = HttpResponse(buffer.getvalue(), content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


class GraphNodePatchesView(ResearcherRequiredMixin, GraphMixin, View):
    """PNG: the node's top-scoring fixed-size patches at its inferred positions, best first."""

    def get(self, request, graph: int, pk: int):
        graph = self.get_graph()
        node = get_object_or_404(GraphNode.objects.select_related("layer"), graph=graph, pk=pk)
        inferences = graph_node_inferences(node, limit=PATCHES_SHOWN)
        return _png(purity_patch_picture(graph, [[item] for item in inferences]))


class GraphFilterPatchesView(ResearcherRequiredMixin, GraphMixin, View):
    """PNG: a raw filter's top patches at its peaks (the baseline beside a node's)."""

    def get(self, request, graph: int, layer: str, index: int):
        graph = self.get_graph()
        layer_row = graph.network.layers.filter(name=layer).first()
        if layer_row is None or layer not in graph.layers or index >= layer_row.units:
            raise Http404("No such filter in this graph.")
        try:
            groups = graph_filter_inferences(graph, layer_row, index, limit=PATCHES_SHOWN, mode="peaks")
        except RunInputError as error:
            raise Http404(str(error)) from None
        return _png(purity_patch_picture(graph, groups))
