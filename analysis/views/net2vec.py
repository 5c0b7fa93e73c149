"""Net2Vec page: a layer's filter-combination probes vs its best single filters, and concept embeddings. Thin: reads
the stored results; nearest concepts through the service."""
from __future__ import annotations

from django.http import Http404
from django.views.generic import TemplateView

from accounts.permissions import ResearcherRequiredMixin
from analysis.models import Net2VecStudy
from analysis.services.net2vec import net2vec_nearest
from analysis.views.dissection import LayerMixin, _int_param


class Net2VecView(ResearcherRequiredMixin, LayerMixin, TemplateView):
    """Fong & Vedaldi Table 1 for one layer (% of concepts where the combination ≥ the best single filter),
    per-concept single vs combination vs top-F set IoU, and a chosen concept's nearest concepts by cosine."""

    template_name = "analysis/net2vec/layer.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        network, layer = self.get_layer()
        studies = Net2VecStudy.objects.filter(layer=layer).select_related("dataset", "run")
        run_id = _int_param(self.request, "run")
        study = studies.filter(run_id=run_id).first() if run_id is not None else studies.first()
        if run_id is not None and study is None:
            raise Http404("No Net2Vec study of this layer in that run.")
        context.update(network=network, layer=layer, study=study, studies=studies)
        if study is not None:
            rows = list(study.concept_results.select_related("concept"))
            for row in rows:
                row.top_ious = [row.top_f_val_iou.get(str(f)) for f in study.top_f]
            number = _int_param(self.request, "concept")
            chosen = next((row for row in rows if row.concept.number == number), rows[0] if rows else None)
            context.update(rows=rows, chosen=chosen,
                           nearest=net2vec_nearest(study, chosen) if chosen is not None else [])
        return context
