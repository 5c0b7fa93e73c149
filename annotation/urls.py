from django.urls import path

from . import views

app_name = "annotation"
urlpatterns = [
    path("expert/", views.ExpertHomeView.as_view(), name="expert_home"),
    path("crowd/", views.CrowdHomeView.as_view(), name="crowd_home"),
]
