from django.urls import path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from . import pages, views

app_name = "api"

router = SimpleRouter()
router.register("networks", views.NetworkViewSet, basename="network")
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("layers", views.LayerViewSet, basename="layer")
router.register("units", views.UnitViewSet, basename="unit")
router.register("runs", views.RunViewSet, basename="run")
router.register("studies", views.StudyViewSet, basename="study")
router.register("crowd-studies", views.CrowdStudyViewSet, basename="crowd-study")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("judgments", views.JudgmentViewSet, basename="judgment")

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="root"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("token/", pages.ApiTokenView.as_view(), name="token"),
    *router.urls,
]
