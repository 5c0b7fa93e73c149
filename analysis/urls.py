from django.urls import path

from .views import datasets, dissection, explanatory_graph, exports, net2vec, networks, parts, runs

app_name = "analysis"
urlpatterns = [
    path("", runs.DashboardView.as_view(), name="dashboard"),
    path("runs/", runs.RunListView.as_view(), name="run_list"),
    path("runs/<int:pk>/", runs.RunDetailView.as_view(), name="run_detail"),
    path("runs/<int:pk>/status/", runs.RunStatusView.as_view(), name="run_status"),
    path("runs/<int:pk>/cancel/", runs.RunCancelView.as_view(), name="run_cancel"),
    path("runs/<int:pk>/export.zip", exports.RunExportView.as_view(), name="run_export"),
    path("selfcheck/", runs.SelfcheckStartView.as_view(), name="selfcheck"),
    path("datasets/", datasets.DatasetListView.as_view(), name="dataset_list"),
    path("datasets/generate/", datasets.ProbeWorldStartView.as_view(), name="probe_world_start"),
    path("datasets/import-broden/", datasets.BrodenImportStartView.as_view(), name="broden_import_start"),
    path("datasets/import-pascal-part/", datasets.PascalPartImportStartView.as_view(), name="pascal_import_start"),
    path("datasets/<slug:name>/", datasets.DatasetDetailView.as_view(), name="dataset_detail"),
    path("datasets/<slug:name>/images/", datasets.DatasetImagesView.as_view(), name="dataset_images"),
    path("datasets/<slug:name>/images/<int:index>/", datasets.DatasetImageView.as_view(), name="dataset_image"),
    path(
        "datasets/<slug:name>/images/<int:index>/file.png",
        datasets.DatasetImageFileView.as_view(),
        name="dataset_image_file",
    ),
    path("networks/", networks.NetworkListView.as_view(), name="network_list"),
    path("networks/train-demo/", networks.DemoTrainingStartView.as_view(), name="demo_training_start"),
    path("networks/<slug:name>/", networks.NetworkDetailView.as_view(), name="network_detail"),
    path("networks/<slug:name>/extract/", networks.ExtractionStartView.as_view(), name="extraction_start"),
    path("grids/render/", networks.GridsStartView.as_view(), name="grids_start"),
    path("networks/<slug:name>/layers/<str:layer>/", networks.LayerDetailView.as_view(), name="layer_detail"),
    path(
        "networks/<slug:name>/layers/<str:layer>/units/<int:index>/",
        networks.UnitDetailView.as_view(),
        name="unit_detail",
    ),
    path("networks/<slug:name>/dissection/", dissection.NetworkDissectionView.as_view(), name="network_dissection"),
    path(
        "networks/<slug:name>/layers/<str:layer>/dissection/",
        dissection.LayerDissectionView.as_view(),
        name="layer_dissection",
    ),
    path(
        "networks/<slug:name>/layers/<str:layer>/dissection/start/",
        dissection.DissectionStartView.as_view(),
        name="dissection_start",
    ),
    path("networks/<slug:name>/layers/<str:layer>/rotation/", dissection.RotationView.as_view(), name="rotation_test"),
    path(
        "networks/<slug:name>/layers/<str:layer>/rotation/start/",
        dissection.RotationStartView.as_view(),
        name="rotation_start",
    ),
    path("networks/<slug:name>/layers/<str:layer>/net2vec/", net2vec.Net2VecView.as_view(), name="layer_net2vec"),
    path(
        "networks/<slug:name>/layers/<str:layer>/net2vec/embeddings/",
        net2vec.Net2VecEmbeddingsView.as_view(),
        name="layer_net2vec_embeddings",
    ),
    path("networks/<slug:name>/net2vec/", net2vec.NetworkNet2VecView.as_view(), name="network_net2vec"),
    path("datasets/<slug:name>/concepts/<int:number>/", dissection.ConceptDetailView.as_view(), name="concept_detail"),
    path("networks/<slug:name>/layers/<str:layer>/parts/", parts.LayerPartsView.as_view(), name="layer_parts"),
    path("networks/<slug:name>/layers/<str:layer>/parts/start/", parts.PartsStartView.as_view(), name="parts_start"),
    path(
        "networks/<slug:name>/layers/<str:layer>/parts/correlations/",
        parts.PartCorrelationsView.as_view(),
        name="part_correlations",
    ),
    path("networks/<slug:name>/layers/<str:layer>/parts/<int:pk>/", parts.PartDetailView.as_view(), name="part_detail"),
    path("networks/<slug:name>/layers/<str:layer>/ablation/", parts.LayerAblationView.as_view(), name="layer_ablation"),
    path(
        "networks/<slug:name>/layers/<str:layer>/ablation/start/",
        parts.AblationStartView.as_view(),
        name="ablation_start",
    ),
    path(
        "networks/<slug:name>/layers/<str:layer>/ablation/<int:pk>/",
        parts.AblationClassView.as_view(),
        name="ablation_class",
    ),
    path("networks/<slug:name>/graphs/", explanatory_graph.NetworkGraphsView.as_view(), name="network_graphs"),
    path("explanatory-graphs/<int:graph>/", explanatory_graph.GraphDetailView.as_view(), name="graph_detail"),
    path(
        "explanatory-graphs/<int:graph>/layers/<str:layer>/",
        explanatory_graph.GraphLayerView.as_view(),
        name="graph_layer",
    ),
    path(
        "explanatory-graphs/<int:graph>/nodes/<int:pk>/", explanatory_graph.GraphNodeView.as_view(), name="graph_node"
    ),
    path(
        "explanatory-graphs/<int:graph>/nodes/<int:pk>/patches.png",
        explanatory_graph.GraphNodePatchesView.as_view(),
        name="graph_node_patches",
    ),
    path(
        "explanatory-graphs/<int:graph>/layers/<str:layer>/filters/<int:index>/patches.png",
        explanatory_graph.GraphFilterPatchesView.as_view(),
        name="graph_filter_patches",
    ),
]
