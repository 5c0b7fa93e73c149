"""Dataset pages: the list (with generate/import forms), a dataset's concepts, its images with masks."""

from __future__ import annotations

import io

from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.views import View
from django.views.generic import DetailView, FormView, TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis import selectors
from analysis.forms import BrodenImportForm, PascalPartImportForm, ProbeWorldForm
from analysis.models import Dataset
from analysis.services.datasets import (
    BRODEN_IMPORT,
    PASCAL_PART_IMPORT,
    PROBE_WORLD,
    broden_import_run_start,
    pascal_part_import_run_start,
    probe_world_run_start,
)
from analysis.views.starting import StartRunFormMixin


class DatasetListView(ResearcherRequiredMixin, TemplateView):
    nav_section = "datasets"
    template_name = "analysis/datasets/list.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["datasets"] = selectors.datasets_for_list()
        context["probe_form"] = ProbeWorldForm()
        context["broden_form"] = BrodenImportForm()
        context["pascal_form"] = PascalPartImportForm()
        context["recent_runs"] = selectors.runs_for_list().filter(
            kind__in=[kind.name for kind in (PROBE_WORLD, BRODEN_IMPORT, PASCAL_PART_IMPORT)]
        )[:5]
        return context


class _DatasetStartView(ResearcherRequiredMixin, StartRunFormMixin, FormView):
    nav_section = "datasets"
    template_name = "analysis/datasets/start.html"
    heading = ""

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "heading": self.heading}


class ProbeWorldStartView(_DatasetStartView):
    form_class = ProbeWorldForm
    run_label = "Probe world"
    heading = "Generate a probe world"

    def start_run(self, form):
        return probe_world_run_start(created_by=self.request.user, **form.cleaned_data)


class BrodenImportStartView(_DatasetStartView):
    form_class = BrodenImportForm
    run_label = "Broden import"
    heading = "Import a Broden-format directory"

    def start_run(self, form):
        return broden_import_run_start(created_by=self.request.user, **form.cleaned_data)


class PascalPartImportStartView(_DatasetStartView):
    form_class = PascalPartImportForm
    run_label = "PASCAL-Part import"
    heading = "Import PASCAL-Part"

    def start_run(self, form):
        return pascal_part_import_run_start(created_by=self.request.user, **form.cleaned_data)


class DatasetDetailView(ResearcherRequiredMixin, DetailView):
    nav_section = "datasets"
    model = Dataset
    slug_field = slug_url_kwarg = "name"
    template_name = "analysis/datasets/detail.html"
    context_object_name = "dataset"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["concepts_by_category"] = selectors.concepts_by_category(self.object)
        context["sample_images"] = selectors.dataset_images(self.object)[:12]
        return context


class DatasetImagesView(ResearcherRequiredMixin, DetailView):
    nav_section = "datasets"
    model = Dataset
    slug_field = slug_url_kwarg = "name"
    template_name = "analysis/datasets/images.html"
    context_object_name = "dataset"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        split = self.request.GET.get("split") or None
        object_class = self.request.GET.get("class") or None
        page = Paginator(selectors.dataset_images(self.object, split=split, object_class=object_class), 48)
        context["page_obj"] = page.get_page(self.request.GET.get("page"))
        context["split"], context["object_class"] = split or "", object_class or ""
        context["classes"] = self.object.concepts.filter(category="object").order_by("name")
        return context


def _dataset_row(dataset: Dataset, index: int):
    """The engine's reader and the index.csv row of image ``index`` (one indexed lookup)."""
    from analysis.engine.broden import BrodenFormatError, BrodenReader

    try:
        reader = BrodenReader(dataset.root)
        if 0 <= index < len(reader.indexed_rows):
            return reader, reader.row(index)
    except (BrodenFormatError, OSError) as error:  # files moved or deleted since the import: not a server error
        raise Http404(f"The dataset's files cannot be read: {error}") from None
    raise Http404("no such image")


class DatasetImageView(ResearcherRequiredMixin, TemplateView):
    nav_section = "datasets"
    template_name = "analysis/datasets/image.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        dataset = get_object_or_404(Dataset, name=kwargs["name"])
        image = get_object_or_404(dataset.images.select_related("object_class"), index=kwargs["index"])
        reader, row = _dataset_row(dataset, image.index)
        segmentation = reader.load_segmentation(row)
        names = dict(dataset.concepts.values_list("number", "name"))
        from analysis.engine.overlays import label_colour

        categories = []
        for category in dataset.categories:
            entry = segmentation.get(category)
            if entry is None or not entry.has_labels:
                continue
            labels = [
                {
                    "name": names.get(int(number), f"#{number}"),
                    "colour": "#{:02x}{:02x}{:02x}".format(*label_colour(int(number))),
                }
                for number in entry.label_ids()
            ]
            categories.append(
                {"name": category, "labels": labels, "whole_image": bool(entry.image_labels) and not entry.layers.size}
            )
        context.update(
            dataset=dataset,
            image=image,
            categories=categories,
            boxes=image.boxes.select_related("concept").order_by("kind", "concept__name", "instance"),
            previous=dataset.images.filter(index__lt=image.index).order_by("-index").first(),
            next=dataset.images.filter(index__gt=image.index).order_by("index").first(),
        )
        return context


class DatasetImageFileView(ResearcherRequiredMixin, View):
    """The image itself, or with one category's labels overlaid (``?overlay=<category>``), as PNG."""

    def get(self, request, name: str, index: int):
        from PIL import Image

        from analysis.engine.overlays import render_label_overlay

        dataset = get_object_or_404(Dataset, name=name)
        reader, row = _dataset_row(dataset, index)
        image = reader.load_image(row)
        category = request.GET.get("overlay")
        if category:
            entry = reader.load_segmentation(row).get(category)
            if entry is None:
                raise Http404("no such category")
            picture = render_label_overlay(image, entry.layers, whole_image_labels=entry.image_labels)
        else:
            picture = Image.fromarray(image)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)
        response = HttpResponse(buffer.getvalue(), content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response
